"""Print the tables of docs/results.md's "Yardstick on the current recipe" from the workdirs that
docs/results_yardstick.sh writes (one per learning rate and budget: ROOT/lr<rate>[-n<N>][-e<E>]).

    python docs/yardstick_tables.py runs/yardstick

One row per (workdir, model, task): the head (glue.pooling), the budget actually run (training examples used /
available, epochs, steps), every grid point's dev score, the picked rate, the training loss per epoch, the wall
seconds the glue stage recorded, and the published anchor beside the teacher's rows (MiniLM 6L-384H GLUE dev;
STS-B: BERT-Small 4L-512H, test set, as MiniLM publishes none).
"""

from __future__ import annotations

import glob
import json
import os
import sys

from kdjax.classifier import recorded_recipe

# Published GLUE numbers for the teacher's size (x100): MiniLM 6L-384H dev; STS-B: BERT-Small 4L-512H (test Pearson).
ANCHOR = {
    "sst2": "91.5 (MiniLM 6L-384H dev)",
    "cola": "47.5 (MiniLM 6L-384H dev)",
    "rte": "68.8 (MiniLM 6L-384H dev)",
    "stsb": "78.8 (BERT-Small 4L-512H test; MiniLM: none)",
}
METRIC = {"sst2": "acc", "cola": "MCC", "stsb": "Pearson/Spearman", "rte": "acc"}


def fmt(scores: dict | None) -> str:
    if not scores:
        return "diverged"
    return "/".join(f"{100 * v:.1f}" for v in scores.values())


def rows(root: str):
    for path in sorted(glob.glob(os.path.join(root, "*", "glue", "*", "*.json"))):
        with open(path) as f:
            d = json.load(f)
        if "grid" not in d:
            continue
        yield os.path.relpath(path, root).split(os.sep)[0], os.path.basename(os.path.dirname(path)), d


def main(root: str) -> None:
    print(
        "| workdir | model | head | task (metric) | train examples | epochs | steps | grid: lr -> dev score | picked | "
        "train loss per epoch | wall s | published |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for wd, model, d in rows(root):
        # The head of rows written before glue.pooling existed is filled in by kdjax's own rule (the glue stage and
        # the report read it the same way), so this table cannot disagree with them.
        task, recipe = d["task"], recorded_recipe(d.get("recipe"))
        grid = ", ".join(f"{p['learning_rate']:g} -> {fmt(p.get('scores'))}" for p in d["grid"])
        used, avail = d["num_train_examples"], d.get("num_train_examples_available", d["num_train_examples"])
        head = recipe["pooling"]
        losses = ", ".join(f"{x:.3f}" for x in d.get("train_loss_per_epoch") or [])
        print(
            f"| {wd} | {model}{' (' + d['method'] + ')' if d.get('method') == 'distill' else ''} | {head} | "
            f"{task} ({METRIC.get(task, '')}) | {used:,} of {avail:,} | {recipe.get('num_epochs', '?')} | "
            f"{d['steps']} | {grid} | {d['picked_lr']:g}: **{fmt(d['scores'])}** | {losses} | {d['wall_s']:.0f} | "
            f"{ANCHOR.get(task, '-') if model == 'teacher' else '-'} |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/yardstick")
