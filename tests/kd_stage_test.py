"""The `kd` stage end to end through main.py on the :tiny config, and its export."""

import json
import os

import pytest
from helpers import run_main


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    w = tmp_path_factory.mktemp("kd")
    proc = run_main(["--config=configs/bert_nas.py:tiny", "--config.stages=kd"], w)
    return w, proc


def test_kd_stage_writes_checkpoints_metrics_and_export(kd_run):
    w, proc = kd_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = os.path.join(w, "kd", "2L-32H-2A-64F-gelu")
    names = os.listdir(os.path.join(out, "checkpoints"))
    assert max(int(n) for n in names if n.isdigit()) == 6 and "settings.json" in names
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 3, 4, 6] and all("hidden_mse" in r and "grad_norm" in r for r in rows)
    result = json.load(open(os.path.join(out, "result.json")))
    assert result["steps"] == 6 and result["final_loss"] > 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(
        os.listdir(os.path.join(out, "hf"))
    )
    assert os.path.exists(os.path.join(w, ".stages", "kd.json"))


def test_second_run_skips_finished_stage(kd_run):
    w, _ = kd_run
    proc = run_main(["--config=configs/bert_nas.py:tiny", "--config.stages=kd"], w)
    assert proc.returncode == 0 and "kd: already finished" in proc.stdout


def test_finished_stage_distils_what_glue_models_names_since(kd_run):
    """The kd stage distils the random baselines and arch ids of glue.models (the glue stage only scores them); a
    finished stage runs again for those alone, leaving what it made untouched."""
    w, _ = kd_run
    best = os.path.join(w, "kd", "2L-32H-2A-64F-gelu")
    stamp = os.path.getmtime(os.path.join(best, "result.json"))
    assert json.load(open(os.path.join(best, "latency.json")))["latency_ms"] > 0  # timed once, when made
    models = "--config.glue.models=teacher,best,random,1L-32H-2A-64F-gelu"
    proc = run_main(["--config=configs/bert_nas.py:tiny", "--config.stages=kd", models], w)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kd: finished before; running again for random-0-" in proc.stdout
    (random,) = [n for n in os.listdir(os.path.join(w, "kd")) if n.startswith("random-0-")]
    for name in (random, "1L-32H-2A-64F-gelu"):
        out = os.path.join(w, "kd", name)
        assert os.path.isfile(os.path.join(out, "hf", "config.json")) and os.path.isfile(
            os.path.join(out, "result.json")
        )
        assert json.load(open(os.path.join(out, "latency.json")))["latency_ms"] > 0
    assert os.path.getmtime(os.path.join(best, "result.json")) == stamp
    again = run_main(["--config=configs/bert_nas.py:tiny", "--config.stages=kd", models], w)
    assert again.returncode == 0 and "kd: already finished" in again.stdout


def test_export_loads_in_transformers(kd_run):
    from transformers import FlaxAutoModel

    w, _ = kd_run
    model = FlaxAutoModel.from_pretrained(os.path.join(w, "kd", "2L-32H-2A-64F-gelu", "hf"), from_pt=True)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32


def test_finished_stage_distils_a_student_chosen_since(kd_run):
    """A new config.kd.arch (or a new search winner) on a finished workdir: the kd stage runs again for that student
    alone instead of skipping, so the glue stage finds its export; what the stage made before stays."""
    w, _ = kd_run
    best = os.path.join(w, "kd", "2L-32H-2A-64F-gelu", "result.json")
    stamp = os.path.getmtime(best)
    args = ["--config=configs/bert_nas.py:tiny", "--config.stages=kd", "--config.kd.arch=2L-32H-2A-32F-gelu"]
    proc = run_main(args, w)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = "kd: finished before; running again for kd-2L-32H-2A-32F-gelu from config.kd.arch (a student chosen since)"
    assert again in proc.stdout
    assert os.path.isfile(os.path.join(w, "kd", "2L-32H-2A-32F-gelu", "hf", "config.json"))
    assert os.path.getmtime(best) == stamp
    again = run_main(args, w)
    assert again.returncode == 0 and "kd: already finished" in again.stdout
