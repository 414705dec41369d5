"""The report from a synthetic workdir: tables (JSON, CSV, Markdown), four PNGs, README; partial inputs work."""

import csv
import json
import os

import pytest

from kdjax import report
from kdjax.latency import LatencyConfig
from kdjax.spec import ArchSpec
from kdjax.workdir import read_json, write_json

TASKS = {"rte": {"accuracy": 0.6}, "stsb": {"pearson": 0.8, "spearman": 0.78}, "mrpc": {"f1": 0.85, "accuracy": 0.8}}
SPEC = ArchSpec(4, 64, 4, 128, vocab_size=100)
ARCH, RAND = "2L-32H-2A-64F-gelu", "1L-32H-2A-64F-gelu"


def _read(path) -> str:
    with open(path) as f:
        return f.read()


def _glue(root, model, kind, arch_id, factor, params, tasks=TASKS):
    for task, scores in tasks.items():
        rec = {
            "model": model,
            "kind": kind,
            "arch_id": arch_id,
            "source": f"/src/{model}",
            "task": task,
            "scores": {k: v * factor for k, v in scores.items()},
            "params": params,
            "spec": SPEC.to_dict(),
            "recipe": {"learning_rate": 2e-5},
        }
        write_json(os.path.join(root, "glue", model, f"{task}.json"), rec)


def synthetic_workdir(root: str) -> str:
    write_json(os.path.join(root, "teacher", "latency.json"), {"cpu-b1-s128": {"latency_ms": 60.0}})
    _glue(root, "teacher", "teacher", "4L-64H-4A-128F-gelu", 1.0, 1_000_000)
    _glue(root, f"nas-{ARCH}", "nas", ARCH, 0.8, 300_000)
    _glue(root, f"kd-{ARCH}", "kd", ARCH, 0.9, 300_000)
    _glue(root, f"random-0-{RAND}", "random", RAND, 0.7, 200_000, {"rte": TASKS["rte"]})
    write_json(os.path.join(root, "kd", ARCH, "result.json"), {"final_loss": 0.25})
    write_json(os.path.join(root, "kd", f"random-0-{RAND}", "result.json"), {"final_loss": 0.4})
    os.makedirs(os.path.join(root, "nas"), exist_ok=True)
    with open(os.path.join(root, "nas", "history.jsonl"), "w") as f:
        for i in range(12):
            strategy = ("lstm", "optuna", "random")[i % 3]
            arch = ARCH if i == 4 else (RAND if i == 7 else f"{1 + i % 3}L-32H-2A-{64 * (1 + i)}F-gelu")
            row = {
                "strategy": strategy,
                "arch_id": arch,
                "loss": 0.5 - 0.02 * i,
                "latency_ms": 5.0 + i,
                "speedup": 60.0 / (5 + i),
                "reward": 0.4 + 0.03 * i,
            }
            f.write(json.dumps(row) + "\n")
        f.write("not json\n")
    return root


def test_report_from_synthetic_workdir(tmp_path):
    root = synthetic_workdir(str(tmp_path))
    info = report.build_report(root, measure_missing=False)
    out = os.path.join(root, "report")
    assert info["figures"] == sorted(report.FIGURES.values())
    for name in report.FIGURES.values():
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = {r["model"]: r for r in read_json(os.path.join(out, "glue.json"))["rows"]}
    assert next(iter(rows)) == "teacher"
    kd = rows[f"kd-{ARCH}"]
    assert kd["pct_teacher"] == pytest.approx(90.0)
    assert kd["speedup"] == pytest.approx(60.0 / 9.0)  # latency of candidate 4 from the history
    assert kd["kd_loss"] == 0.25 and kd["reward"] == pytest.approx(0.52)
    assert rows[f"nas-{ARCH}"]["kd_loss"] == pytest.approx(0.42)  # mini-KD loss from the history
    assert rows["teacher"]["speedup"] == pytest.approx(1.0)
    assert rows[f"random-0-{RAND}"]["num_tasks"] == 1
    md = _read(os.path.join(out, "glue.md"))
    assert "stsb (P/S)" in md and "| 80.00/78.00 |" in md and "90.0%" in md
    assert "Without vs with post-distillation training" not in md  # needs a PDT row (tests/pdt_test.py)
    with open(os.path.join(out, "glue.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and float(table[0]["stsb_pearson"]) == pytest.approx(0.8)
    readme = _read(os.path.join(out, "README.md"))
    assert all(f"]({name})" in readme for name in report.FIGURES.values())
    # Table 1: one row per search, best reward first; the random search's best is candidate 11.
    searches = read_json(os.path.join(out, "search.json"))["searches"]
    assert [r["search"] for r in searches] == ["random", "optuna", "lstm"]
    assert searches[0]["best_arch"] == "3L-32H-2A-768F-gelu" and searches[0]["best_reward"] == pytest.approx(0.73)
    assert searches[0]["top3_mean_reward"] == pytest.approx((0.73 + 0.64 + 0.55) / 3)
    assert "### Search strategies: " in readme and "| random | 4 | 3L-32H-2A-768F-gelu |" in readme


def test_report_with_partial_inputs(tmp_path):
    info = report.build_report(str(tmp_path), measure_missing=False)
    assert info == {"rows": 0, "tasks": [], "figures": [], "candidates": 0}
    readme = _read(tmp_path / "report" / "README.md")
    assert "No GLUE results yet" in readme and "not drawn" in readme
    # Only GLUE scores, no teacher latency or history: latency is measured from the recorded spec.
    _glue(str(tmp_path), "teacher", "teacher", "4L-64H-4A-128F-gelu", 1.0, 1_000_000, {"rte": TASKS["rte"]})
    _glue(str(tmp_path), "some-folder", "folder", None, 0.5, 10, {"rte": TASKS["rte"]})
    info = report.build_report(str(tmp_path), latency_cfg=LatencyConfig(seq_len=16, warmup_runs=1, timed_runs=1))
    rows = read_json(tmp_path / "report" / "glue.json")["rows"]
    assert info["rows"] == 2 and rows[1]["latency_ms"] > 0 and rows[1]["pct_teacher"] == pytest.approx(50.0)


def test_sibling_workdir_histories(tmp_path):
    a, b = synthetic_workdir(str(tmp_path / "alpha_a")), synthetic_workdir(str(tmp_path / "alpha_b"))
    rows = report.load_histories(a, [b])
    assert {r["series"] for r in rows} == {
        "lstm",
        "optuna",
        "random",
        "alpha_b:lstm",
        "alpha_b:optuna",
        "alpha_b:random",
    }
