"""The `report` stage: GLUE tables (JSON, CSV, Markdown) and figures (PNG) from whatever the earlier stages left.

Inputs, all optional, found through kdjax.workdir.Workdir's layout: W/glue/<model>/<task>.json (scores),
W/teacher/latency.json, each model's latency record (W/kd/<name>/latency.json for what the kd stage distilled,
W/glue/<model>/latency.json for the rest: measured once when the model was made or scored, kdjax.model_latency),
W/nas/history.jsonl (one row per candidate: strategy, arch_id, loss, latency_ms, speedup, reward),
W/kd/<name>/result.json (KD losses), and the histories of sibling workdirs named in report.extra_workdirs (labelled
and put on one reward scale by kdjax/report_searches.py). The report only reads: it compiles and times nothing.
Outputs in W/report/: glue.json, glue.csv, glue.md, search.json (Table 1: best candidate
and rewards per search), README.md (tables + figures), fig_speedup_vs_glue.png, fig_best_reward.png,
fig_minikd_loss.png, fig_loss_vs_latency.png. A figure without data is left out and README.md says why.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from kdjax import embedding_probe, model_latency
from kdjax.classifier import BI_ENCODER, DESCRIPTIONS, recorded_recipe
from kdjax.finetune import recipe_identity
from kdjax.glue_data import TASKS
from kdjax.metrics import task_score
from kdjax.report_searches import (
    DISTINCT,
    REPEATS,
    best_so_far_curves,
    finite_or_none,
    load_histories,
    one_reward_scale,
    series_by_strategy,
    strategy_bands,
)
from kdjax.report_tables import markdown_tables, search_rows, search_table, strategy_rows, strategy_table, write_csv
from kdjax.reward import RewardConfig
from kdjax.workdir import Workdir, read_json, write_json

log = logging.getLogger(__name__)

# Order of rows: teacher, search results (mini-KD, full KD, PDT), random baselines, everything else.
KIND_ORDER = {"teacher": 0, "nas": 1, "kd": 2, "pdt": 3, "random": 4, "folder": 5, "hub": 6}
FIGURES = {
    "speedup": "fig_speedup_vs_glue.png",
    "reward": "fig_best_reward.png",
    "loss": "fig_minikd_loss.png",
    "loss_latency": "fig_loss_vs_latency.png",
}


# What the report reads from its workdir (relative globs): a finished report is made again when one is newer.
INPUTS = ("glue/*/*.json", "kd/*/result.json", "kd/*/latency.json", "teacher/latency.json", "nas/**/history.jsonl")


def newer_inputs(root: str, since: float) -> list[str]:
    """The report's input files in `root` written after `since` (a time stamp), relative to `root`."""
    paths = {p for pattern in INPUTS for p in glob.glob(os.path.join(root, pattern), recursive=True)}
    return sorted(os.path.relpath(p, root) for p in paths if os.path.getmtime(p) > since)


def load_glue(root: str) -> dict[str, dict[str, dict]]:
    """model -> task -> result record, from W/glue/<model>/<task>.json."""
    out: dict[str, dict[str, dict]] = {}
    wd = Workdir(root, create=False)
    for model in wd.glue_models():
        for task in TASKS:
            path = wd.glue_result(model, task)
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
    return entry if isinstance(entry, dict) and finite_or_none(entry.get("latency_ms")) else None


def teacher_latency_ms(root: str, key: str | None) -> float | None:
    entry = teacher_latency(root, key)
    return float(entry["latency_ms"]) if entry else None


def kd_loss(root: str, model: str, kind: str, arch_id: str | None, history: dict) -> float | None:
    """Final KD loss of a distilled model (mini-KD loss from the history for search winners)."""
    if kind == "nas":
        return finite_or_none(history.get(arch_id, {}).get("loss"))
    folder = Workdir(root, create=False).model_dir(kind, arch_id, model)
    path = os.path.join(folder or "", "result.json")
    if folder and os.path.exists(path):
        return finite_or_none(read_json(path).get("final_loss"))
    return finite_or_none(history.get(arch_id, {}).get("loss")) if arch_id else None


def recorded_latency(root: str, kind: str, arch_id: str | None, model: str) -> dict:
    """The latency record of a row's model (kdjax.model_latency; {} when none was recorded)."""
    return model_latency.read(Workdir(root, create=False).latency_path(kind, arch_id, model)) or {}


def build_rows(
    root: str,
    latency_key: str | None = None,
    history_rows: list[dict] | None = None,
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
        if arch and (
            best is None or (finite_or_none(row.get("reward")) or -1e9) > (finite_or_none(best.get("reward")) or -1e9)
        ):
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
        hist = by_arch.get(arch_id or "", {})
        kd_name = first.get("twin") or model  # a fine-tune-only baseline shares its twin's distilled weights
        recorded = recorded_latency(root, kind, arch_id, kd_name)
        # Modelled latencies (what the reward read) stay in their own column; this one is always a measurement.
        row["speedup_model"] = finite_or_none(hist.get("speedup")) if hist.get("latency_source") == "model" else None
        if kind == "teacher":
            lat = t_lat
        elif finite_or_none(hist.get("latency_ms")) and hist.get("latency_source", "measured") == "measured":
            lat = float(hist.get("measured_latency_ms") or hist["latency_ms"])
        else:
            lat = finite_or_none(recorded.get("latency_ms"))
        row["latency_ms"] = lat
        row["speedup"] = (t_lat / lat) if (lat and t_lat) else None
        row["torch_ms"] = finite_or_none(recorded.get("torch_ms"))
        # The ratio recorded with the model, teacher and model timed side by side in one session; never the teacher
        # row's time over this one, which were taken at different moments (the same pair gave 4.0x and 2.9x). A
        # record made before pairs were recorded leaves it out ('-') until the glue stage runs again.
        pair = recorded.get("torch_pair")
        pair = pair if isinstance(pair, dict) else {}
        if kind == "teacher":
            row["torch_speedup"] = 1.0 if row["torch_ms"] else None
        else:
            row["torch_speedup"] = finite_or_none(recorded.get("torch_speedup")) if pair else None
        teacher_run = pair.get("teacher")
        row["torch_teacher_ms"] = (
            finite_or_none(teacher_run.get("latency_ms")) if isinstance(teacher_run, dict) else None
        )
        row["kd_loss"] = kd_loss(root, kd_name, kind, arch_id, by_arch) if kind != "teacher" else None
        row["reward"] = finite_or_none(by_arch.get(arch_id or "", {}).get("reward")) if kind != "teacher" else None
        row["recipe"] = first.get("recipe")
        # Pair encoding is chosen per task (glue.bi_encoder_tasks): the report compares the rest (shared_recipe).
        row["bi_encoded"] = [
            t for t in tasks if t in results and recorded_recipe(results[t].get("recipe"))["pair_encoding"] == "bi"
        ]
        rows.append(row)
    rows.sort(key=lambda r: (KIND_ORDER.get(r["kind"], 9), r.get("arch_id") or "", r["model"]))
    teacher = next((r for r in rows if r["kind"] == "teacher"), None)
    for r in rows:
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
    curves, bands = best_so_far_curves(history), strategy_bands(history)
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for strategy, by_series in curves.items():
            if strategy in bands:
                # Repeated searches of one strategy (sibling workdirs, e.g. seeds): their mean and min-max band.
                b = bands[strategy]
                x = np.arange(1, len(b["mean"]) + 1)
                (line,) = ax.plot(x, b["mean"], label=f"{strategy} (mean of {b['searches']} searches)")
                ax.fill_between(x, b["min"], b["max"], color=line.get_color(), alpha=0.2)
                continue
            for name, best in by_series.items():
                ax.plot(np.arange(1, len(best) + 1), best, marker=".", label=name)
        save(fig, ax, "reward", DISTINCT, "best reward so far", "Search progress by strategy")
    else:
        made["reward"] = "no NAS history (run the nas stage)"
    series = series_by_strategy([h for h in history if finite_or_none(h.get("loss")) is not None])
    if series:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, rs in series.items():
            ax.plot(np.arange(1, len(rs) + 1), [float(r["loss"]) for r in rs], marker="o", ms=3, lw=0.8, label=name)
        save(fig, ax, "loss", "candidate index", "mini-KD loss", "Mini-KD loss of each candidate")
    else:
        made["loss"] = "no NAS history (run the nas stage)"
    series = series_by_strategy(
        [h for h in history if finite_or_none(h.get("loss")) is not None and finite_or_none(h.get("latency_ms"))]
    )
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
    zero_shot: str = "",
) -> str:
    captions = {
        "speedup": "Fig. 1: CPU speed-up vs average GLUE score (bubble area ~ parameters)",
        "reward": f"Fig. 2: best reward so far vs {DISTINCT}, per strategy (a strategy searched in several "
        "workdirs: mean line, min-max band)",
        "loss": "Fig. 3: mini-KD loss of each candidate, in evaluation order",
        "loss_latency": "Fig. 4: mini-KD loss vs CPU latency of every candidate",
    }
    if notes:
        captions["reward"] += " (reward scales: see the note under the search table)"
    out = ["# kdjax report", "", markdown_tables(rows, tasks)]
    if zero_shot:
        out.append(zero_shot)
    if searches:
        out += [search_table(searches), strategy_table(strategy_rows(searches))]
    out += [*(f"{n}\n" for n in notes)]
    recipes = {json.dumps(shared_recipe(r["recipe"]), sort_keys=True) for r in rows if r.get("recipe")}
    if recipes:
        note = "one recipe for every row" if len(recipes) == 1 else "WARNING: rows use different recipes"
        out += [f"Fine-tuning recipe ({note}; head: {_heads(rows)}): `{sorted(recipes)[0]}`", ""]
    bi = {tuple(r.get("bi_encoded") or ()) for r in rows if r.get("recipe")}
    if bi != {()}:
        same = "" if len(bi) == 1 else "WARNING: rows bi-encode different tasks; "
        shown = ", ".join(sorted({t for b in bi for t in b}))
        out += [f"Bi-encoded ({same}glue.bi_encoder_tasks): {shown}: {BI_ENCODER}.", ""]
    if history:
        counts = {k: len(v) for k, v in series_by_strategy(history).items()}
        out += [f"NAS {DISTINCT}: " + ", ".join(f"{k}: {n}" for k, n in counts.items()) + f". {REPEATS}", ""]
    out.append("## Figures\n")
    for key, cap in captions.items():
        f = figures.get(key, "")
        out += [f"![{cap}]({f})", "", f"*{cap}*", ""] if f.endswith(".png") else [f"*{cap}: not drawn, {f}.*", ""]
    return "\n".join(out)


def shared_recipe(recipe: dict) -> dict:
    """A row's recipe as every task trained it: without the pair encoding, which is chosen per task, and the fields
    that change speed only (kdjax.finetune.SPEED_ONLY)."""
    return {k: v for k, v in recipe_identity(recorded_recipe(recipe)).items() if k != "pair_encoding"}


def _heads(rows: list[dict]) -> str:
    """The classifier head(s) the rows trained, as kdjax.classifier names them (rows older than glue.pooling:
    pooler)."""
    names = sorted({recorded_recipe(r["recipe"])["pooling"] for r in rows if r.get("recipe")})
    return "; ".join(f"{n} = {DESCRIPTIONS.get(n, n)}" for n in names)


def build_report(
    root: str,
    *,
    extra_workdirs: Sequence[str] = (),
    reward_cfg: RewardConfig | None = None,
    teacher_key: str | None = None,
) -> dict:
    """Write every report file for workdir `root`; works with any subset of the inputs.

    Rewards of every search are put on `reward_cfg`'s scale (default: the settings recorded in W/config.json).
    `teacher_key` picks this teacher's entry of W/teacher/latency.json (kdjax.search_latency.teacher_key).
    """
    out_dir = os.path.join(root, "report")
    os.makedirs(out_dir, exist_ok=True)
    history = load_histories(root, list(extra_workdirs))
    notes = one_reward_scale(history, root, reward_cfg)
    rows, tasks = build_rows(root, teacher_key, history)
    t_ms = teacher_latency_ms(root, teacher_key)
    probes = embedding_probe.load_records(root)
    write_json(
        os.path.join(out_dir, "glue.json"),
        {"tasks": tasks, "teacher_latency_ms": t_ms, "rows": rows, "stsb_zero_shot": probes},
    )
    searches = search_rows(history)
    write_json(
        os.path.join(out_dir, "search.json"),
        {"searches": searches, "strategies": strategy_rows(searches), "notes": notes},
    )
    write_csv(os.path.join(out_dir, "glue.csv"), rows, tasks)
    with open(os.path.join(out_dir, "glue.md"), "w") as f:
        f.write(markdown_tables(rows, tasks))
    figures = make_figures(out_dir, rows, history, t_ms)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(readme(rows, tasks, figures, history, searches, notes, embedding_probe.table(probes)))
    drawn = sorted(v for v in figures.values() if v.endswith(".png"))
    return {"rows": len(rows), "tasks": tasks, "figures": drawn, "candidates": len(history)}


def run(ctx) -> dict:
    """Stage entry point."""
    from kdjax.latency import MachineCache
    from kdjax.search_latency import teacher_key

    s = ctx.settings
    # Which entry of teacher/latency.json is this teacher's under this protocol on this machine (none is timed here).
    t_key = teacher_key(ctx.teacher_identity, s.nas.latency, MachineCache(s.nas.latency))
    info = build_report(
        ctx.workdir.root,
        extra_workdirs=list(s.report.extra_workdirs),
        reward_cfg=s.nas.reward,
        teacher_key=t_key,
    )
    print(
        f"report: {info['rows']} model(s) x {len(info['tasks'])} task(s), {len(info['figures'])} figure(s) in "
        f"{ctx.workdir.path('report')}"
    )
    return info
