"""The run plan (steps, examples, FLOPs per stage) and the ETA extrapolated from the first timed steps."""

import collections
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import run_context, run_main

from kdjax import glue_plan, plan
from kdjax.data.synthetic_glue import write_glue_dir
from kdjax.glue_data import TASKS
from kdjax.plan import Eta, EtaHook, StagePlan
from kdjax.workdir import read_json


def _eta():
    return Eta(
        [
            StagePlan("nas", "", 100, 1000, 2e12),
            StagePlan("kd", "", 50, 500, 4e12),
            StagePlan("glue", "", 10, 100, 1e12, units={"sst2": 3.0, "rte": 1.0}, unit_counts={"sst2": 2, "rte": 2}),
            StagePlan("report", "", 0, 0, 0.0),
        ],
        min_interval_s=0.0,
    )


def test_nothing_is_guessed_before_a_timing():
    eta = _eta()
    sec, measured = eta.estimate("kd")
    assert sec != sec and not measured  # NaN: no rate yet
    assert "overall ? left" in eta.line("nas")


def test_first_timing_extrapolates_later_stages_by_flops(capsys):
    eta = _eta()
    line = eta.timed("nas", done=0.25, work=0.25, elapsed_s=50.0)  # 5e11 FLOPs in 50 s = 1e10 FLOP/s
    assert line in capsys.readouterr().out
    assert eta.estimate("nas") == (pytest.approx(150.0), True)
    assert eta.estimate("kd") == (pytest.approx(400.0), False)  # 4e12 / 1e10
    assert eta.estimate("glue") == (pytest.approx(100.0), False)
    assert "nas 2 min" in line and "kd ~7 min" in line and "overall 11 min" in line
    # kd's own timing replaces the extrapolation; a finished stage costs nothing more.
    eta.done("nas")
    eta.timed("kd", done=0.5, work=0.5, elapsed_s=100.0)
    assert eta.estimate("kd") == (pytest.approx(100.0), True) and eta.estimate("nas") == (0.0, True)
    assert eta.estimate("glue")[0] == pytest.approx(1e12 / (2e12 / 100.0))


def test_glue_progress_by_weighted_units():
    eta = _eta()
    eta.unit_done("glue", "sst2", 30.0)  # 3 of 8 units of cost in 30 s
    assert eta.estimate("glue") == (pytest.approx(50.0), True)
    assert eta.unit_done("glue", "cola", 5.0) is None  # not planned: ignored


def test_glue_eta_leaves_compiling_out():
    eta = _eta()
    eta.unit_done("glue", "sst2", 50.0, compile_s=20.0)  # the first row compiled for 20 of its 50 s
    assert eta.estimate("glue") == (pytest.approx(50.0), True)  # 5/8 of the units left at 30 s per 3/8


def test_compile_seconds_count_a_new_program_not_a_cached_one():
    import jax
    import jax.numpy as jnp

    before = plan.compile_seconds()
    f = jax.jit(lambda x: jnp.tanh(x) * 3.0 + x.sum())
    f(jnp.ones((7, 5))).block_until_ready()
    compiled = plan.compile_seconds()
    assert compiled > before
    f(jnp.ones((7, 5))).block_until_ready()  # the same shapes: nothing compiled
    assert plan.compile_seconds() == compiled


def test_eta_hook_times_from_its_first_report(monkeypatch):
    calls = []
    monkeypatch.setattr(plan, "timed", lambda *a: calls.append(a))
    clock = iter([10.0, 12.0, 16.0])
    monkeypatch.setattr(plan.time, "perf_counter", lambda: next(clock))
    hook = EtaHook("kd", steps_before=20, stage_steps=100)
    for step in (2, 4, 8):
        hook(SimpleNamespace(step=step))
    # The first report (after compilation) is not timed; then 2 steps in 2 s and 6 steps in 6 s.
    assert calls == [("kd", 0.24, 0.02, 2.0), ("kd", 0.28, 0.06, 6.0)]


@pytest.mark.slow
def test_tiny_run_prints_the_plan_and_an_eta(tmp_path):
    proc = run_main(["--config=configs/bert_nas.py:tiny", "--config.stages=teacher,nas,kd", "--config.kd.pdt_steps=2"],
                    tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "plan (" in out and "  nas      lstm, 4 candidates x mini-KD 4 steps" in out
    assert "PDT of 3 winner(s) x 2 steps" in out
    assert "eta (nas timed): nas" in out and "overall" in out


def test_glue_plan_counts_steps_as_training_does(tmp_path, tiny_teacher):
    """A partial last batch is a step per task, epoch, rate and model (10 examples in batches of 4 are 3 steps, not
    2.5 summed over tasks and floored)."""
    from helpers import run_context

    from kdjax import plan

    fields = {
        "glue.models": "teacher",
        "glue.tasks": "sst2,stsb",
        "glue.max_train_examples": 10,
        "glue.per_device_batch_size": 4,
        "glue.num_epochs": 2,
        "glue.learning_rates": "1e-3,1e-4",
    }
    ctx = run_context(tmp_path, fields, teacher=tiny_teacher)
    glue = next(p for p in plan.build(ctx, ["glue"]) if p.name == "glue")
    per_epoch = -(-10 // (4 * ctx.mesh.size))  # the global batch is per device x devices, as in training
    assert glue.steps == 2 * per_epoch * 2 * 2  # tasks x batches x epochs x rates


def _glue_folder(root: str, train_sizes: dict[str, int], n_dev: int = 4) -> str:
    """Synthetic GLUE TSVs with `train_sizes[task]` training examples per task."""
    write_glue_dir(root, n_train=max(train_sizes.values()), n_dev=n_dev)
    for task, n in train_sizes.items():
        path = os.path.join(root, TASKS[task].folder, "train.tsv")
        with open(path) as f:
            lines = f.read().splitlines()
        with open(path, "w") as f:
            f.write("\n".join(lines[: int(TASKS[task].header) + n]) + "\n")
    return root


def _count_glue_stage(monkeypatch, computed: collections.Counter | None = None) -> dict[str, collections.Counter]:
    """Instrument the glue stage: per unit (role/task), its trainings, the optimizer steps and the examples in them,
    the examples the fine-tuned teacher labels or encodes inside steps, and the augmented copies, as they happen;
    `computed`, when given, counts per unit the token positions its training steps compute (padding included), and
    under "<unit> real" the real tokens among them."""
    from kdjax import finetune, glue_stage

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    now: list[collections.Counter] = []
    real_finetune, real_step, real_pass = (
        glue_stage.finetune,
        finetune.jitted_train_step,
        glue_stage.Stage.teacher_pass,
    )

    def counted_finetune(**kw):
        role = "teacher" if kw["keep_params"] else "distill" if kw["distill"] is not None else "finetune"
        name = glue_plan.unit(role, kw["task_data"].task.name)
        now[:] = [counts[name], name]
        now[0]["trainings"] += 1
        return real_finetune(**kw)

    def counted_step(head, opt, cfg, mesh):
        step = real_step(head, opt, cfg, mesh)

        def run(state, batch, key, teacher):
            n = int(np.asarray(batch["weights"]).sum())
            now[0].update(steps=1, examples=n, teacher_step_examples=n if teacher is not None else 0)
            if computed is not None:
                computed[now[1]] += np.asarray(batch["input_ids"]).size
                computed[now[1] + " real"] += int(np.asarray(batch["attention_mask"]).sum())
            return step(state, batch, key, teacher)

        return run

    def counted_pass(self, task):
        out = real_pass(self, task)
        c = counts[glue_plan.unit("distill", task)]
        c.update(teacher_logit_examples=len(out.teacher_logits), augmented=len(out.train) - out.num_original)
        return out

    monkeypatch.setattr(glue_stage, "finetune", counted_finetune)
    monkeypatch.setattr(finetune, "jitted_train_step", counted_step)
    monkeypatch.setattr(glue_stage.Stage, "teacher_pass", counted_pass)
    return counts


def _planned(work: glue_plan.Work) -> collections.Counter:
    fields = ("trainings", "steps", "examples", "augmented", "teacher_logit_examples", "teacher_step_examples")
    return collections.Counter({f: getattr(work, f) for f in fields if getattr(work, f)})


def test_glue_plan_counts_what_the_stage_trains(tmp_path, tiny_teacher, monkeypatch, capsys):
    """The plan's glue steps and examples are what the stage trains: (a) each student twice, task-distilled and
    fine-tuned only; (b) the teacher fine-tuned for task distillation although glue.models does not name it, and
    run once per task on every distilled example, for all students together (here also inside the students' steps,
    for the hidden-state loss); (c) the distilled rows on their augmented copies too; (d) glue.seeds runs on the
    small task only. (e) Run again with one more student, the plan counts only that student's work."""
    from kdjax import glue_stage

    sizes = {"rte": 6, "sst2": 10}  # glue.small_task_examples=8: rte is small, sst2 is not
    arch = tiny_teacher.spec.arch_id
    fields = {
        "data.glue_dir": _glue_folder(str(tmp_path / "glue"), sizes),
        # Two students of this run: the full-KD and mini-KD exports of `arch` (copies of the teacher).
        "glue.models": f"{arch},nas-{arch}",
        "glue.tasks": "rte,sst2",
        "glue.max_train_examples": 0,
        "glue.per_device_batch_size": 1,
        "glue.num_epochs": 1,
        "glue.learning_rates": "1e-3",
        "glue.seeds": 2,
        "glue.small_task_examples": 8,
        "glue.distill.augment_factor": 1,
        "glue.distill.hidden_weight": 0.5,
    }
    ctx = run_context(tmp_path / "w", fields, teacher=tiny_teacher)
    for folder in (ctx.workdir.kd_dir(arch), ctx.workdir.candidate_dir(arch)):
        shutil.copytree(tiny_teacher.source, os.path.join(folder, "hf"))
    glue = next(p for p in plan.build(ctx, ["glue"]) if p.name == "glue")
    planned = glue_plan.work(ctx, ["glue"], ctx.student_spec(arch))
    computed: collections.Counter = collections.Counter()
    counts = _count_glue_stage(monkeypatch, computed)
    assert glue_stage.run(ctx)["scored"] == 5 * len(sizes)
    batch = ctx.mesh.size  # 1 per device

    # (a) each student is trained twice per task; (b) the teacher once, though glue.models omits it.
    for task in sizes:
        for role, n in (("teacher", 1), ("distill", 2), ("finetune", 2)):
            assert counts[glue_plan.unit(role, task)]["trainings"] == n, (role, task)
    # (c) one augmented copy per example: a distilled row sees twice the fine-tuned one's examples, and the teacher
    # labels every one of them once, for both students.
    assert counts["distill/sst2"]["examples"] == 2 * counts["finetune/sst2"]["examples"] == 4 * sizes["sst2"]
    assert counts["distill/sst2"]["teacher_logit_examples"] == 2 * sizes["sst2"]
    assert counts["distill/sst2"]["augmented"] == sizes["sst2"]
    # (d) two seeds on rte (6 <= 8 examples), one on sst2.
    assert counts["finetune/rte"]["steps"] == 2 * 2 * -(-sizes["rte"] // batch)
    assert counts["finetune/sst2"]["steps"] == 2 * -(-sizes["sst2"] // batch)
    # The plan counted exactly that, unit by unit and in all.
    assert {k: _planned(w) for k, w in planned.units.items()} == dict(counts)
    assert glue.steps == sum(c["steps"] for c in counts.values()) and glue.done_steps == 0
    assert glue.examples == sum(c["examples"] for c in counts.values())
    # ETA units are runs (rate x seed): two per row on rte.
    assert glue.unit_counts == {k: c["trainings"] * (2 if k.endswith("rte") else 1) for k, c in counts.items()}
    # The FLOPs count the padded batches the steps compute, not the real tokens: on sst2 (one seed, one epoch, the
    # plan's batches are the stage's) the padded token positions are exactly what the plan measured.
    padded = glue_plan.shape(ctx, "sst2", batch)
    assert computed["finetune/sst2"] == 2 * round(padded.train_tokens * sizes["sst2"])
    assert computed["finetune/sst2"] > 1.2 * computed["finetune/sst2 real"]  # the padding the old estimate missed
    assert glue.what == (
        "5 training(s) per task (teacher, fine-tuned for task distillation; 2 student(s) task-distilled and "
        "fine-tuned only) x 2 task(s) (rte,sst2) x 1 epochs x 2 seeds on rte; distilled rows on 2x examples "
        "(augmented)"
    )
    # The FLOPs count the teacher's work for distillation: more than the same rows trained without it.
    student_only = sum(w.flops for k, w in planned.units.items() if not k.startswith("teacher/"))
    ctx_ft = run_context(tmp_path / "w", {**fields, "glue.distill.enabled": False}, teacher=tiny_teacher)
    finetuned = glue_plan.work(ctx_ft, ["glue"], ctx.student_spec(arch))
    assert set(finetuned.units) == {"finetune/rte", "finetune/sst2"}  # no distillation: no teacher row either
    assert finetuned.done.trainings == 0  # the distilled rows' scores are another method's
    assert student_only > 1.5 * sum(w.flops for w in finetuned.units.values())

    # Everything is scored: the plan has nothing left and says what is done.
    again = next(p for p in plan.build(ctx, ["glue"]) if p.name == "glue")
    assert (again.steps, again.examples, again.flops, again.done_steps) == (0, 0, 0.0, glue.steps)
    assert again.what.endswith("; 10 of the 10 (model, task) trainings scored already")
    assert f"nothing left to train ({glue.steps:,} steps done)" in plan.format_plan([again])

    # (e) One more student: only its two rows per task are left, with the teacher's pass for it; the teacher's own
    # fine-tuning is done, and the stage trains just what the plan counts.
    shutil.copytree(tiny_teacher.source, os.path.join(ctx.workdir.pdt_dir(arch), "hf"))
    ctx = run_context(tmp_path / "w", {**fields, "glue.models": f"{arch},nas-{arch},pdt-{arch}"}, teacher=tiny_teacher)
    more = next(p for p in plan.build(ctx, ["glue"]) if p.name == "glue")
    planned = glue_plan.work(ctx, ["glue"], ctx.student_spec(arch))
    assert set(planned.units) == {f"{role}/{task}" for role in ("distill", "finetune") for task in sizes}
    assert all(w.trainings == 1 for w in planned.units.values())
    assert more.done_steps == glue.steps
    assert "; 10 of the 14 (model, task) trainings scored already" in more.what
    counts.clear()
    assert glue_stage.run(ctx)["scored"] == 2 * len(sizes)
    assert {k: _planned(w) for k, w in planned.units.items()} == dict(counts)
    assert more.steps == sum(c["steps"] for c in counts.values())

    # (f) A third seed: every row is scored again, but trains only seed 2 on rte (seeds 0 and 1 are read from its
    # score; sst2 is large, so its one seed stays), and the plan counts just those runs.
    fields |= {"glue.seeds": 3, "glue.models": f"{arch},nas-{arch},pdt-{arch}"}
    ctx = run_context(tmp_path / "w", fields, teacher=tiny_teacher)
    third = glue_plan.work(ctx, ["glue"], ctx.student_spec(arch))
    runs = {
        "teacher/rte": 1,
        "distill/rte": 3,
        "finetune/rte": 3,
        "teacher/sst2": 0,
        "distill/sst2": 0,
        "finetune/sst2": 0,
    }
    assert {k: w.runs for k, w in third.units.items()} == runs
    before = {t: read_json(ctx.workdir.glue_result("nas-" + arch, t)) for t in sizes}
    counts.clear()
    assert glue_stage.run(ctx)["scored"] == 7 * len(sizes)
    assert {k: _planned(w) for k, w in third.units.items()} == dict(counts)
    after = read_json(ctx.workdir.glue_result("nas-" + arch, "rte"))
    assert after["seeds"] == [0, 1, 2] and after["reused_runs"] == 2
    assert after["grid"][0]["seed_scores"][:2] == before["rte"]["grid"][0]["seed_scores"]
    assert read_json(ctx.workdir.glue_result("nas-" + arch, "sst2"))["grid"] == before["sst2"]["grid"]


def test_glue_plan_counts_the_exports_a_run_will_make(tmp_path, tiny_teacher):
    """Before the search has run, `best` is its mini-KD export, full KD and PDT: with the teacher, 1 + 3 x 2
    trainings per task (the :cpu run's plan counted 4)."""
    fields = {"glue.models": "teacher,best", "kd.pdt_steps": 2, "glue.tasks": "sst2"}
    ctx = run_context(tmp_path, fields, teacher=tiny_teacher)
    glue = next(p for p in plan.build(ctx, ["teacher", "nas", "kd", "glue"]) if p.name == "glue")
    assert glue.what.startswith("7 training(s) per task (teacher; 3 student(s) task-distilled and fine-tuned only)")
    n, batch = glue_plan.SYNTHETIC_TRAIN, 4 * ctx.mesh.size  # :tiny caps at 16 examples, batches of 4 per device
    copies = 1 + ctx.settings.glue.distill.loss.augment_factor  # the distilled rows also train on augmented copies
    assert glue.steps == 4 * -(-min(n, 16) // batch) + 3 * -(-min(n, 16) * copies // batch)
    # Without the nas and kd stages, only what exists counts: here nothing of `best`, so the teacher alone.
    glue = next(p for p in plan.build(ctx, ["glue"]) if p.name == "glue")
    assert glue.what.startswith("1 training(s) per task (teacher)")
    ctx = run_context(tmp_path, {**fields, "glue.models": "best"}, teacher=tiny_teacher)
    glue = next(p for p in plan.build(ctx, ["glue"]) if p.name == "glue")
    assert glue.what == "no model of glue.models (best) to score yet" and glue.steps == 0


def test_kd_plan_counts_what_is_left(tmp_path, tiny_teacher):
    """A kd stage run again counts only what it will train: a kept distillation is done, an interrupted one has
    its latest checkpoint's steps done (the stage's ETA counts the same), and a forced stage counts everything."""
    from kdjax import kd_stage

    arch, other, third = "2L-32H-2A-64F-gelu", "1L-32H-2A-64F-gelu", "1L-32H-4A-64F-gelu"
    fields = {"glue.models": f"best,{other},{third}"}
    ctx = run_context(tmp_path, fields, teacher=tiny_teacher)
    fresh = next(p for p in plan.build(ctx, ["kd"]) if p.name == "kd")
    steps = fresh.steps // 3
    assert fresh.done_steps == 0 and "done" not in fresh.what
    assert fresh.what.endswith(f"; KD of 2 model(s) glue.models names x {steps} steps")

    # The first run distilled the chosen student and finished; the stage runs again for two models named since, and
    # the first of them was interrupted after its checkpoint at step 3.
    wd = ctx.workdir
    os.makedirs(os.path.join(wd.kd_dir(arch), "hf"))
    for path in (os.path.join(wd.kd_dir(arch), "hf", "config.json"), os.path.join(wd.kd_dir(arch), "result.json")):
        with open(path, "w") as f:
            f.write("{}")
    os.makedirs(os.path.join(wd.kd_dir(other), "checkpoints", "3"))
    wd.mark_done("kd")
    kd = next(p for p in plan.build(ctx, ["kd"]) if p.name == "kd")
    assert (kd.steps, kd.done_steps) == (2 * steps - 3, steps + 3)
    assert kd.examples == kd.steps * ctx.global_batch and 0 < kd.flops < fresh.flops
    assert f"{arch} {steps} steps x batch" in kd.what and "tokens) (done)" in kd.what
    assert kd.what.endswith(f"; KD of 2 model(s) glue.models names x {steps} steps (3 done)")
    assert f"{2 * steps - 3:,} steps left ({steps + 3:,} done)" in plan.format_plan([kd])
    # The stage's ETA counts the same steps left: the interrupted one resumes 3 steps in, the other follows it.
    work = kd_stage.distillations(ctx, steps)
    positions = kd_stage.eta_positions(work)
    assert positions[wd.kd_dir(other)] == (-3, kd.steps) and positions[wd.kd_dir(third)] == (steps - 3, kd.steps)
    # Forced, the stage starts every distillation again.
    forced = run_context(tmp_path, {**fields, "force": True}, teacher=tiny_teacher)
    kd = next(p for p in plan.build(forced, ["kd"]) if p.name == "kd")
    assert (kd.steps, kd.done_steps, kd.what) == (fresh.steps, 0, fresh.what)


@pytest.mark.slow
def test_a_run_again_for_a_new_model_plans_only_the_new_work(tmp_path, capsys):
    """A tiny kd + glue run, then the same run with one more model in glue.models: both stages run again for it, and
    the plan counts its distillation and its scores only."""
    from kdjax import pipeline
    from kdjax.config import base_config

    wd = str(tmp_path / "w")
    c = base_config("bert-base-uncased", "tiny")
    c.stages, c.glue.tasks, c.glue.models = "kd,glue", "stsb", "best"
    c.glue.distill.baseline = False
    pipeline.run(c, wd)
    first = capsys.readouterr().out
    steps = c.kd.num_train_steps
    assert f"kd       {c.kd.arch} {steps} steps x batch" in first and "steps left" not in first
    c.glue.models = "best,1L-32H-2A-64F-gelu"
    pipeline.run(c, wd)
    out = capsys.readouterr().out
    plan_lines = [line for line in out.splitlines() if line.startswith("  kd ") or line.startswith("  glue ")]
    kd_line, glue_line = plan_lines
    assert f"tokens) (done); KD of 1 model(s) glue.models names x {steps} steps; {steps} steps left ({steps} done)" in (
        kd_line
    )
    # glue: the teacher and the best are scored; the new student's one training on stsb is left.
    assert "3 training(s) per task" in glue_line and "2 of the 3 (model, task) trainings scored already" in glue_line
    assert "glue: kd-1L-32H-2A-64F-gelu stsb (task-distilled)" in out and "glue: teacher stsb" not in out


def test_glue_shape_is_measured_on_local_data_and_typical_elsewhere(tmp_path, tiny_teacher):
    """Local data: the padded shapes of its own examples; the hub's (not read at plan time): GLUE's typical lengths
    rounded up to the bucket. Halving the bucket never adds padded tokens."""
    fields = {"data.glue_dir": "", "glue.bucket": 16, "glue.max_seq_len": 64}
    hub = run_context(tmp_path / "hub", fields, teacher=tiny_teacher)
    assert glue_plan.shape(hub, "sst2", 4) == glue_plan.Shape(32, 32, 32, 32)  # 25 typical tokens -> 32
    assert glue_plan.shape(hub, "rte", 4).train_tokens == 64  # 70 -> 80, capped at glue.max_seq_len
    folder = _glue_folder(str(tmp_path / "glue"), {"sst2": 40})
    local = {b: glue_plan.shape(run_context(tmp_path / f"w{b}", {"data.glue_dir": folder, "glue.bucket": b},
                                            teacher=tiny_teacher), "sst2", 4) for b in (4, 8, 16)}  # fmt: skip
    assert local[4].train_tokens <= local[8].train_tokens <= local[16].train_tokens
    assert local[4].train_tokens < local[16].train_tokens  # the synthetic sentences are not all one length
