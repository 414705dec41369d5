"""PDT: the mini-KD state round-trips, the kd stage continues each winner from it, glue and the report score it."""

import json
import os

import numpy as np
import pytest
from helpers import run_context

from kdjax import pdt, report
from kdjax.config import base_config
from kdjax.errors import KdjaxError
from kdjax.workdir import read_json, write_json


def test_minikd_state_round_trip_and_damaged_file(tmp_path):
    rng = np.random.default_rng(0)
    params = {
        "student": {"encoder": {"layer": {"0": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)}}}},
        "projection": {"kernel": rng.normal(size=(4, 8)).astype(np.float32), "bias": np.zeros(8, np.float32)},
    }
    path = pdt.save_minikd_state(str(tmp_path / "minikd.npz"), params)
    back = pdt.load_minikd_state(path)
    np.testing.assert_array_equal(
        back["student"]["encoder"]["layer"]["0"]["kernel"], params["student"]["encoder"]["layer"]["0"]["kernel"]
    )
    np.testing.assert_array_equal(back["projection"]["kernel"], params["projection"]["kernel"])
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]
    with open(path, "r+b") as f:
        f.truncate(40)
    with pytest.raises(KdjaxError, match="mini-KD state"):
        pdt.load_minikd_state(path)


def _glue(root, model, kind, arch, score):
    rec = {"model": model, "kind": kind, "arch_id": arch, "source": model, "task": "sst2",
           "scores": {"accuracy": score}, "params": 1000, "recipe": {}}  # fmt: skip
    write_json(os.path.join(root, "glue", model, "sst2.json"), rec)


def test_report_pdt_table_compares_mini_kd_export_with_pdt(tmp_path):
    root, arch = str(tmp_path), "2L-32H-2A-64F-gelu"
    _glue(root, "teacher", "teacher", "4L-64H-4A-128F-gelu", 0.9)
    _glue(root, f"nas-{arch}", "nas", arch, 0.6)
    _glue(root, f"kd-{arch}", "kd", arch, 0.8)
    _glue(root, f"pdt-{arch}", "pdt", arch, 0.7)
    _glue(root, "kd-1L-32H-2A-64F-gelu", "kd", "1L-32H-2A-64F-gelu", 0.5)  # no mini-KD/PDT pair: not in the table
    rows, tasks = report.build_rows(root)
    md = report.markdown_tables(rows, tasks)
    table = md.split("### Without vs with post-distillation training (PDT)")[1]
    assert "without PDT (mini-KD export) / with PDT" in table
    assert f"| {arch} | 60.00 / 70.00 (+10.00) |" in table  # full KD's 80.00 is not in it
    assert "80.00" not in table and "1L-32H" not in table


@pytest.fixture(scope="module")
def pdt_run(tmp_path_factory):
    """One :tiny run (teacher, nas, kd with PDT, glue of the best's three exports, report), in process."""
    from kdjax import pipeline

    w = str(tmp_path_factory.mktemp("pdt"))
    c = base_config("bert-base-uncased", "tiny")
    c.kd.pdt_steps = 3
    c.glue.models = "best"
    c.glue.tasks = "sst2"
    pipeline.run(c, w)
    return w, c


@pytest.mark.slow
def test_pdt_writes_kd_arch_pdt_for_every_winner_and_is_scored(pdt_run):
    w, _ = pdt_run
    winners = [e["arch_id"] for e in read_json(os.path.join(w, "nas", "top_k.json"))["top_k"]]
    assert winners
    for arch in winners:
        out = os.path.join(w, "kd", f"{arch}-pdt")
        result = read_json(os.path.join(out, "result.json"))
        assert result["steps"] == 3 and result["pdt_from"].endswith(os.path.join(arch, "minikd.npz"))
        assert os.path.exists(os.path.join(out, "hf", "model.safetensors"))
        assert max(int(n) for n in os.listdir(os.path.join(out, "checkpoints")) if n.isdigit()) == 3
        assert [json.loads(line)["step"] for line in open(os.path.join(out, "metrics.jsonl"))][-1] == 3
    best = winners[0]
    # The collapse guard measured every checkpoint of the healthy teacher-cut students, and none collapsed.
    guard = [json.loads(line) for line in open(os.path.join(w, "kd", f"{best}-pdt", "collapse.jsonl"))]
    assert [r["step"] for r in guard] == [3] and not any(r["collapsed"] for r in guard)
    assert read_json(os.path.join(w, "glue", f"pdt-{best}", "sst2.json"))["kind"] == "pdt"
    md = open(os.path.join(w, "report", "glue.md")).read()
    assert "Without vs with post-distillation training (PDT)" in md and f"| {best} |" in md


@pytest.mark.slow
def test_pdt_starts_from_the_mini_kd_student_and_projection(pdt_run, monkeypatch):
    """With a learning rate of ~0 the PDT export equals the mini-KD export; the projection passed is the saved one."""
    import shutil

    from safetensors.numpy import load_file

    from kdjax import kd_stage

    w, c = pdt_run
    best = read_json(os.path.join(w, "nas", "top_k.json"))["top_k"][0]["arch_id"]
    ctx = run_context(w, {"kd.learning_rate": 1e-12}, config=c)
    seen = {}
    real = kd_stage.distill_arch

    def spy(inp, spec, **kw):
        seen[spec.arch_id] = kw["projection_params"]
        return real(inp, spec, **kw)

    monkeypatch.setattr(kd_stage, "distill_arch", spy)
    monkeypatch.setattr(pdt, "winners", lambda ctx: [best])
    shutil.rmtree(os.path.join(w, "kd", f"{best}-pdt"))
    pdt.run(ctx, kd_stage.kd_inputs(ctx))
    saved = pdt.load_minikd_state(os.path.join(w, "nas", "candidates", best, "minikd.npz"))
    np.testing.assert_array_equal(seen[best]["kernel"], saved["projection"]["kernel"])
    a = load_file(os.path.join(w, "nas", "candidates", best, "hf", "model.safetensors"))
    b = load_file(os.path.join(w, "kd", f"{best}-pdt", "hf", "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_glue_models_can_name_one_export(pdt_run):
    from kdjax.glue_models import GlueStageError, resolve_models

    w, c = pdt_run
    best = read_json(os.path.join(w, "nas", "top_k.json"))["top_k"][0]["arch_id"]
    ctx = run_context(w, config=c)
    refs = resolve_models(ctx, [f"pdt-{best}", f"nas-{best}"])
    assert [(r.name, r.kind) for r in refs] == [(f"pdt-{best}", "pdt"), (f"nas-{best}", "nas")]
    assert refs[0].source == os.path.join(w, "kd", f"{best}-pdt", "hf")
    with pytest.raises(GlueStageError, match=r"kd\.pdt_steps"):
        resolve_models(ctx, ["pdt-1L-16H-1A-16F-gelu"])
