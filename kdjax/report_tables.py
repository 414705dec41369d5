"""The report's tables: Markdown (GLUE scores, PDT, fine-tuned only vs distilled, learning-rate grid, searches) and CSV.

Pure functions of the rows `kdjax.report.build_rows` makes and the search histories; nothing here reads the workdir.
"""

from __future__ import annotations

import csv

import numpy as np

from kdjax.report_searches import DISTINCT, finite_or_none, series_by_strategy

# The PDT table compares these two exports of one architecture (PDT continues the mini-KD student).
VARIANT_LABEL = {"nas": "without PDT (mini-KD export)", "pdt": "with PDT"}

# Short metric names for table headers.
SHORT = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "P", "spearman": "S"}


def _fmt(x, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}{suffix}"


def _task_header(task: str, rows: list[dict]) -> str:
    for r in rows:
        if f"{task}_metrics" in r:
            names = [SHORT.get(k.split("_")[-1], k) for k in r[f"{task}_metrics"]]
            if task == "mnli":
                return "mnli (m/mm)"
            return f"{task} ({'/'.join(names)})" if len(names) > 1 else f"{task} ({names[0]})"
    return task


def _task_cell(r: dict, task: str) -> str:
    m = r.get(f"{task}_metrics")
    return "-" if m is None else "/".join(f"{100 * v:.2f}" for v in m.values())


def _pdt_cell(before: float | None, after: float | None) -> str:
    delta = f" ({100 * (after - before):+.2f})" if before is not None and after is not None else ""
    return f"{_fmt(before, scale=100)} / {_fmt(after, scale=100)}{delta}"


def _torch_speedup_cell(r: dict) -> str:
    """The paired PyTorch speed-up, with the teacher's time in that pair: the teacher row's own time was taken at
    another moment, so the two ms columns need not give this ratio."""
    cell = _fmt(r.get("torch_speedup"), 1, 1, "x")
    if r["kind"] != "teacher" and r.get("torch_teacher_ms") and cell != "-":
        cell += f" (vs {r['torch_teacher_ms']:.2f})"
    return cell


def scores_table(rows: list[dict], tasks: list[str]) -> list[str]:
    """The GLUE dev scores table (Markdown lines, one row per model: latency, speed-ups, scores, average, KD loss)."""
    head = [
        "model",
        "params",
        "latency ms",
        "speed-up",
        "modelled speed-up",
        "torch ms",
        "torch speed-up",
        *[_task_header(t, rows) for t in tasks],
        "GLUE avg",
        "% of teacher",
        "KD loss",
        "reward",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        avg = _fmt(r["glue_avg"], scale=100) + ("" if r["num_tasks"] == len(tasks) else "*")
        cells = [
            r["model"],
            _fmt(r["params"], 1, 1e-6, "M"),
            _fmt(r["latency_ms"]),
            _fmt(r["speedup"], 1, 1, "x"),
            _fmt(r.get("speedup_model"), 1, 1, "x"),
            _fmt(r.get("torch_ms")),
            _torch_speedup_cell(r),
            *[_task_cell(r, t) for t in tasks],
            avg,
            _fmt(r["pct_teacher"], 1, 1, "%"),
            _fmt(r["kd_loss"], 4),
            _fmt(r["reward"], 4),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_tables(rows: list[dict], tasks: list[str]) -> str:
    """The scores table, the % of teacher table, and the with/without-PDT comparison."""
    if not rows:
        return "No GLUE results yet (run the glue stage).\n"
    out = ["### GLUE dev scores", "", *scores_table(rows, tasks), ""]
    out.append(
        "Scores x100 on the full dev sets; a task with two metrics shows both and counts their mean in the "
        "average (* = average over fewer tasks). Speed-up = teacher latency / model latency, both measured under "
        "XLA (batch and length as the search's protocol, low percentile of round-robin runs: see docs/performance.md); "
        "modelled speed-up = what the search reward read (the fitted latency model); torch ms = the exported model "
        "under PyTorch (`AutoModel`, batch 1, one thread, low percentile), shown when torch is installed; torch "
        "speed-up = teacher / model under PyTorch, both timed side by side in one session (alternating runs after "
        "both warmed up, same percentile), so load hits both alike, in brackets the teacher's ms in that pair (the "
        "teacher row's own torch ms was timed at another moment); `-` where the model's record holds no such pair "
        "(recorded by an older kdjax: the next pipeline run with the glue stage re-measures it)."
    )
    if any(r["kind"] == "teacher" for r in rows):
        out += [
            "",
            "### % of teacher (per task score / teacher's)",
            "",
            "| model | " + " | ".join(tasks) + " | GLUE avg |",
            "|" + "---|" * (len(tasks) + 2),
        ]
        for r in rows:
            cells = [_fmt(r.get(f"{t}_pct"), 1, 1, "%") for t in tasks]
            out.append(f"| {r['model']} | " + " | ".join(cells) + f" | {_fmt(r['pct_teacher'], 1, 1, '%')} |")
    groups: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["kind"] in VARIANT_LABEL and r.get("arch_id") and not r.get("twin"):
            groups.setdefault(r["arch_id"], {})[r["kind"]] = r
    pairs = {a: g for a, g in groups.items() if len(g) == len(VARIANT_LABEL)}
    if pairs:
        out += [
            "",
            "### Without vs with post-distillation training (PDT)",
            "",
            "Cells: " + " / ".join(VARIANT_LABEL.values()) + " (change). PDT continues the mini-KD student and its "
            "projection for kd.pdt_steps steps.",
            "",
            "| architecture | " + " | ".join(tasks) + " | GLUE avg |",
            "|" + "---|" * (len(tasks) + 2),
        ]
        for arch, g in pairs.items():
            cells = [_pdt_cell(g["nas"].get(t), g["pdt"].get(t)) for t in tasks]
            out.append(
                f"| {arch} | " + " | ".join(cells) + f" | {_pdt_cell(g['nas']['glue_avg'], g['pdt']['glue_avg'])} |"
            )
    return "\n".join(out + distill_table(rows, tasks) + grid_table(rows, tasks)) + "\n"


def distill_table(rows: list[dict], tasks: list[str]) -> list[str]:
    """Each task-distilled student beside its fine-tune-only twin (`<model>-ft`)."""
    by_name = {r["model"]: r for r in rows}
    pairs = [(by_name[r["twin"]], r) for r in rows if r.get("twin") in by_name]
    if not pairs:
        return []
    out = ["", "### Fine-tuned only vs task-distilled", "", "Cells: fine-tuned only / task-distilled (x100).", ""]
    out += ["| model | " + " | ".join(tasks) + " | GLUE avg |", "|" + "---|" * (len(tasks) + 2)]
    for td, ft in pairs:
        cells = [f"{_fmt(ft.get(t), scale=100)} / {_fmt(td.get(t), scale=100)}" for t in tasks]
        out.append(
            f"| {td['model']} | " + " | ".join(cells) + f" | {_fmt(ft['glue_avg'], scale=100)} / "
            f"{_fmt(td['glue_avg'], scale=100)} |"
        )
    return out


def grid_table(rows: list[dict], tasks: list[str]) -> list[str]:
    """The learning rate each (model, task) picked by dev score, and the dev score at every grid point."""
    if not any(r.get(f"{t}_grid") for r in rows for t in tasks):
        return []
    out = ["", "### Learning-rate grid (picked by dev score)", ""]
    out += ["Cells: picked lr (score ± spread over seeds, if several); the score at each lr of the grid.", ""]
    out += ["| model | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for r in rows:
        cells = []
        for t in tasks:
            grid = r.get(f"{t}_grid") or []
            if not grid:
                cells.append("-")
                continue
            std = r.get(f"{t}_std")
            spread = f" ± {100 * std:.2f}" if std is not None else ""
            points = ", ".join(f"{lr:g}: {_fmt(sc, scale=100)}" for lr, sc in grid)
            cells.append(f"**{r[f'{t}_lr']:g}**{spread}; {points}")
        out.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return out


def search_rows(history: list[dict]) -> list[dict]:
    """The search-strategies table: per search (strategy, workdir), its best candidate and the spread of its rewards."""
    out = []
    for series, cands in series_by_strategy(history).items():
        done = [c for c in cands if not c.get("pruned") and finite_or_none(c.get("reward")) is not None]
        if not done:
            continue
        best = max(done, key=lambda c: c["reward"])
        rewards = sorted((c["reward"] for c in done), reverse=True)
        out.append(
            {
                "search": series,
                "strategy": str(best.get("strategy", "unknown")),
                "candidates": len(cands),
                "best_arch": best["arch_id"],
                "best_params": best.get("params"),
                "best_loss": finite_or_none(best.get("loss")),
                "best_speedup": finite_or_none(best.get("speedup")),
                "best_reward": best["reward"],
                "top3_mean_reward": float(np.mean(rewards[:3])),
                "mean_reward": float(np.mean(rewards)),
            }
        )
    return sorted(out, key=lambda r: -r["best_reward"])


def search_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [
        "### Search strategies: the best candidate of each search and the spread of its rewards",
        "",
        f"| search | {DISTINCT} | best architecture | params | mini-KD loss | CPU speed-up | reward | top-3 mean"
        " | mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["search"],
            str(r["candidates"]),
            r["best_arch"],
            _fmt(r["best_params"], 1, 1e-6, "M"),
            _fmt(r["best_loss"], 4),
            _fmt(r["best_speedup"], 2, 1, "x"),
            _fmt(r["best_reward"], 4),
            _fmt(r["top3_mean_reward"], 4),
            _fmt(r["mean_reward"], 4),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def strategy_rows(searches: list[dict]) -> list[dict]:
    """Per strategy searched more than once (e.g. one sibling workdir per seed): mean and spread (sample standard
    deviation) over its searches of the best and the top-3 mean reward, from `search_rows`."""
    by: dict[str, list[dict]] = {}
    for r in searches:
        by.setdefault(r.get("strategy", "unknown"), []).append(r)
    out = []
    for strategy, rs in by.items():
        if len(rs) < 2:
            continue
        best = np.asarray([r["best_reward"] for r in rs], dtype=np.float64)
        top3 = np.asarray([r["top3_mean_reward"] for r in rs], dtype=np.float64)
        out.append(
            {
                "strategy": strategy,
                "searches": len(rs),
                "candidates": sorted({r["candidates"] for r in rs}),
                "best_mean": float(best.mean()),
                "best_std": float(best.std(ddof=1)),
                "top3_mean": float(top3.mean()),
                "top3_std": float(top3.std(ddof=1)),
            }
        )
    return sorted(out, key=lambda r: -r["best_mean"])


def strategy_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [
        "### Search strategies over repeated searches (mean ± standard deviation over the searches of a strategy)",
        "",
        f"| strategy | searches | {DISTINCT} each | best reward | top-3 mean reward |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cands = "/".join(str(c) for c in r["candidates"])
        best, top3 = f"{r['best_mean']:.4f} ± {r['best_std']:.4f}", f"{r['top3_mean']:.4f} ± {r['top3_std']:.4f}"
        lines.append(f"| {r['strategy']} | {r['searches']} | {cands} | {best} | {top3} |")
    return "\n".join(lines) + "\n"


def write_csv(path: str, rows: list[dict], tasks: list[str]) -> None:
    """glue.csv: the scores table's numbers, one row per model (an empty cell: none recorded)."""
    cols = [
        "model",
        "kind",
        "method",
        "arch_id",
        "params",
        "latency_ms",
        "speedup",
        "speedup_model",
        "torch_ms",
        "torch_speedup",
        # Not a Markdown column: the teacher's time from the session torch_speedup was timed in, for scripts.
        "torch_teacher_ms",
        "kd_loss",
        "reward",
        "glue_avg",
        "pct_teacher",
    ]
    metric_cols = []
    for t in tasks:
        names = next((list(r[f"{t}_metrics"]) for r in rows if f"{t}_metrics" in r), [])
        metric_cols += [(t, n) for n in names]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            cols + [f"{t}_{n}" for t, n in metric_cols] + [f"{t}_pct" for t in tasks] + [f"{t}_lr" for t in tasks]
        )
        for r in rows:
            w.writerow(
                [r.get(c) for c in cols]
                + [r.get(f"{t}_metrics", {}).get(n) for t, n in metric_cols]
                + [r.get(f"{t}_pct") for t in tasks]
                + [r.get(f"{t}_lr") for t in tasks]
            )
