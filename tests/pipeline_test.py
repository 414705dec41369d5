"""All five stages end to end through main.py on :tiny (no data, no network), then a re-run that skips them all."""

import json
import os

import pytest
from helpers import run_main

ARGS = ["--config=configs/bert_nas.py:tiny", "--config.nas.strategy=random", "--config.glue.models=teacher,best"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    w = tmp_path_factory.mktemp("pipeline")
    return w, run_main(ARGS, w, timeout=1200)


def test_all_stages_produce_tables_and_figures(full_run):
    w, proc = full_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("teacher", "nas", "kd", "glue", "report"):
        assert os.path.exists(os.path.join(w, ".stages", f"{stage}.json")), stage
    best = json.load(open(os.path.join(w, "nas", "top_k.json")))["top_k"][0]["arch_id"]
    # The kd stage distilled the search's best, not config.kd.arch.
    assert os.path.exists(os.path.join(w, "kd", best, "hf", "model.safetensors"))
    report = os.path.join(w, "report")
    pngs = [f for f in os.listdir(report) if f.endswith(".png")]
    assert len(pngs) == 4, pngs
    assert {"glue.json", "glue.csv", "glue.md", "README.md"} <= set(os.listdir(report))
    readme = open(os.path.join(report, "README.md")).read()
    assert all(p in readme for p in pngs)
    table = open(os.path.join(report, "glue.md")).read()
    assert "teacher" in table and best in table
    # STS-B is scored as regression (Pearson/Spearman), SST-2 as classification (accuracy).
    stsb = json.load(open(os.path.join(w, "glue", "teacher", "stsb.json")))
    assert set(stsb["scores"]) == {"pearson", "spearman"}


def test_second_run_skips_finished_stages(full_run):
    w, _ = full_run
    proc = run_main(ARGS, w)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in ("teacher", "nas", "kd", "glue", "report"):
        assert f"{stage}: already finished" in proc.stdout

    # A run with another config keeps the earlier config.json under configs/ instead of overwriting it.
    before = json.load(open(os.path.join(w, "config.json")))
    proc = run_main([*ARGS, "--config.stages=report", "--config.glue.learning_rates=3e-5"], w)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.load(open(os.path.join(w, "config.json")))["glue"]["learning_rates"] == "3e-5"
    kept = [json.load(open(os.path.join(w, "configs", f))) for f in os.listdir(os.path.join(w, "configs"))]
    assert kept == [before]


def test_compilation_cache_is_machine_level_unless_jax_has_one(monkeypatch, tmp_path):
    import jax

    from kdjax.pipeline import enable_compilation_cache, machine_cache_dir

    monkeypatch.delenv("KDJAX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert machine_cache_dir() == str(tmp_path / "xdg" / "kdjax" / "xla")
    monkeypatch.setenv("KDJAX_CACHE_DIR", str(tmp_path / "kd"))
    assert machine_cache_dir() == str(tmp_path / "kd" / "xla")
    # A folder chosen through JAX_COMPILATION_CACHE_DIR (the tests' own) is kept.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "chosen"))
    before = jax.config.jax_compilation_cache_dir
    enable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == before
