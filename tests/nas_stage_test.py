"""The nas stage on the tiny config: end to end through main.py, and stopped-then-resumed == unbroken per strategy."""

import json
import os
import shutil

import pytest
from helpers import run_context, run_main

from kdjax.nas import topk

TINY = ["--config=configs/bert_nas.py:tiny", "--config.stages=nas"]
# A small space (8 points) and one-step epochs keep the compiled shapes few; in-process runs share compiled steps.
SMALL = dict(num_layers="1,2", ffn_size="64", activation="gelu,relu")


def read_history(workdir):
    with open(os.path.join(workdir, "nas", "history.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_main_lstm_end_to_end(tmp_path):
    w = str(tmp_path / "w")
    proc = run_main([*TINY, "--config.nas.mini_kd_steps_per_epoch=1"], w)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "valid architectures" in proc.stdout and "top-k" in proc.stdout
    rows = read_history(w)
    assert 1 <= len(rows) <= 4 and len({r["arch_id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["strategy"] == "lstm" and r["loss_source"] == "last" and len(r["epoch_losses"]) == 2
        assert r["loss"] == r["epoch_losses"][-1] and r["speedup"] > 0 and r["compile_s"] is not None
    top = json.load(open(os.path.join(w, "nas", "top_k.json")))["top_k"]
    assert top and top[0]["reward"] == max(r["reward"] for r in rows)
    kept = set(os.listdir(os.path.join(w, "nas", "candidates")))
    assert kept == {t["arch_id"] for t in top}
    assert os.path.exists(os.path.join(w, "nas", "candidates", top[0]["arch_id"], "hf", "config.json"))
    assert os.listdir(os.path.join(w, "nas", "controller"))


def make_ctx(tiny_teacher, workdir, strategy, **nas):
    fields = {"stages": "nas", "nas.strategy": strategy, "nas.mini_kd_steps_per_epoch": 1, "nas.num_trials": 3}
    fields |= {f"nas.space.{k}": v for k, v in SMALL.items()} | {f"nas.{k}": v for k, v in nas.items()}
    return run_context(workdir, fields, teacher=tiny_teacher)


def key_fields(rows):
    keys = ("episode", "candidate", "trial", "arch_id", "epoch_losses", "latency_ms", "reward")
    return [tuple(r.get(k) for k in keys) for r in rows]


@pytest.mark.parametrize("strategy", ["lstm", "optuna", "random"])
def test_stopped_search_resumes_to_the_same_history(tiny_teacher, tmp_path, strategy):
    from kdjax.nas import stage
    from kdjax.nas.minikd import StopSearch

    full = str(tmp_path / "full")
    stage.run(make_ctx(tiny_teacher, full, strategy))
    part = str(tmp_path / "part")
    # Latency is measured, hence noisy (and very noisy on a shared CPU); the reward, and so the LSTM's next draws,
    # depend on it. Seeding the part run's latency caches with the full run's isolates what is under test: resume.
    for sub in ("teacher", "nas"):
        os.makedirs(os.path.join(part, sub), exist_ok=True)
        shutil.copy(os.path.join(full, sub, "latency.json"), os.path.join(part, sub, "latency.json"))
    with pytest.raises(StopSearch):
        stage.run(make_ctx(tiny_teacher, part, strategy, stop_after_evaluations=1))
    assert len(read_history(part)) == 1
    stage.run(make_ctx(tiny_teacher, part, strategy))
    assert key_fields(read_history(part)) == key_fields(read_history(full))
    assert json.load(open(os.path.join(part, "nas", "top_k.json")))["top_k"]
    # A repeated search trains nothing new.
    stage.run(make_ctx(tiny_teacher, part, strategy))
    assert len(read_history(part)) == len(read_history(full))


def row(arch, reward, latency, loss=0.5):
    return {"arch_id": arch, "reward": reward, "latency_ms": latency, "loss": loss}


def test_top_k_distinct_budgets_and_pareto():
    rows = [row("a", 0.9, 10.0), row("b", 0.89, 10.5), row("c", 0.8, 5.0), row("d", 0.7, 20.0), row("e", 0.6, 2.0)]
    picked = topk.distinct_budgets(rows, 3, 1.25)
    assert [r["arch_id"] for r in picked] == ["a", "c", "d"]  # b is within 25% of a's latency
    assert [r["arch_id"] for r in topk.distinct_budgets(rows[:2], 3, 1.25)] == ["a", "b"]
    front = topk.pareto_front([row("x", 0.9, 10.0, 0.2), row("y", 0.8, 5.0, 0.3), row("z", 0.7, 12.0, 0.4)])
    assert [r["arch_id"] for r in front] == ["x", "y"]


def test_min_speedup_search_only_draws_students_fast_enough(tiny_teacher, tmp_path):
    from kdjax.nas import stage

    # A target between the slowest and the fastest student of the small space, by this machine's latency model.
    loose = make_ctx(tiny_teacher, str(tmp_path / "loose"), "random", **{"space.min_speedup": 1e-6}).search_space()
    model = loose.latency_model
    assert model is not None
    speedups = sorted(model.predict(tiny_teacher.spec) / model.predict(s) for s in loose.all_specs())
    target = speedups[len(speedups) // 2]
    w = str(tmp_path / "w")
    ctx = make_ctx(tiny_teacher, w, "random", **{"space.min_speedup": target})
    space = ctx.search_space()
    assert 0 < space.size < loose.size
    stage.run(ctx)
    rows = read_history(w)
    assert rows and all(r["latency_source"] == "model" and r["speedup"] >= target * (1 - 1e-9) for r in rows)
