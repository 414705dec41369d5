"""Print the Markdown tables of docs/results.md from the study's workdirs (see docs/results_study.sh).

    python docs/results_tables.py /work/study

Each GLUE row is the report's own row (kdjax.report.build_rows: scores, latency recorded when the model was made or
scored, speed-up, KD loss) printed by the report's scores table (kdjax.report_tables.scores_table), so these tables
and W/report/README.md agree; files are found through kdjax.workdir.Workdir's layout. Prints what exists and lists
what is missing.
"""

from __future__ import annotations

import functools
import json
import os
import sys

from kdjax.report import build_rows
from kdjax.report_searches import load_histories
from kdjax.report_tables import scores_table
from kdjax.workdir import Workdir, read_json

TASKS = ("sst2", "cola", "stsb", "rte")


@functools.cache
def report_rows(workdir: str) -> dict[str, dict]:
    """model -> the report's row for it, as the workdir's own report would build it."""
    rows, _ = build_rows(workdir, None, load_histories(workdir, []))
    return {r["model"]: r for r in rows}


def glue_table(rows: list[tuple[str, str, str]], tasks=TASKS) -> str:
    """rows: (label, workdir, model folder); % of teacher is taken against the table's teacher row."""
    picked, missing = [], []
    for label, wd, model in rows:
        row = report_rows(wd).get(model)
        if row is None:
            missing.append(label)
        else:
            picked.append(dict(row, model=label))
    teacher = next((r for r in picked if r["kind"] == "teacher"), None)
    for r in picked:
        present = [r[t] for t in tasks if t in r]  # the average over this table's tasks only
        r["glue_avg"], r["num_tasks"] = (sum(present) / len(present) if present else None), len(present)
        common = [t for t in tasks if teacher and t in r and t in teacher]
        if teacher and common:
            mine, theirs = (sum(x[t] for t in common) / len(common) for x in (r, teacher))
            r["pct_teacher"] = 100 * mine / theirs if theirs > 0 else None
    lines = scores_table(picked, list(tasks)) if picked else []
    return "\n".join(lines + ([f"\nnot run: {', '.join(missing)}"] if missing else []))


def kd_losses(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| run | final KD loss | parts | KD wall | corpus tokens/s |", "|---|---|---|---|---|"]
    for label, wd, name in rows:
        kd = Workdir(wd, create=False).kd_dir(name)
        if not os.path.exists(os.path.join(kd, "result.json")):
            lines.append(f"| {label} | not run | | | |")
            continue
        d = read_json(os.path.join(kd, "result.json"))
        with open(os.path.join(kd, "metrics.jsonl")) as f:
            last = [json.loads(x) for x in f][-1]
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
    a1, a2, a3 = [r["arch_id"] for r in read_json(os.path.join(w, "nas", "top_k.json"))["top_k"][:3]]
    randoms = Workdir(w, create=False).random_names()
    print("## Table 2\n")
    rows = [("teacher all-MiniLM-L6-v2", w, "teacher")]
    rows += [(f"NAS #{i + 1} kd-{a}", w, f"kd-{a}") for i, a in enumerate((a1, a2, a3))]
    rows += [(r, w, r) for r in randoms]
    print(glue_table(rows))
    print("\n## Projection / PDT\n")
    rows = [
        ("teacher", w, "teacher"),
        (f"nas-{a1} (mini-KD 20 steps, random projection)", w_old, f"nas-{a1}"),
        (f"kd-{a1} (300 steps, random projection: seed)", w_old, f"kd-{a1}"),
        (f"kd-{a1} (300 steps, teacher projection)", w, f"kd-{a1}"),
    ]
    print(glue_table(rows))
    print("\n## Loss ablation\n")
    rows = [
        ("teacher", w, "teacher"),
        ("hidden MSE (seed loss)", w, f"kd-{a1}"),
        ("attention relations", os.path.join(root, "ablation-relation"), f"kd-{a1}"),
        ("both", os.path.join(root, "ablation-both"), f"kd-{a1}"),
        ("hidden MSE, 900 KD steps", os.path.join(root, "kd-long"), f"kd-{a1}"),
    ]
    print(glue_table(rows, tasks=("sst2", "stsb")))
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
