"""The `report` stage: GLUE tables (JSON, CSV, Markdown) and figures (PNG) from whatever the earlier stages left.

Inputs, all optional: W/glue/<model>/<task>.json (scores), W/teacher/latency.json, W/nas/history.jsonl (one row per
candidate: strategy, arch_id, loss, latency_ms, speedup, reward), W/kd/<name>/result.json (KD losses), and the
histories of sibling workdirs named in report.extra_workdirs (labelled and put on one reward scale by
kdjax/report_searches.py). Outputs in W/report/: glue.json, glue.csv, glue.md, search.json (Table 1: best candidate
and rewards per search), README.md (tables + figures), fig_speedup_vs_glue.png, fig_best_reward.png,
fig_minikd_loss.png, fig_loss_vs_latency.png. A figure without data is left out and README.md says why.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from kdjax.glue_data import TASKS
from kdjax.latency import LatencyConfig
from kdjax.metrics import task_score
from kdjax.report_searches import load_histories, one_reward_scale
from kdjax.reward import RewardConfig
from kdjax.spec import ArchSpec
from kdjax.workdir import read_json, write_json

log = logging.getLogger(__name__)

# Order of rows: teacher, search results (mini-KD, full KD, PDT), random baselines, everything else.
KIND_ORDER = {"teacher": 0, "nas": 1, "kd": 2, "pdt": 3, "random": 4, "folder": 5, "hub": 6}
# The PDT table compares these two exports of one architecture (PDT continues the mini-KD student).
VARIANT_LABEL = {"nas": "without PDT (mini-KD export)", "pdt": "with PDT"}
# Short metric names for table headers.
SHORT = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "P", "spearman": "S"}
FIGURES = {
    "speedup": "fig_speedup_vs_glue.png",
    "reward": "fig_best_reward.png",
    "loss": "fig_minikd_loss.png",
    "loss_latency": "fig_loss_vs_latency.png",
}


def load_glue(root: str) -> dict[str, dict[str, dict]]:
    """model -> task -> result record, from W/glue/<model>/<task>.json."""
    out: dict[str, dict[str, dict]] = {}
    glue = os.path.join(root, "glue")
    if not os.path.isdir(glue):
        return out
    for model in sorted(os.listdir(glue)):
        for task in TASKS:
            path = os.path.join(glue, model, f"{task}.json")
            if os.path.exists(path):
                out.setdefault(model, {})[task] = read_json(path)
    return out


def teacher_latency(root: str, key: str | None) -> dict | None:
    """The teacher's measured latency entry: by its full key (teacher identity, protocol, machine) when known,
    else the only entry; never another teacher's (a workdir whose teacher changed holds several)."""
    path = os.path.join(root, "teacher", "latency.json")
    try:
        cache = read_json(path) if os.path.exists(path) else {}
    except ValueError:
        log.warning("%s is damaged; the teacher's latency is left out", path)
        return None
    entry = cache.get(key) if key else None
    if entry is None and not key and len(cache) == 1:
        entry = next(iter(cache.values()))
    return entry if isinstance(entry, dict) and _finite(entry.get("latency_ms")) else None


def teacher_latency_ms(root: str, key: str | None) -> float | None:
    entry = teacher_latency(root, key)
    return float(entry["latency_ms"]) if entry else None


def _finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def kd_loss(root: str, model: str, kind: str, arch_id: str | None, history: dict) -> float | None:
    """Final KD loss of a distilled model (mini-KD loss from the history for search winners)."""
    if kind == "nas":
        return _finite(history.get(arch_id, {}).get("loss"))
    folder = {"kd": arch_id, "pdt": f"{arch_id}-pdt", "random": model}.get(kind)
    path = os.path.join(root, "kd", folder or "", "result.json")
    if folder and os.path.exists(path):
        return _finite(read_json(path).get("final_loss"))
    return _finite(history.get(arch_id, {}).get("loss")) if arch_id else None


def build_rows(
    root: str,
    latency_key: str | None = None,
    history_rows: list[dict] | None = None,
    measure_latency: Callable[[ArchSpec], float] | None = None,
    measure_torch: Callable[[str], float | None] | None = None,
) -> tuple[list[dict], list[str]]:
    """One row per model: scores per task, GLUE average, % of teacher, params, latency, speed-up, KD loss, reward."""
    glue = load_glue(root)
    tasks = [t for t in TASKS if any(t in r for r in glue.values())]
    by_arch: dict[str, dict] = {}
    # Only this workdir's candidates: a sibling's search timed and rewarded the same architecture under its settings.
    own = os.path.abspath(root)
    for row in history_rows or []:
        if row.get("workdir", own) != own:
            continue
        arch = row.get("arch_id", "")
        best = by_arch.get(arch)
        if arch and (best is None or (_finite(row.get("reward")) or -1e9) > (_finite(best.get("reward")) or -1e9)):
            by_arch[arch] = row
    t_lat = teacher_latency_ms(root, latency_key)
    rows = []
    for model, results in glue.items():
        first = next(iter(results.values()))
        kind, arch_id = first.get("kind", "folder"), first.get("arch_id")
        row = {
            "model": model,
            "kind": kind,
            "arch_id": arch_id,
            "source": first.get("source"),
            "params": first.get("params"),
            "method": first.get("method", "finetune"),
            "twin": first.get("twin"),
        }
        for t in tasks:
            if t in results:
                row[t] = task_score(results[t]["scores"])
                row[f"{t}_metrics"] = results[t]["scores"]
                row[f"{t}_lr"] = results[t].get("picked_lr")
                row[f"{t}_grid"] = [(p["learning_rate"], p.get("score")) for p in results[t].get("grid", [])]
                row[f"{t}_std"] = results[t].get("score_std")
        present = [row[t] for t in tasks if t in row]
        row["glue_avg"] = float(np.mean(present)) if present else None
        row["num_tasks"] = len(present)
        lat, hist = None, by_arch.get(arch_id or "", {})
        # Modelled latencies (what the reward read) stay in their own column; this one is always a measurement.
        row["speedup_model"] = _finite(hist.get("speedup")) if hist.get("latency_source") == "model" else None
        if kind == "teacher":
            lat = t_lat
        elif _finite(hist.get("latency_ms")) and hist.get("latency_source", "measured") == "measured":
            lat = float(hist.get("measured_latency_ms") or hist["latency_ms"])
        elif measure_latency is not None and first.get("spec"):
            lat = measure_latency(ArchSpec.from_dict(first["spec"]))
        row["latency_ms"] = lat
        row["speedup"] = (t_lat / lat) if (lat and t_lat) else None
        row["torch_ms"] = measure_torch(first.get("source") or "") if measure_torch else None
        kd_name = first.get("twin") or model  # a fine-tune-only baseline shares its twin's distilled weights
        row["kd_loss"] = kd_loss(root, kd_name, kind, arch_id, by_arch) if kind != "teacher" else None
        row["reward"] = _finite(by_arch.get(arch_id or "", {}).get("reward")) if kind != "teacher" else None
        row["recipe"] = first.get("recipe")
        rows.append(row)
    rows.sort(key=lambda r: (KIND_ORDER.get(r["kind"], 9), r.get("arch_id") or "", r["model"]))
    teacher = next((r for r in rows if r["kind"] == "teacher"), None)
    t_torch = teacher.get("torch_ms") if teacher else None
    for r in rows:
        r["torch_speedup"] = t_torch / r["torch_ms"] if t_torch and r.get("torch_ms") else None
        r["pct_teacher"] = None
        if teacher is None:
            continue
        common = [t for t in tasks if t in r and t in teacher]
        for t in common:
            r[f"{t}_pct"] = 100 * r[t] / teacher[t] if teacher[t] > 0 else None
        if common:
            mine, theirs = np.mean([r[t] for t in common]), np.mean([teacher[t] for t in common])
            r["pct_teacher"] = float(100 * mine / theirs) if theirs > 0 else None
    return rows, tasks


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


def markdown_tables(rows: list[dict], tasks: list[str]) -> str:
    """The scores table, the % of teacher table, and the with/without-PDT comparison."""
    if not rows:
        return "No GLUE results yet (run the glue stage).\n"
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
            _fmt(r.get("torch_speedup"), 1, 1, "x"),
            *[_task_cell(r, t) for t in tasks],
            avg,
            _fmt(r["pct_teacher"], 1, 1, "%"),
            _fmt(r["kd_loss"], 4),
            _fmt(r["reward"], 4),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    out = ["### GLUE dev scores", "", *lines, ""]
    out.append(
        "Scores x100 on the full dev sets; a task with two metrics shows both and counts their mean in the "
        "average (* = average over fewer tasks). Speed-up = teacher latency / model latency, both measured under "
        "XLA (batch and length as the search's protocol, low percentile of round-robin runs: see docs/performance.md); "
        "modelled speed-up = what the search reward read (the fitted latency model); torch = the exported model "
        "under PyTorch (`AutoModel`, batch 1), shown when torch is installed."
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
    for series, cands in _series(history).items():
        done = [c for c in cands if not c.get("pruned") and _finite(c.get("reward")) is not None]
        if not done:
            continue
        best = max(done, key=lambda c: c["reward"])
        rewards = sorted((c["reward"] for c in done), reverse=True)
        out.append(
            {
                "search": series,
                "candidates": len(cands),
                "best_arch": best["arch_id"],
                "best_params": best.get("params"),
                "best_loss": _finite(best.get("loss")),
                "best_speedup": _finite(best.get("speedup")),
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
        "| search | candidates | best architecture | params | mini-KD loss | CPU speed-up | reward | top-3 mean"
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


def write_csv(path: str, rows: list[dict], tasks: list[str]) -> None:
    cols = [
        "model",
        "kind",
        "method",
        "arch_id",
        "params",
        "latency_ms",
        "speedup",
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


def _series(history: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in history:
        out.setdefault(row["series"], []).append(row)
    return out


def make_figures(out_dir: str, rows: list[dict], history: list[dict], teacher_ms: float | None) -> dict[str, str]:
    """Write the four figures that have data; returns figure key -> file name, or -> reason it is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}

    def save(fig, ax, key: str, xlabel: str, ylabel: str, title: str, legend: bool = True) -> None:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if legend:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, FIGURES[key]), dpi=120)
        plt.close(fig)
        made[key] = FIGURES[key]

    pts = [r for r in rows if r.get("speedup") and r.get("glue_avg") is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(7, 5))
        sizes = np.asarray([r.get("params") or 1e6 for r in pts], np.float64)
        sizes = 60 + 1500 * sizes / sizes.max()
        for r, s in zip(pts, sizes):
            ax.scatter(r["speedup"], 100 * r["glue_avg"], s=s, alpha=0.5, label=r["kind"])
            ax.annotate(r["model"], (r["speedup"], 100 * r["glue_avg"]), fontsize=7, ha="center", va="bottom")
        save(
            fig,
            ax,
            "speedup",
            "CPU speed-up over the teacher (x)",
            "average GLUE dev score",
            "Speed-up vs GLUE (bubble area ~ parameters)",
            legend=False,
        )
    else:
        made["speedup"] = "no model has both GLUE scores and a latency"
    series = _series([h for h in history if _finite(h.get("reward")) is not None])
    if series:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, rs in series.items():
            best = np.maximum.accumulate([float(r["reward"]) for r in rs])
            ax.plot(np.arange(1, len(best) + 1), best, marker=".", label=name)
        save(fig, ax, "reward", "candidates evaluated", "best reward so far", "Search progress by strategy")
    else:
        made["reward"] = "no NAS history (run the nas stage)"
    series = _series([h for h in history if _finite(h.get("loss")) is not None])
    if series:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, rs in series.items():
            ax.plot(np.arange(1, len(rs) + 1), [float(r["loss"]) for r in rs], marker="o", ms=3, lw=0.8, label=name)
        save(fig, ax, "loss", "candidate index", "mini-KD loss", "Mini-KD loss of each candidate")
    else:
        made["loss"] = "no NAS history (run the nas stage)"
    series = _series([h for h in history if _finite(h.get("loss")) is not None and _finite(h.get("latency_ms"))])
    if series:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, rs in series.items():
            ax.scatter(
                [float(r["latency_ms"]) for r in rs], [float(r["loss"]) for r in rs], s=18, alpha=0.7, label=name
            )
        if teacher_ms:
            ax.axvline(teacher_ms, color="gray", ls="--", lw=1, label="teacher latency")
        save(fig, ax, "loss_latency", "CPU latency (ms)", "mini-KD loss", "Loss vs latency of every candidate")
    else:
        made["loss_latency"] = "no NAS history with latencies (run the nas stage)"
    return made


def readme(
    rows: list[dict],
    tasks: list[str],
    figures: dict[str, str],
    history: list[dict],
    searches: list[dict],
    notes: tuple[str, ...] | list[str] = (),
) -> str:
    captions = {
        "speedup": "Fig. 1: CPU speed-up vs average GLUE score (bubble area ~ parameters)",
        "reward": "Fig. 2: best reward so far vs candidates evaluated, per strategy",
        "loss": "Fig. 3: mini-KD loss of each candidate, in evaluation order",
        "loss_latency": "Fig. 4: mini-KD loss vs CPU latency of every candidate",
    }
    if notes:
        captions["reward"] += " (reward scales: see the note under the search table)"
    out = ["# kdjax report", "", markdown_tables(rows, tasks)]
    if searches:
        out += [search_table(searches)]
    out += [*(f"{n}\n" for n in notes)]
    recipes = {json.dumps(r["recipe"], sort_keys=True) for r in rows if r.get("recipe")}
    if recipes:
        note = "one recipe for every row" if len(recipes) == 1 else "WARNING: rows use different recipes"
        out += [f"Fine-tuning recipe ({note}): `{sorted(recipes)[0]}`", ""]
    if history:
        counts = {k: len(v) for k, v in _series(history).items()}
        out += ["NAS candidates: " + ", ".join(f"{k}: {n}" for k, n in counts.items()), ""]
    out.append("## Figures\n")
    for key, cap in captions.items():
        f = figures.get(key, "")
        out += [f"![{cap}]({f})", "", f"*{cap}*", ""] if f.endswith(".png") else [f"*{cap}: not drawn, {f}.*", ""]
    return "\n".join(out)


def build_report(
    root: str,
    *,
    latency_cfg: LatencyConfig | None = None,
    extra_workdirs: Sequence[str] = (),
    measure_missing: bool = True,
    reward_cfg: RewardConfig | None = None,
    teacher_key: str | None = None,
) -> dict:
    """Write every report file for workdir `root`; works with any subset of the inputs.

    Rewards of every search are put on `reward_cfg`'s scale (default: the settings recorded in W/config.json).
    """
    from kdjax.latency import LatencyCache

    out_dir = os.path.join(root, "report")
    os.makedirs(out_dir, exist_ok=True)
    cfg = latency_cfg or LatencyConfig()
    # Models the search never timed (teacher-relative baselines, hub checkpoints) are measured once and cached here.
    cache = LatencyCache(cfg)

    def measure_latency(spec: ArchSpec) -> float:
        return float(cache.measure(spec)[0]["latency_ms"])

    def measure_torch(folder: str) -> float | None:
        from kdjax.torch_latency import measure_folder

        res = measure_folder(folder, cfg, cache.machine)
        return float(res["latency_ms"]) if res else None

    history = load_histories(root, list(extra_workdirs))
    notes = one_reward_scale(history, root, reward_cfg)
    rows, tasks = build_rows(
        root,
        teacher_key,
        history,
        measure_latency if measure_missing else None,
        measure_torch if measure_missing else None,
    )
    t_ms = teacher_latency_ms(root, teacher_key)
    write_json(os.path.join(out_dir, "glue.json"), {"tasks": tasks, "teacher_latency_ms": t_ms, "rows": rows})
    searches = search_rows(history)
    write_json(os.path.join(out_dir, "search.json"), {"searches": searches, "notes": notes})
    write_csv(os.path.join(out_dir, "glue.csv"), rows, tasks)
    with open(os.path.join(out_dir, "glue.md"), "w") as f:
        f.write(markdown_tables(rows, tasks))
    figures = make_figures(out_dir, rows, history, t_ms)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(readme(rows, tasks, figures, history, searches, notes))
    drawn = sorted(v for v in figures.values() if v.endswith(".png"))
    return {"rows": len(rows), "tasks": tasks, "figures": drawn, "candidates": len(history)}


def run(ctx) -> dict:
    """Stage entry point."""
    from kdjax.config import split_list

    extra = split_list(ctx.config.report.extra_workdirs) if "report" in ctx.config else []
    t_key = ctx.teacher_latency()["key"]  # measured now if this workdir's teacher (or protocol) is new
    info = build_report(
        ctx.workdir.root,
        latency_cfg=ctx.latency_cfg,
        extra_workdirs=extra,
        reward_cfg=RewardConfig.from_config(ctx.config.nas.reward),
        teacher_key=t_key,
    )
    print(
        f"report: {info['rows']} model(s) x {len(info['tasks'])} task(s), {len(info['figures'])} figure(s) in "
        f"{ctx.workdir.path('report')}"
    )
    return info
