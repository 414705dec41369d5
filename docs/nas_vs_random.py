"""Tables, JSON and a figure for docs/nas_vs_random.sh: does NAS beat random search, and from which budget?

    python docs/nas_vs_random.py ROOT [--budgets 10,20,30,60] [--figure ROOT/best_reward.png]

Reads ROOT/s<seed>-<strategy>/nas/history.jsonl (one search per strategy and seed) and ROOT/noise-s<seed> (one
architecture, one mini-KD per seed). Rewards are compared within a seed (every strategy of a seed distils on the same
proxy rows); across seeds the table gives mean and spread. Prints JSON; `--markdown` prints the table instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics

STRATEGIES = ("random", "optuna", "lstm")


def rewards(workdir: str) -> list[float]:
    """Rewards in evaluation order, one per mini-KD run. Optuna and the LSTM controller may propose an architecture
    twice; the second proposal reuses the first reward and writes no row, so a finished search can hold fewer rows
    than trials: the budget counted here is mini-KD runs, the cost that matters, as in the report's Fig. 2."""
    path = os.path.join(workdir, "nas", "history.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [float(r["reward"]) for r in rows if r.get("reward") is not None]


def best_so_far(values: list[float]) -> list[float]:
    out, best = [], float("-inf")
    for v in values:
        best = max(best, v)
        out.append(best)
    return out


def top3(values: list[float]) -> float | None:
    top = sorted(values, reverse=True)[:3]
    return statistics.fmean(top) if len(top) == 3 else None


def spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def collect(root: str, budgets: list[int]) -> dict:
    runs: dict[str, dict[int, list[float]]] = {s: {} for s in STRATEGIES}
    finished: dict[str, set[int]] = {s: set() for s in STRATEGIES}
    noise: list[float] = []
    for name in sorted(os.listdir(root)):
        m = re.fullmatch(r"s(\d+)-(\w+)", name)
        if m and m.group(2) in runs:
            runs[m.group(2)][int(m.group(1))] = rewards(os.path.join(root, name))
            if os.path.isfile(os.path.join(root, name, "nas", "top_k.json")):
                finished[m.group(2)].add(int(m.group(1)))
        m = re.fullmatch(r"noise-s(\d+)", name)
        if m:
            noise += rewards(os.path.join(root, name))[:1]
    out: dict = {"noise": {**spread(noise), "rewards": noise}, "strategies": {}}
    for s, by_seed in runs.items():
        per_budget = {}
        for b in budgets:
            seen = {seed: r[:b] for seed, r in by_seed.items() if len(r) >= b or seed in finished[s]}
            per_budget[b] = {
                "best": spread([max(r) for r in seen.values()]),
                "top3": spread([top3(r) for r in seen.values()]),
            }
        out["strategies"][s] = {
            "candidates": {seed: len(r) for seed, r in by_seed.items()},
            "by_budget": per_budget,
            "curves": {seed: best_so_far(r) for seed, r in by_seed.items()},
        }
    # Within each seed, the budget from which a NAS strategy's best-so-far stays above random's by more than the
    # reward's own noise (one standard deviation of the same architecture over seeds).
    margin = out["noise"]["std"] or 0.0
    for s in ("optuna", "lstm"):
        ahead = {}
        for seed, curve in out["strategies"][s]["curves"].items():
            ref = out["strategies"]["random"]["curves"].get(seed)
            if not ref:
                continue
            n = min(len(curve), len(ref))
            above = [curve[i] > ref[i] + margin for i in range(n)]
            ahead[seed] = next((i + 1 for i in range(n) if all(above[i:])), None)
        out["strategies"][s]["pulls_ahead_at"] = ahead
    return out


def markdown(result: dict, budgets: list[int]) -> str:
    def fmt(d: dict) -> str:
        return "-" if d["mean"] is None else f"{d['mean']:.4f} ± {d['std']:.4f} (n={d['n']})"

    noise = result["noise"]
    lines = [
        f"Reward noise (one architecture, one mini-KD per seed): {fmt(noise)}",
        "",
        "| strategy | "
        + " | ".join(f"best @{b}" for b in budgets)
        + f" | top-3 mean @{budgets[-1]} | pulls ahead at |",
        "|---|" + "---|" * (len(budgets) + 2),
    ]
    for s, r in result["strategies"].items():
        cells = [fmt(r["by_budget"][b]["best"]) for b in budgets]
        ahead = r.get("pulls_ahead_at")
        ahead_txt = "-" if ahead is None else ", ".join(f"seed {k}: {v or 'never'}" for k, v in sorted(ahead.items()))
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {fmt(r['by_budget'][budgets[-1]]['top3'])} | {ahead_txt} |")
    return "\n".join(lines)


def figure(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s, r in result["strategies"].items():
        curves = [c for c in r["curves"].values() if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
        lo = [min(c[i] for c in curves) for i in range(n)]
        hi = [max(c[i] for c in curves) for i in range(n)]
        x = list(range(1, n + 1))
        ax.plot(x, mean, label=f"{s} ({len(curves)} seeds)")
        ax.fill_between(x, lo, hi, alpha=0.2)
    ax.set_xlabel("distinct candidates (mini-KD runs)")
    ax.set_ylabel("best reward so far (mean; band = min..max over seeds)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--budgets", default="10,20,30,60")
    ap.add_argument("--figure", default=None, help="PNG path (default ROOT/best_reward.png)")
    ap.add_argument("--markdown", action="store_true", help="print the table instead of JSON")
    a = ap.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    result = collect(a.root, budgets)
    figure(result, a.figure or os.path.join(a.root, "best_reward.png"))
    print(markdown(result, budgets) if a.markdown else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
