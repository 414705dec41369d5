"""The report from a synthetic workdir: tables (JSON, CSV, Markdown), four PNGs, README; partial inputs work."""

import csv
import json
import os

import pytest

from kdjax import model_latency, report
from kdjax.latency import LatencyConfig
from kdjax.reward import RewardConfig, reward
from kdjax.spec import ArchSpec
from kdjax.workdir import Workdir, read_json, write_json

TASKS = {"rte": {"accuracy": 0.6}, "stsb": {"pearson": 0.8, "spearman": 0.78}, "mrpc": {"f1": 0.85, "accuracy": 0.8}}
SPEC = ArchSpec(4, 64, 4, 128, vocab_size=100)
ARCH, RAND = "2L-32H-2A-64F-gelu", "1L-32H-2A-64F-gelu"
STRATEGIES = ("lstm", "optuna", "random")


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
    info = report.build_report(root)
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
    info = report.build_report(str(tmp_path))
    assert info == {"rows": 0, "tasks": [], "figures": [], "candidates": 0}
    readme = _read(tmp_path / "report" / "README.md")
    assert "No GLUE results yet" in readme and "not drawn" in readme
    # Only GLUE scores and the latencies recorded when the models were made (kd stage) or scored (glue stage), no
    # teacher latency or history: the report reads them (it times nothing itself).
    root = str(tmp_path)
    _glue(root, "teacher", "teacher", "4L-64H-4A-128F-gelu", 1.0, 1_000_000, {"rte": TASKS["rte"]})
    _glue(root, "some-folder", "folder", None, 0.5, 10, {"rte": TASKS["rte"]})
    _glue(root, f"kd-{ARCH}", "kd", ARCH, 0.9, 300_000, {"rte": TASKS["rte"]})
    wd = Workdir(root)
    folder = model_latency.record(
        wd.latency_path("folder", None, "some-folder"), SPEC, LatencyConfig(seq_len=16, warmup_runs=1, timed_runs=1)
    )
    write_json(wd.latency_path("kd", ARCH, f"kd-{ARCH}"), {"key": "k", "latency_ms": 7.5, "torch_ms": 3.0})
    assert wd.latency_path("kd", ARCH, f"kd-{ARCH}") == os.path.join(root, "kd", ARCH, "latency.json")
    info = report.build_report(root)
    rows = {r["model"]: r for r in read_json(tmp_path / "report" / "glue.json")["rows"]}
    assert info["rows"] == 3 and rows["some-folder"]["pct_teacher"] == pytest.approx(50.0)
    assert rows["some-folder"]["latency_ms"] == folder["latency_ms"] > 0 and rows["some-folder"]["torch_ms"] is None
    assert rows[f"kd-{ARCH}"]["latency_ms"] == 7.5 and rows[f"kd-{ARCH}"]["torch_ms"] == 3.0
    assert rows["teacher"]["latency_ms"] is None and rows[f"kd-{ARCH}"]["speedup"] is None


def test_torch_speedup_is_the_recorded_pair_not_two_lone_timings(tmp_path):
    # Records as the stages write them (kdjax.model_latency.record), by hand: the teacher's own torch time (50 ms,
    # timed alone) and a student timed beside the teacher at another moment (teacher 30 ms, student 10 ms).
    root = str(tmp_path)
    _glue(root, "teacher", "teacher", "4L-64H-4A-128F-gelu", 1.0, 1_000_000, {"rte": TASKS["rte"]})
    _glue(root, f"kd-{ARCH}", "kd", ARCH, 0.9, 300_000, {"rte": TASKS["rte"]})
    _glue(root, f"random-0-{RAND}", "random", RAND, 0.7, 200_000, {"rte": TASKS["rte"]})
    wd = Workdir(root)
    write_json(wd.latency_path("teacher", None, "teacher"), {"key": "k", "latency_ms": 60.0, "torch_ms": 50.0})
    pair = {"teacher": {"latency_ms": 30.0}, "student": {"latency_ms": 10.0}, "speedup": 3.0}
    kd = {"key": "k", "latency_ms": 7.5, "torch_ms": 10.0, "torch_pair": pair, "torch_speedup": 3.0}
    write_json(wd.latency_path("kd", ARCH, f"kd-{ARCH}"), kd)
    # Recorded by a kdjax from before pairs: its torch time stays, no ratio is made up from the teacher row's.
    write_json(wd.latency_path("random", RAND, f"random-0-{RAND}"), {"key": "old", "latency_ms": 5.0, "torch_ms": 12.5})
    report.build_report(root)
    rows = {r["kind"]: r for r in read_json(tmp_path / "report" / "glue.json")["rows"]}
    assert rows["kd"]["torch_speedup"] == 3.0 and rows["kd"]["torch_ms"] == 10.0  # not 50 / 10
    assert rows["kd"]["torch_teacher_ms"] == 30.0
    assert rows["random"]["torch_ms"] == 12.5 and rows["random"]["torch_speedup"] is None
    assert rows["teacher"]["torch_ms"] == 50.0 and rows["teacher"]["torch_speedup"] == 1.0
    md = _read(tmp_path / "report" / "glue.md")
    line: dict[str, list[str]] = {}
    for ln in md.splitlines():  # the first table with a model's row is the scores table
        if ln.startswith("| "):
            line.setdefault(ln.split(" | ")[0], ln.split(" | "))
    assert line[f"| kd-{ARCH}"][5:7] == ["10.00", "3.0x (vs 30.00)"]  # the pair's teacher, not the row's 50
    assert line[f"| random-0-{RAND}"][5:7] == ["12.50", "-"]
    assert "side by side in one session" in md
    # glue.csv has the same columns, the pair's teacher time included; empty where glue.json has null.
    with open(tmp_path / "report" / "glue.csv") as f:
        table = {r["kind"]: r for r in csv.DictReader(f)}
    torch_cols = ("torch_ms", "torch_speedup", "torch_teacher_ms")
    assert [float(table["kd"][c]) for c in torch_cols] == [10.0, 3.0, 30.0]
    assert [table["random"][c] for c in torch_cols] == ["12.5", "", ""]
    assert [table["teacher"][c] for c in torch_cols] == ["50.0", "1.0", ""]


def _sibling(root: str, alpha: float, latency_scale: float) -> str:
    """A synthetic workdir whose search used `alpha` and timed every candidate `latency_scale` times slower."""
    synthetic_workdir(root)
    write_json(os.path.join(root, "config.json"), {"nas": {"reward": {"alpha": alpha, "beta": 0.6}}})
    path = os.path.join(root, "nas", "history.jsonl")
    rows = [json.loads(x) for x in _read(path).splitlines() if x.startswith("{")]
    cfg = RewardConfig(alpha=alpha)
    with open(path, "w") as f:
        for r in rows:
            r["latency_ms"] *= latency_scale
            r["teacher_latency_ms"] = 60.0
            r["speedup"] = 60.0 / r["latency_ms"]
            r["reward"] = reward(r["loss"], r["latency_ms"], 60.0, cfg)
            f.write(json.dumps(r) + "\n")
    return root


def test_sibling_workdirs_keep_their_own_numbers_on_one_reward_scale(tmp_path):
    a = _sibling(str(tmp_path / "alpha_a"), -0.07, 1.0)
    b = _sibling(str(tmp_path / "alpha_b"), -1.0, 3.0)
    rows = report.load_histories(a, [b])
    assert {r["series"] for r in rows} == {f"{w}:{s}" for w in ("alpha_a", "alpha_b") for s in STRATEGIES}
    # Alone, a workdir's series are just its strategies.
    assert {r["series"] for r in report.load_histories(a, [])} == set(STRATEGIES)

    report.build_report(a, extra_workdirs=[b])
    out = os.path.join(a, "report")
    glue = {r["model"]: r for r in read_json(os.path.join(out, "glue.json"))["rows"]}
    # The GLUE rows of workdir a use a's candidate 4 (latency 9 ms, alpha=-0.07), never b's record of the same arch.
    kd = glue[f"kd-{ARCH}"]
    assert kd["latency_ms"] == pytest.approx(9.0) and kd["speedup"] == pytest.approx(60.0 / 9.0)
    assert kd["reward"] == pytest.approx(reward(0.42, 9.0, 60.0, RewardConfig(alpha=-0.07)))
    # The search table: b's rewards recomputed with a's alpha from b's own losses and latencies, and the README says so.
    searches = {r["search"]: r for r in read_json(os.path.join(out, "search.json"))["searches"]}
    best_b = searches["alpha_b:random"]
    assert best_b["best_arch"] == "3L-32H-2A-768F-gelu"
    assert best_b["best_reward"] == pytest.approx(reward(0.5 - 0.22, 3.0 * 16, 60.0, RewardConfig(alpha=-0.07)))
    readme = _read(os.path.join(out, "README.md"))
    assert "recomputed on one scale (alpha=-0.07, beta=0.6" in readme
    assert "alpha_b: alpha=-1, beta=0.6" in readme and "WARNING" not in readme
    assert "| alpha_b:random | 4 |" in readme
    assert "min-max band) (reward scales: see the note under the search table)*" in readme


def test_rewards_that_cannot_be_recomputed_are_flagged(tmp_path):
    a = _sibling(str(tmp_path / "a"), -0.07, 1.0)
    b = synthetic_workdir(str(tmp_path / "b"))  # no teacher latency per row, no recorded settings
    report.build_report(a, extra_workdirs=[b])
    readme = _read(os.path.join(a, "report", "README.md"))
    assert "WARNING: rewards of b: unknown settings are as recorded" in readme
    # Same settings everywhere: nothing to say.
    c = _sibling(str(tmp_path / "c"), -0.07, 2.0)
    report.build_report(a, extra_workdirs=[c])
    assert "recomputed" not in _read(os.path.join(a, "report", "README.md"))


def test_docs_sweep_commands_parse_on_a_fresh_clone():
    """Every `python main.py` line of the sweep in docs/pipeline.md names real fields and needs no local data."""
    import re
    import shlex
    import subprocess
    import sys

    from helpers import ROOT

    text = _read(os.path.join(ROOT, "docs", "pipeline.md"))
    block = text.split("## Example: a sweep over the latency weight", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [c for c in re.sub(r"\\\n\s*", "", block).splitlines() if c.strip().startswith("python main.py")]
    assert len(commands) == 2
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    for command in commands:
        args = [a.replace("$alpha", "-0.3") for a in shlex.split(command)[2:] if not a.startswith("--workdir=")]
        # Either the self-contained :tiny variant, or explicit corpus and GLUE folders.
        assert any(a.endswith(":tiny") for a in args) or {"--config.data.corpus", "--config.data.glue_dir"} <= {
            a.split("=", 1)[0] for a in args
        }, command
        proc = subprocess.run(
            [sys.executable, "main.py", *args, "--print_config"], cwd=ROOT, capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_report_shows_lr_grid_and_distilled_vs_fine_tuned(tmp_path):
    root = str(tmp_path)
    rates = [3e-4, 1e-4, 5e-5, 3e-5]
    for model, factor, extra in (
        ("teacher", 1.0, {}),
        (f"kd-{ARCH}", 0.9, {"method": "distill"}),
        (f"kd-{ARCH}-ft", 0.6, {"method": "finetune", "twin": f"kd-{ARCH}"}),
    ):
        grid = [{"learning_rate": lr, "score": factor * s} for lr, s in zip(rates, (0.5, 0.6, 0.55, 0.52))]
        rec = {"model": model, "kind": "teacher" if model == "teacher" else "kd", "arch_id": ARCH, "params": 1}
        rec |= {"scores": {"accuracy": factor * 0.6}, "picked_lr": 1e-4, "grid": grid, **extra}
        write_json(os.path.join(root, "glue", model, "rte.json"), rec)
    report.build_report(root)
    md = _read(os.path.join(root, "report", "glue.md"))
    assert "### Learning-rate grid (picked by dev score)" in md
    assert "| teacher | **0.0001**; 0.0003: 50.00, 0.0001: 60.00, 5e-05: 55.00, 3e-05: 52.00 |" in md
    assert "### Fine-tuned only vs task-distilled" in md and f"| kd-{ARCH} | 36.00 / 54.00 | 36.00 / 54.00 |" in md
    # The baseline is not a PDT variant: with only kd rows, no with/without-PDT table.
    assert "Without vs with post-distillation training" not in md
    with open(os.path.join(root, "report", "glue.csv")) as f:
        table = {r["model"]: r for r in csv.DictReader(f)}
    assert table[f"kd-{ARCH}-ft"]["method"] == "finetune" and float(table["teacher"]["rte_lr"]) == 1e-4


def _set_pooling(root: str, model: str, pooling: str) -> None:
    for task in TASKS:
        path = os.path.join(root, "glue", model, f"{task}.json")
        rec = read_json(path)
        write_json(path, {**rec, "recipe": {**rec["recipe"], "pooling": pooling}})


def test_rows_older_than_glue_pooling_count_as_the_pooler_head(tmp_path):
    """A workdir scored before glue.pooling existed (recipes without 'pooling') and re-scored with the pooler after is
    one recipe; a row trained with the mean head is not."""
    root = synthetic_workdir(str(tmp_path))
    _set_pooling(root, f"kd-{ARCH}", "pooler")
    report.build_report(root)
    text = _read(os.path.join(root, "report", "README.md"))
    assert "one recipe for every row" in text and "rows use different recipes" not in text
    _set_pooling(root, f"kd-{ARCH}", "mean")
    report.build_report(root)
    assert "WARNING: rows use different recipes" in _read(os.path.join(root, "report", "README.md"))


def _history(root: str, rewards: dict[str, list[float]]) -> None:
    with open(os.path.join(root, "nas", "history.jsonl"), "w") as f:
        for strategy, values in rewards.items():
            for i, r in enumerate(values):
                arch = f"{1 + i}L-32H-2A-64F-gelu"
                f.write(json.dumps({"strategy": strategy, "arch_id": arch, "loss": 0.3, "reward": r}) + "\n")


def test_repeated_searches_of_a_strategy_get_mean_spread_and_band(tmp_path):
    # One workdir per seed, as docs/nas_vs_random.sh makes them: random searched three times, optuna twice (one search
    # shorter), lstm once.
    roots = [synthetic_workdir(str(tmp_path / f"s{k}")) for k in range(3)]
    _history(roots[0], {"random": [0.5, 0.4, 0.7], "optuna": [0.2, 0.3, 0.9], "lstm": [0.1, 0.2]})
    _history(roots[1], {"random": [0.6, 0.4, 0.7], "optuna": [0.4, 0.1]})
    _history(roots[2], {"random": [0.7, 0.4, 0.7]})
    rows = report.load_histories(roots[0], roots[1:])
    bands = report.strategy_bands(rows)
    assert set(bands) == {"random", "optuna"}  # lstm was searched once: a plain line, no band
    assert bands["random"]["searches"] == 3
    assert bands["random"]["mean"] == pytest.approx([0.6, 0.6, 0.7])
    assert bands["random"]["min"] == pytest.approx([0.5, 0.5, 0.7])
    assert bands["random"]["max"] == pytest.approx([0.7, 0.7, 0.7])
    # The band stops where the shorter optuna search does.
    assert bands["optuna"]["mean"] == pytest.approx([0.3, 0.35]) and bands["optuna"]["min"] == pytest.approx([0.2, 0.3])

    info = report.build_report(roots[0], extra_workdirs=roots[1:])
    assert "fig_best_reward.png" in info["figures"]
    strategies = {r["strategy"]: r for r in read_json(os.path.join(roots[0], "report", "search.json"))["strategies"]}
    assert set(strategies) == {"random", "optuna"}
    rnd = strategies["random"]
    assert rnd["best_mean"] == pytest.approx(0.7) and rnd["best_std"] == pytest.approx(0.0)
    # Top-3 means per search: 0.5333, 0.5667, 0.6 -> mean 0.5667, sample standard deviation 0.0333.
    assert rnd["top3_mean"] == pytest.approx(0.5667, abs=1e-4) and rnd["top3_std"] == pytest.approx(0.0333, abs=1e-4)
    assert strategies["optuna"]["candidates"] == [2, 3]
    readme = _read(os.path.join(roots[0], "report", "README.md"))
    assert "| random | 3 | 3 | 0.7000 ± 0.0000 | 0.5667 ± 0.0333 |" in readme
    assert "| optuna | 2 | 2/3 |" in readme
    # The counts are history rows, one per mini-KD run: a repeated proposal adds none, and the report says so.
    assert "| strategy | searches | distinct candidates (mini-KD runs) each |" in readme
    assert "NAS distinct candidates (mini-KD runs): " in readme and "fewer distinct candidates than trials" in readme
