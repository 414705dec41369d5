"""Which searched architectures to keep: top-k by reward at distinct latency budgets, or the Pareto front.

Rule for distinct budgets (winners are wanted "with different latency budgets", which needs a threshold): rank the
finished candidates by reward; take the best; then walk down the ranking and take a candidate only if its latency
differs from every one already taken by at least a factor `latency_gap` (default 1.25, i.e. at least 25% faster or
slower). If fewer than k candidates pass, the rest are filled by reward and marked `distinct_budget: false`.
"""

from __future__ import annotations

import math


def finished(rows: list[dict]) -> list[dict]:
    """One row per arch id, without pruned or diverged candidates, best reward first (ties by arch id)."""
    seen, out = set(), []
    for r in rows:
        if r["arch_id"] in seen or r.get("pruned") or r.get("diverged") or r.get("loss") is None:
            continue
        seen.add(r["arch_id"])
        out.append(r)
    return sorted(out, key=lambda r: (-r["reward"], r["arch_id"]))


def distinct_budgets(rows: list[dict], k: int, latency_gap: float) -> list[dict]:
    ranked = finished(rows)
    picked: list[dict] = []
    for r in ranked:
        if len(picked) == k:
            break
        if all(abs(math.log(r["latency_ms"] / p["latency_ms"])) >= math.log(latency_gap) for p in picked):
            picked.append(dict(r, distinct_budget=True))
    chosen = {p["arch_id"] for p in picked}
    for r in ranked:
        if len(picked) == k:
            break
        if r["arch_id"] not in chosen:
            picked.append(dict(r, distinct_budget=False))
    return picked


def pareto_front(rows: list[dict]) -> list[dict]:
    """Candidates no other candidate beats on both loss and latency (minimise both), best reward first."""
    ranked = finished(rows)

    def dominated(a: dict) -> bool:
        return any(
            b["loss"] <= a["loss"]
            and b["latency_ms"] <= a["latency_ms"]
            and (b["loss"] < a["loss"] or b["latency_ms"] < a["latency_ms"])
            for b in ranked
        )

    return [dict(r, pareto=True) for r in ranked if not dominated(r)]


def summary(row: dict) -> dict:
    keys = ("arch_id", "reward", "loss", "speedup", "params", "latency_ms", "hf", "distinct_budget", "pareto")
    return {k: row.get(k) for k in keys if k in row}


def table(rows: list[dict]) -> str:
    head = f"{'#':>2}  {'arch':<24} {'reward':>7} {'loss':>8} {'speedup':>7} {'params':>8} {'latency':>9}"
    lines = [head]
    for i, r in enumerate(rows):
        lines.append(
            f"{i + 1:>2}  {r['arch_id']:<24} {r['reward']:7.4f} {r['loss']:8.4f} {r['speedup']:6.2f}x "
            f"{r['params'] / 1e6:7.2f}M {r['latency_ms']:7.2f}ms"
        )
    return "\n".join(lines)
