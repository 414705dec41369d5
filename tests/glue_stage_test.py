"""The glue stage on the tiny config: scores per (model, task) with their recipe, resumable, model keywords."""

import os
import shutil
import time

import flax.serialization
import numpy as np
import pytest
from helpers import run_context

from kdjax import glue_models, glue_runs, glue_stage, glue_status, model_latency, pipeline, report
from kdjax.config import base_config
from kdjax.data.synthetic_glue import write_glue_dir
from kdjax.workdir import read_json, write_json


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return write_glue_dir(str(tmp_path_factory.mktemp("glue")), n_train=16, n_dev=10)


def _config(glue_dir, **glue):
    c = base_config("bert-base-uncased", "tiny")
    c.data.glue_dir = glue_dir
    c.glue.tasks = "rte,stsb"
    c.glue.models = "teacher"
    c.glue.per_device_batch_size = 2
    for k, v in glue.items():
        c.glue[k] = v
    return c


def test_teacher_glue_report_then_resume(tmp_path, glue_dir, capsys):
    wd = str(tmp_path / "w")
    pipeline.run(_with_stages(glue_dir), wd)
    for task, n_dev in (("rte", 10), ("stsb", 10)):
        r = read_json(os.path.join(wd, "glue", "teacher", f"{task}.json"))
        assert r["num_dev_examples"] == {"dev": n_dev} and r["recipe"]["max_train_examples"] == 16
        assert r["kind"] == "teacher" and r["params"] > 0 and r["wall_s"] > 0
    assert set(read_json(os.path.join(wd, "glue", "teacher", "stsb.json"))["scores"]) == {"pearson", "spearman"}
    assert os.path.exists(os.path.join(wd, "report", "glue.md"))
    # glue.pooling=auto on a plain BERT teacher is BERT's head; the recipe and the report's recipe line name it.
    assert read_json(os.path.join(wd, "glue", "teacher", "rte.json"))["recipe"]["pooling"] == "pooler"
    with open(os.path.join(wd, "report", "README.md")) as f:
        assert "head: pooler = the checkpoint's pooler" in f.read()
    # STS-B among the tasks: the teacher's encoder is also probed zero-shot, and the report shows it.
    probe = read_json(os.path.join(wd, "glue", "teacher", "stsb-zeroshot.json"))
    assert probe["model"] == "teacher" and probe["pairs"] == 10 and -100 <= probe["spearman"] <= 100
    with open(os.path.join(wd, "report", "README.md")) as f:
        assert "STS-B zero-shot" in f.read()
    assert read_json(os.path.join(wd, "report", "glue.json"))["stsb_zero_shot"][0]["spearman"] == probe["spearman"]
    capsys.readouterr()
    # Same recipe again: nothing is recomputed, even when the stage itself is forced.
    info = glue_stage.run(run_context(wd, config=_with_stages(glue_dir)))
    assert info["scored"] == 0 and info["skipped"] == 2
    assert "zero-shot" not in capsys.readouterr().out  # the probe of the same weights is not made again
    # Another recipe: recomputed.
    ctx = run_context(wd, {"glue.num_epochs": 2, "glue.tasks": "rte"}, config=_with_stages(glue_dir))
    assert glue_stage.run(ctx)["scored"] == 1


def test_finished_glue_stage_scores_a_new_request(tmp_path, glue_dir, capsys):
    # A finished glue stage asked for another task scores that task (without force) instead of skipping the stage,
    # and keeps the task it had; the same request again is skipped.
    wd = str(tmp_path / "w")
    c = _config(glue_dir, tasks="rte")
    c.stages = "glue"
    pipeline.run(c, wd)
    rte = read_json(os.path.join(wd, "glue", "teacher", "rte.json"))
    c.glue.tasks = "stsb"
    capsys.readouterr()
    pipeline.run(c, wd)
    assert "already finished" not in capsys.readouterr().out
    assert os.path.exists(os.path.join(wd, "glue", "teacher", "stsb.json"))
    assert read_json(os.path.join(wd, "glue", "teacher", "rte.json")) == rte
    pipeline.run(c, wd)
    assert "glue: already finished" in capsys.readouterr().out
    # A latency record an older kdjax wrote (another record key): the finished stage runs again and only measures.
    lat = os.path.join(wd, "glue", "teacher", "latency.json")
    write_json(lat, {**read_json(lat), "key": "cpu-b1-s128-w5-n30-p10-v2|0123456789abcdef"})
    pipeline.run(c, wd)
    out = capsys.readouterr().out
    assert "running again for teacher (their latency was recorded" in out and "already scored" in out
    assert glue_status.unmeasured(run_context(wd, config=c)) == [] and read_json(lat)["key"].endswith(
        f"|r{model_latency.RECORD_VERSION}"
    )
    assert read_json(os.path.join(wd, "glue", "teacher", "rte.json")) == rte  # measured, not scored again


def test_glue_request_is_read_from_the_typed_settings(tmp_path, glue_dir, capsys):
    # Spellings that validate to the same settings are the same request: the finished stage is skipped.
    wd = str(tmp_path / "w")
    c = _config(glue_dir, tasks="rte", learning_rates="1e-3")
    c.stages = "glue"
    pipeline.run(c, wd)
    c.glue.learning_rates = "0.001"
    capsys.readouterr()
    pipeline.run(c, wd)
    assert "glue: already finished" in capsys.readouterr().out


def test_an_old_glue_marker_keeps_its_workdir_finished(tmp_path, glue_dir, capsys):
    """A marker written before requests were read from the typed settings (the raw config's glue section) still
    says the stage finished for the same request, and a changed one still scores only what is new."""
    wd = str(tmp_path / "w")
    c = _config(glue_dir, tasks="rte")
    c.stages = "glue"
    pipeline.run(c, wd)
    marker = os.path.join(wd, ".stages", "glue.json")
    info = read_json(marker)
    assert info["request"]["format"] == pipeline.REQUEST_FORMAT
    old = {"glue": c.glue.to_dict(), "glue_dir": c.data.glue_dir, "seed": c.seed}  # as the raw config wrote it
    write_json(marker, {**info, "request": old})
    rte = read_json(os.path.join(wd, "glue", "teacher", "rte.json"))
    capsys.readouterr()
    pipeline.run(c, wd)
    assert "glue: already finished" in capsys.readouterr().out
    c.glue.tasks = "rte,stsb"
    pipeline.run(c, wd)
    assert "running again for what is new" in capsys.readouterr().out
    assert read_json(os.path.join(wd, "glue", "teacher", "rte.json")) == rte  # kept, not re-scored
    assert read_json(marker)["request"]["glue"]["tasks"] == ["rte", "stsb"]
    # An old request that cannot be read runs the stage again, which finds everything scored.
    write_json(marker, {**info, "request": {"glue": {"tasks": "rte"}}})
    pipeline.run(c, wd)
    out = capsys.readouterr().out
    assert "running again for what is new" in out and "all 2 task(s) already scored" in out


def _with_stages(glue_dir):
    c = _config(glue_dir)
    c.stages = "teacher,glue,report"
    return c


def test_model_keywords_resolve(tmp_path, glue_dir):
    ctx = run_context(tmp_path, config=_config(glue_dir))
    arch = "2L-32H-2A-64F-gelu"
    for parts in (("nas", "candidates", arch, "hf"), ("kd", arch, "hf"), ("kd", f"{arch}-pdt", "hf")):
        os.makedirs(ctx.workdir.path(*parts))
    write_json(ctx.workdir.path("nas", "top_k.json"), {"top_k": [{"arch_id": arch}]})
    names = [r.name for r in glue_models.resolve_models(ctx, ["teacher", "best", "top_k", "org/some-model"])]
    assert names == ["teacher", f"nas-{arch}", f"kd-{arch}", f"pdt-{arch}", "org--some-model"]
    folder = glue_models.resolve_models(ctx, [ctx.workdir.path("kd", arch, "hf")])[0]
    assert folder.kind == "folder" and folder.name == arch
    with pytest.raises(glue_models.GlueStageError, match="does not exist"):
        glue_models.resolve_models(ctx, ["./no/such/folder"])
    # A hand-picked arch is distilled by the kd stage (a target of it), not by the glue stage.
    ref = glue_models.resolve_models(ctx, ["1L-32H-2A-64F-gelu"])[0]
    assert ref.name == "kd-1L-32H-2A-64F-gelu" and ref.by_kd and not ref.exported()
    models = "teacher,best,1L-32H-2A-64F-gelu,kd-2L-32H-2A-64F-gelu"
    ctx = run_context(tmp_path, {"glue.models": models}, config=_config(glue_dir), teacher=ctx.teacher)
    assert [r.name for r in glue_models.kd_targets(ctx)] == ["kd-1L-32H-2A-64F-gelu"]
    # An arch id means its full-KD export even when the search left only a mini-KD one.
    other = "1L-32H-4A-64F-gelu"
    os.makedirs(ctx.workdir.path("nas", "candidates", other, "hf"))
    refs = glue_models.resolve_models(ctx, [other])
    assert [r.name for r in refs] == [f"kd-{other}"] and refs[0].source == ctx.workdir.path("kd", other, "hf")


def test_random_baselines_are_reproducible_and_distinct(tmp_path, glue_dir):
    ctx = run_context(tmp_path, config=_config(glue_dir))
    space, seed = ctx.search_space(), ctx.settings.seed
    a = glue_models.random_specs(space, seed, 3)
    b = glue_models.random_specs(space, seed, 3)
    assert a == b and len({s.arch_id for s in a}) == 3
    assert all(s.num_params <= ctx.teacher.spec.num_params for s in a)
    refs = glue_models.resolve_models(ctx, ["random"])
    assert [r.name for r in refs] == [f"random-0-{a[0].arch_id}"]
    assert refs[0].source == ctx.workdir.path("kd", refs[0].name, "hf") and refs[0].by_kd
    # The glue stage scores what the kd stage made: a baseline not distilled yet stops it before any scoring.
    ctx = run_context(tmp_path, {"glue.models": "teacher,random"}, config=_config(glue_dir))
    with pytest.raises(glue_models.GlueStageError) as e:
        glue_stage.run(ctx)
    assert "\n" not in str(e.value) and refs[0].name in str(e.value) and "--config.stages=kd" in str(e.value)
    assert not os.path.exists(ctx.workdir.path("glue"))


def test_unreachable_hub_model_is_one_line(tmp_path, glue_dir):
    ctx = run_context(tmp_path, config=_config(glue_dir, models="nobody-xyz/missing-model"))
    with pytest.raises(glue_models.GlueStageError) as e:
        glue_stage.run(ctx)
    assert "\n" not in str(e.value) and "missing-model" in str(e.value)


@pytest.mark.slow
def test_students_are_task_distilled_from_the_saved_teacher(tmp_path, glue_dir, monkeypatch, capsys):
    c = _config(glue_dir)
    c.glue.tasks = "stsb"
    c.glue.learning_rates = "1e-3"
    ctx = run_context(tmp_path, config=c)
    assert glue_stage.run(ctx)["scored"] == 1
    weights = glue_stage.weights_path(ctx, "stsb")
    teacher_json = glue_stage.result_path(ctx, "teacher", "stsb")
    stamp = (os.path.getmtime(weights), os.path.getmtime(teacher_json))
    assert read_json(teacher_json)["grid"][0]["learning_rate"] == 1e-3

    # A student of this run (here a copy of the tiny teacher under the 'kd' kind), named through a keyword.
    student = glue_models.ModelRef("kd-copy", "kd", ctx.teacher.source, ctx.teacher.spec.arch_id)
    monkeypatch.setitem(glue_models.KEYWORDS, "copy", lambda _ctx: [student])
    c = _config(glue_dir, tasks="stsb", learning_rates="1e-3", models="teacher,copy")
    ctx = run_context(tmp_path, config=c)
    capsys.readouterr()
    info = glue_stage.run(ctx)
    assert info["scored"] == 2 and info["skipped"] == 1  # distilled + fine-tune-only rows; the teacher is reused
    assert (os.path.getmtime(weights), os.path.getmtime(teacher_json)) == stamp
    assert "glue: teacher stsb" not in capsys.readouterr().out
    td = read_json(glue_stage.result_path(ctx, "kd-copy", "stsb"))
    ft = read_json(glue_stage.result_path(ctx, "kd-copy-ft", "stsb"))
    assert td["method"] == "distill" and td["distill_teacher"] == weights and td["distill"]["temperature"] == 1.0
    assert ft["method"] == "finetune" and ft["twin"] == "kd-copy" and "distill" not in ft
    # Turning distillation off makes the plain row fine-tuned only: recomputed, since the method changed.
    ctx = run_context(tmp_path, {"glue.distill.enabled": False}, config=c)
    assert glue_stage.run(ctx)["scored"] == 1
    assert read_json(glue_stage.result_path(ctx, "kd-copy", "stsb"))["method"] == "finetune"


@pytest.mark.slow
def test_a_re_distilled_model_is_scored_again(tmp_path, glue_dir, capsys):
    """A score records a fingerprint of the weights it was made from: a model re-distilled at the same folder with
    --config.force=true is scored again, by a finished glue stage too, and an unchanged one keeps its score."""
    wd = str(tmp_path / "w")
    best, other = "kd-2L-32H-2A-64F-gelu", "kd-1L-32H-2A-64F-gelu"
    c = _config(glue_dir, tasks="stsb", models="best,1L-32H-2A-64F-gelu")
    c.glue.distill.baseline = False
    c.stages = "kd,glue"
    pipeline.run(c, wd)
    ctx = run_context(wd, config=c)
    refs = {r.name: r for r in glue_models.resolve_models(ctx, list(ctx.settings.glue.models))}
    path = {name: glue_stage.result_path(ctx, name, "stsb") for name in refs}
    first = {name: read_json(p) for name, p in path.items()}
    for name, ref in refs.items():
        assert first[name]["weights"] == glue_models.fingerprint(os.path.join(ref.source, "model.safetensors"))
    # A score written before scores recorded their weights: kept while its model's weights are older than it.
    legacy = {k: v for k, v in first[other].items() if k != "weights"}
    write_json(path[other], legacy)

    forced = _config(glue_dir, tasks="stsb", models="best")  # re-distil the best alone, to other weights
    forced.kd.num_train_steps = 4
    forced.stages, forced.force = "kd", True
    pipeline.run(forced, wd)
    assert refs[best].weights() != first[best]["weights"]
    capsys.readouterr()
    c.stages = "glue"
    pipeline.run(c, wd)
    out = capsys.readouterr().out
    assert f"glue: finished before; running again for {best} (their weights changed" in out
    assert f"glue: {best} stsb (task-distilled)" in out and f"glue: {other} stsb" not in out
    assert read_json(path[best])["weights"] == refs[best].weights()
    assert read_json(path[other]) == legacy
    pipeline.run(c, wd)
    assert "glue: already finished" in capsys.readouterr().out
    # The legacy score's model re-made after it: stale.
    weights = refs[other].weights_file()
    assert weights is not None
    later = os.path.getmtime(path[other]) + 10
    os.utime(weights, (later, later))
    assert glue_status.pending(ctx) == [other]


def test_a_score_is_current_only_for_the_weights_it_was_made_from(tmp_path, glue_dir, tiny_teacher):
    # No training: a score file as the stage writes it, beside an export whose weights then change.
    arch = "1L-32H-2A-64F-gelu"
    c = _config(glue_dir, tasks="stsb", models=arch)
    ctx = run_context(tmp_path, config=c, teacher=tiny_teacher)
    ref = glue_models.resolve_models(ctx, [arch])[0]
    os.makedirs(ref.source)
    weights = os.path.join(ref.source, "model.safetensors")
    with open(weights, "wb") as f:
        f.write(b"first weights")
    recipe, data = glue_stage.recipe_of(ctx), glue_stage.data_source(ctx, "stsb")
    path = glue_stage.result_path(ctx, ref.name, "stsb")
    method = {"distill": glue_stage.distill_of(ctx, recipe).to_dict()}
    record = {"recipe": recipe.to_dict(), "source": ref.source, "data": data, **method, "weights": ref.weights()}
    write_json(path, record)
    assert glue_runs.is_current(path, ref, recipe, data, method) and glue_status.pending(ctx) == []
    # Re-made at the same folder (an export replaces the file): another fingerprint, even at the same size and time.
    stat = os.stat(weights)
    time.sleep(0.05)  # past the kernel's timestamp granularity: a later write has a later status-change time
    os.remove(weights)
    with open(weights, "wb") as f:
        f.write(b"other weights")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not glue_runs.is_current(path, ref, recipe, data, method) and glue_status.pending(ctx) == [ref.name]
    # The fine-tune-only twin of a stale student is stale too.
    write_json(glue_stage.result_path(ctx, f"{ref.name}-ft", "stsb"), record)
    assert glue_status.pending(ctx) == [ref.name, f"{ref.name}-ft"]


def test_more_seeds_train_only_the_new_runs_and_keep_the_teachers_classifier(tmp_path, glue_dir, capsys):
    """glue.seeds 1 -> 2: the teacher trains seed 1 alone; its saved classifier (the picked rate's seed 0) stays, and
    when the file holds another run's weights, that run is trained again for them, to the same bytes."""
    wd = str(tmp_path / "w")
    c = _config(glue_dir, tasks="rte", max_train_examples=16, num_epochs=1)
    ctx = run_context(wd, config=c)
    assert glue_stage.run(ctx)["scored"] == 1
    saved = glue_stage.weights_path(ctx, "rte")
    with open(saved, "rb") as f:
        first = f.read()
    one = read_json(glue_stage.result_path(ctx, "teacher", "rte"))
    ctx = run_context(wd, {"glue.seeds": 2}, config=c)
    assert glue_stage.run(ctx)["scored"] == 1
    two = read_json(glue_stage.result_path(ctx, "teacher", "rte"))
    assert two["seeds"] == [0, 1] and two["reused_runs"] == 1
    assert two["grid"][0]["seed_scores"][0] == one["grid"][0]["seed_scores"][0]
    with open(saved, "rb") as f:
        assert f.read() == first
    # Another run's classifier in the file (here: other bytes): seed 0 is trained again for its weights.
    with open(saved, "wb") as f:
        f.write(b"not the picked run's classifier")
    ctx = run_context(wd, {"glue.seeds": 3}, config=c)
    assert glue_stage.run(ctx)["scored"] == 1
    three = read_json(glue_stage.result_path(ctx, "teacher", "rte"))
    assert three["seeds"] == [0, 1, 2] and three["reused_runs"] == 1  # seed 1 read; seeds 0 and 2 trained
    with open(saved, "rb") as f:
        assert f.read() == first


def test_a_moved_workdir_keeps_its_students_scores(tmp_path, glue_dir, tiny_teacher):
    """A student's score records its export's absolute folder; in a copied or moved workdir the same kind, arch and
    weights fingerprint still name it (glue_models.ModelRef.same_source)."""
    arch = "1L-32H-2A-64F-gelu"
    c = _config(glue_dir, tasks="stsb", models=arch)
    ctx = run_context(tmp_path / "a", config=c, teacher=tiny_teacher)
    ref = glue_models.resolve_models(ctx, [arch])[0]
    os.makedirs(ref.source)
    with open(os.path.join(ref.source, "model.safetensors"), "wb") as f:
        f.write(b"weights")
    recipe, data = glue_stage.recipe_of(ctx), glue_stage.data_source(ctx, "stsb")
    path = glue_stage.result_path(ctx, ref.name, "stsb")
    write_json(path, {"recipe": recipe.to_dict(), **ref.to_dict(), "data": data, "weights": ref.weights()})
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = run_context(tmp_path / "b", config=c, teacher=tiny_teacher)
    moved_ref = glue_models.resolve_models(moved, [arch])[0]
    assert moved_ref.source != ref.source
    moved_path = glue_stage.result_path(moved, ref.name, "stsb")
    assert glue_runs.is_current(moved_path, moved_ref, recipe, data)
    # Another model at that place is not: a hand-picked folder is named by its path.
    other = glue_models.ModelRef(ref.name, "folder", moved_ref.source, arch)
    assert not glue_runs.is_current(moved_path, other, recipe, data)


def test_pooling_is_one_head_per_run_and_keys_the_saved_teacher(tmp_path, glue_dir, monkeypatch, capsys):
    from kdjax.finetune import head_of, predict_logits

    c = _config(glue_dir, tasks="stsb", learning_rates="1e-3")
    ctx = run_context(tmp_path, config=c)
    assert glue_stage.run(ctx)["scored"] == 1 and "glue: head pooler" in capsys.readouterr().out
    teacher_json = glue_stage.result_path(ctx, "teacher", "stsb")
    # A row written before glue.pooling existed trained BERT's head: still current for 'pooler'.
    old = read_json(teacher_json)
    del old["recipe"]["pooling"]
    write_json(teacher_json, old)
    assert glue_stage.run(run_context(tmp_path, config=c))["scored"] == 0
    # glue.bucket changes speed only: scores made at another value stay current, and the report sees one recipe.
    bucket = old["recipe"]["bucket"]
    other = _config(glue_dir, tasks="stsb", learning_rates="1e-3", bucket=2 * bucket)
    assert glue_stage.run(run_context(tmp_path, config=other))["scored"] == 0
    assert report.shared_recipe(old["recipe"]) == report.shared_recipe({**old["recipe"], "bucket": 2 * bucket})
    assert report.shared_recipe(old["recipe"]) != report.shared_recipe({**old["recipe"], "num_epochs": 9})

    # The teacher folder becomes a mean-pooling sentence-transformers model: 'auto' now means mean, for the teacher
    # (re-fine-tuned: its saved classifier has another head) and for the student distilled from it alike.
    folder = ctx.teacher.folder
    os.makedirs(os.path.join(folder, "1_Pooling"))
    write_json(os.path.join(folder, "modules.json"), [{"path": "1_Pooling", "type": "x.models.Pooling"}])
    write_json(os.path.join(folder, "1_Pooling", "config.json"), {"pooling_mode_mean_tokens": True})

    def student(run_ctx):  # a student of this run: a copy of the tiny teacher under the 'kd' kind
        return [glue_models.ModelRef("kd-copy", "kd", run_ctx.teacher.source, run_ctx.teacher.spec.arch_id)]

    monkeypatch.setitem(glue_models.KEYWORDS, "copy", student)
    c.glue.models = "teacher,copy"
    c.glue.distill.baseline = False
    c.glue.bi_encoder_tasks = ""  # the cross-encoder's head (auto would bi-encode STS-B for this teacher now)
    ctx = run_context(tmp_path, config=c)
    info = glue_stage.run(ctx)
    assert "glue: head mean" in capsys.readouterr().out
    assert info["scored"] == 2 and info["skipped"] == 0
    for row in ("teacher", "kd-copy"):
        assert read_json(glue_stage.result_path(ctx, row, "stsb"))["recipe"]["pooling"] == "mean"
    with open(glue_stage.weights_path(ctx, "stsb"), "rb") as f:
        saved = flax.serialization.msgpack_restore(f.read())
    assert set(saved) == {"bert", "classifier"}
    # The student learnt from the logits of the head the teacher was fine-tuned with.
    stage = glue_stage.Stage(ctx)
    data = stage.distill_data("stsb")
    head = head_of(ctx.teacher.spec, 1, stage.recipe)
    assert head.pooling == "mean"
    expected = predict_logits(saved, head, data.train, 8, 0, stage.recipe, ctx.mesh)
    np.testing.assert_allclose(data.teacher_logits, expected, rtol=1e-5, atol=1e-6)
    # An explicit head wins over auto: the pretrained pooler again, so everything is recomputed.
    ctx = run_context(tmp_path, {"glue.pooling": "pooler"}, config=c)
    assert glue_stage.run(ctx)["scored"] == 2


def test_the_teacher_labels_a_task_once_for_all_its_students(tmp_path, glue_dir, monkeypatch, capsys):
    """Two students of one task distil from one pass of the fine-tuned teacher over its training set (a pass per
    student would double the teacher's work), and each task's pass is released before the next task's is made."""
    labelled: list[int] = []  # examples per call of the teacher's predict function
    passes: list[str] = []  # tasks the stage made distillation data for, in order
    held: list[int] = []  # tasks' data still kept when the next is made
    real_prepare, real_pass = glue_stage.prepare, glue_stage.Stage.teacher_pass

    def counted_prepare(cfg, train, teacher_logits_fn, augmenter=None):
        def logits(enc):
            labelled.append(len(enc))
            return teacher_logits_fn(enc)

        return real_prepare(cfg, train, logits, augmenter)

    def students(run_ctx):  # two students of this run: copies of the tiny teacher under the 'kd' kind
        src, arch = run_ctx.teacher.source, run_ctx.teacher.spec.arch_id
        return [glue_models.ModelRef(f"kd-copy{i}", "kd", src, arch) for i in (1, 2)]

    def counted_pass(self, task):
        passes.append(task)
        held.append(len(self.distilled))
        return real_pass(self, task)

    monkeypatch.setattr(glue_stage, "prepare", counted_prepare)
    monkeypatch.setattr(glue_stage.Stage, "teacher_pass", counted_pass)
    monkeypatch.setitem(glue_models.KEYWORDS, "copies", students)
    c = _config(glue_dir, models="copies", learning_rates="1e-3")
    c.glue.distill.baseline = False
    ctx = run_context(tmp_path, config=c)
    assert glue_stage.run(ctx)["scored"] == 2 * 2 + 2  # two students and the teacher on rte and stsb
    copies = 1 + c.glue.distill.augment_factor  # one pass labels the originals and their augmented copies
    assert passes == ["rte", "stsb"] and labelled == [16 * copies] * 2 and held == [0, 0]
    out = capsys.readouterr().out
    # Tasks outside, models inside: both students of rte are scored before stsb's teacher is fine-tuned.
    order = [out.index(f"glue: {row} ") for row in ("teacher rte", "kd-copy2 rte", "teacher stsb")]
    assert order == sorted(order)
    for i in (1, 2):
        for task in ("rte", "stsb"):
            assert read_json(glue_stage.result_path(ctx, f"kd-copy{i}", task))["method"] == "distill"


@pytest.mark.slow
def test_bi_encoded_stsb_keys_its_rows_and_its_saved_teacher(tmp_path, glue_dir, monkeypatch, capsys):
    """glue.bi_encoder_tasks=stsb: STS-B's rows (teacher, and the student distilled from its bi-encoded logits)
    record pair_encoding 'bi' while RTE stays 'cross'; switching it off re-scores STS-B alone."""
    from kdjax.finetune import head_of, predict_logits

    def student(run_ctx):  # a student of this run: a copy of the tiny teacher under the 'kd' kind
        return [glue_models.ModelRef("kd-copy", "kd", run_ctx.teacher.source, run_ctx.teacher.spec.arch_id)]

    monkeypatch.setitem(glue_models.KEYWORDS, "copy", student)
    c = _with_stages(glue_dir)
    c.glue.models, c.glue.learning_rates, c.glue.bi_encoder_tasks = "teacher,copy", "1e-3", "stsb"
    c.glue.distill.baseline = False
    wd = str(tmp_path / "w")
    pipeline.run(c, wd)
    assert "glue: stsb bi-encoded" in capsys.readouterr().out
    ctx = run_context(wd, config=c)
    for row in ("teacher", "kd-copy"):
        assert read_json(glue_stage.result_path(ctx, row, "stsb"))["recipe"]["pair_encoding"] == "bi"
        assert read_json(glue_stage.result_path(ctx, row, "rte"))["recipe"]["pair_encoding"] == "cross"
    with open(glue_stage.weights_path(ctx, "stsb"), "rb") as f:
        saved = flax.serialization.msgpack_restore(f.read())
    assert set(saved) == {"bert", "pooler"}  # a cosine head: no classifier
    stage = glue_stage.Stage(ctx)
    data = stage.distill_data("stsb")
    recipe = stage.recipe_for("stsb")
    assert data.train.pair_ids is not None and recipe.pair_encoding == "bi"
    expected = predict_logits(saved, head_of(ctx.teacher.spec, 1, recipe), data.train, 8, 0, recipe, ctx.mesh)
    np.testing.assert_allclose(data.teacher_logits, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(data.teacher_logits) <= 5 + 1e-5)  # 5 x a cosine
    with open(os.path.join(wd, "report", "README.md")) as f:
        text = f.read()
    assert "one recipe for every row" in text and "Bi-encoded (glue.bi_encoder_tasks): stsb" in text
    # The same request again scores nothing; without the bi-encoder only STS-B's two rows are scored again.
    assert glue_stage.run(run_context(wd, config=c))["scored"] == 0
    info = glue_stage.run(run_context(wd, {"glue.bi_encoder_tasks": ""}, config=c))
    assert info["scored"] == 2 and info["skipped"] == 2
    assert read_json(glue_stage.result_path(ctx, "kd-copy", "stsb"))["recipe"]["pair_encoding"] == "cross"


@pytest.mark.slow
def test_a_finished_report_is_made_again_when_its_inputs_change(tmp_path, glue_dir, capsys):
    """The report is derived: a glue stage that scores something (in the same run, or alone before) makes a finished
    report stale, and it is made again; with nothing new it is skipped."""
    wd = str(tmp_path / "w")
    c = _with_stages(glue_dir)
    c.glue.tasks = "stsb"
    pipeline.run(c, wd)
    glue_json = os.path.join(wd, "report", "glue.json")
    assert read_json(glue_json)["tasks"] == ["stsb"]
    capsys.readouterr()
    pipeline.run(c, wd)  # nothing new: skipped
    assert "report: already finished" in capsys.readouterr().out
    c.glue.tasks = "rte,stsb"  # the glue stage scores RTE in this run: the report follows
    pipeline.run(c, wd)
    assert "report: finished before; running again for glue/teacher/rte.json" in capsys.readouterr().out
    assert sorted(read_json(glue_json)["tasks"]) == ["rte", "stsb"]
    c.glue.num_epochs, c.stages = 2, "glue"  # the glue stage alone, then the report alone
    pipeline.run(c, wd)
    before = os.path.getmtime(glue_json)
    c.stages = "report"
    pipeline.run(c, wd)
    assert "report: finished before; running again" in capsys.readouterr().out
    assert os.path.getmtime(glue_json) > before
