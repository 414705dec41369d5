"""Print the Markdown tables of docs/results.md from the study's workdirs (see docs/results_study.sh).

    python docs/results_tables.py /work/study

Reads W/glue/<model>/<task>.json, W/kd/<name>/result.json, W/nas/history.jsonl and W/teacher/latency.json of the
workdirs named below; prints what exists and marks what is missing.
"""

from __future__ import annotations

import glob
import json
import os
import sys

TASKS = ("sst2", "cola", "stsb", "rte")
METRIC = {"sst2": "acc", "cola": "MCC", "stsb": "P/S", "rte": "acc"}


def load(path):
    with open(path) as f:
        return json.load(f)


def scores(workdir: str, model: str) -> dict:
    out = {}
    for f in glob.glob(os.path.join(workdir, "glue", model, "*.json")):
        d = load(f)
        out[d["task"]] = d
    return out


def task_value(d: dict) -> float:
    """The task's score as the report averages it (mean of the two metrics for STS-B)."""
    s = d["scores"]
    return sum(s.values()) / len(s)


def cell(d: dict | None) -> str:
    if d is None:
        return "-"
    s = d["scores"]
    if "pearson" in s:
        return f"{100 * s['pearson']:.1f}/{100 * s['spearman']:.1f}"
    return f"{100 * next(iter(s.values())):.1f}"


def history_latency(roots: list[str]) -> dict[str, dict]:
    out = {}
    for root in roots:
        for f in glob.glob(os.path.join(root, "nas", "history.jsonl")):
            for line in open(f):
                r = json.loads(line)
                out.setdefault(r["arch_id"], r)
    return out


def glue_table(rows: list[tuple[str, str, str]], roots: list[str], teacher_ms: float, tasks=TASKS) -> str:
    """rows: (label, workdir, model folder)."""
    hist = history_latency(roots)
    report_lat = {}
    for root in roots:
        p = os.path.join(root, "report", "glue.json")
        if os.path.exists(p):
            for r in load(p)["rows"]:
                report_lat.setdefault(r["model"], r.get("latency_ms"))
    teacher = None
    lines = [
        "| model | params | CPU latency | speed-up | "
        + " | ".join(f"{t} ({METRIC[t]})" for t in tasks)
        + " | avg | % of teacher |",
        "|" + "---|" * (len(tasks) + 6),
    ]
    for label, wd, model in rows:
        sc = scores(wd, model)
        if not sc:
            lines.append(f"| {label} | " + " | ".join(["not run"] * (len(tasks) + 5)) + " |")
            continue
        any_d = next(iter(sc.values()))
        arch = any_d.get("arch_id") or ""
        lat = teacher_ms if model == "teacher" else hist.get(arch, {}).get("latency_ms") or report_lat.get(model)
        vals = [task_value(sc[t]) for t in tasks if t in sc]
        avg = sum(vals) / len(vals) if len(vals) == len(tasks) else None
        if model == "teacher":
            teacher = avg
        pct = f"{100 * avg / teacher:.1f}%" if avg is not None and teacher else "-"
        speed = f"{lat:.2f} ms | {teacher_ms / lat:.2f}x" if lat else "- | -"
        avg_s = f"{100 * avg:.1f}" if avg is not None else "-"
        tasks_s = " | ".join(cell(sc.get(t)) for t in tasks)
        lines.append(f"| {label} | {any_d['params'] / 1e6:.1f}M | {speed} | {tasks_s} | {avg_s} | {pct} |")
    return "\n".join(lines)


def kd_losses(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| run | final KD loss | parts | KD wall | corpus tokens/s |", "|---|---|---|---|---|"]
    for label, wd, name in rows:
        p = os.path.join(wd, "kd", name, "result.json")
        if not os.path.exists(p):
            lines.append(f"| {label} | not run | | | |")
            continue
        d = load(p)
        last = [json.loads(x) for x in open(os.path.join(wd, "kd", name, "metrics.jsonl"))][-1]
        skip = ("step", "time", "lr", "grad_norm", "loss")
        parts = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in skip)
        lines.append(
            f"| {label} | {d['final_loss']:.4f} | {parts} | {d['wall_s']:.0f} s | {d['corpus_tokens_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "runs/study"
    # main/: KD + GLUE after the projection fix; search-random/: the winning search, whose kd-/nas- GLUE rows in
    # this session's study were made before the fix (random projection), shown as such when present.
    w_old, w = os.path.join(root, "search-random"), os.path.join(root, "main")
    t_ms = next(iter(load(os.path.join(w_old, "teacher", "latency.json")).values()))["latency_ms"]
    roots = [w, w_old, *(os.path.join(root, f"search-{s}") for s in ("lstm", "optuna"))]
    a1, a2, a3 = [r["arch_id"] for r in load(os.path.join(w, "nas", "top_k.json"))["top_k"][:3]]
    randoms = sorted(os.path.basename(p) for p in glob.glob(os.path.join(w, "glue", "random-*")))
    print("## Table 2\n")
    rows = [("teacher all-MiniLM-L6-v2", w, "teacher")]
    rows += [(f"NAS #{i + 1} kd-{a}", w, f"kd-{a}") for i, a in enumerate((a1, a2, a3))]
    rows += [(r, w, r) for r in randoms]
    print(glue_table(rows, roots, t_ms))
    print("\n## Projection / PDT\n")
    rows = [
        ("teacher", w, "teacher"),
        (f"nas-{a1} (mini-KD 20 steps, random projection)", w_old, f"nas-{a1}"),
        (f"kd-{a1} (300 steps, random projection: seed)", w_old, f"kd-{a1}"),
        (f"kd-{a1} (300 steps, teacher projection)", w, f"kd-{a1}"),
    ]
    print(glue_table(rows, roots, t_ms))
    print("\n## Loss ablation\n")
    rows = [
        ("teacher", w, "teacher"),
        ("hidden MSE (seed loss)", w, f"kd-{a1}"),
        ("attention relations", os.path.join(root, "ablation-relation"), f"kd-{a1}"),
        ("both", os.path.join(root, "ablation-both"), f"kd-{a1}"),
        ("hidden MSE, 900 KD steps", os.path.join(root, "kd-long"), f"kd-{a1}"),
    ]
    print(glue_table(rows, roots, t_ms, tasks=("sst2", "stsb")))
    print()
    print(
        kd_losses(
            [
                ("hidden MSE, random projection (seed)", w_old, a1),
                ("hidden MSE, teacher projection", w, a1),
                ("attention relations", os.path.join(root, "ablation-relation"), a1),
                ("both", os.path.join(root, "ablation-both"), a1),
                ("hidden MSE, teacher projection, 900 steps", os.path.join(root, "kd-long"), a1),
            ]
        )
    )


if __name__ == "__main__":
    main()
