"""Which searched architectures to keep: top-k by reward at distinct latency budgets, or the Pareto front.

Rule for distinct budgets (winners are wanted "with different latency budgets", which needs a threshold): rank the
finished candidates by reward; take the best; then walk down the ranking and take a candidate only if its latency
differs from every one already taken by at least a factor `latency_gap` (default 1.25, i.e. at least 25% faster or
slower). If fewer than k candidates pass, the rest are filled by reward and marked `distinct_budget: false`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import TYPE_CHECKING

from kdjax.errors import KdjaxError

if TYPE_CHECKING:
    from kdjax.config.settings import NasSettings

log = logging.getLogger(__name__)


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


def choose(rows: list[dict], nas: NasSettings) -> list[dict]:
    """The configured selection: the Pareto front for multi-objective Optuna, else top-k at distinct budgets."""
    if nas.strategy == "optuna" and nas.multi_objective:
        chosen = pareto_front(rows)
    else:
        chosen = distinct_budgets(rows, nas.top_k, nas.top_k_latency_gap)
    for r in chosen:
        if r.get("hf") and not os.path.isdir(r["hf"]):
            r["hf"] = None  # export removed by an earlier run's top-k cleanup
    return chosen


def write_top_k(nas_dir: str, strategy: str, chosen: list[dict]) -> None:
    from kdjax.workdir import write_json

    write_json(os.path.join(nas_dir, "top_k.json"), {"strategy": strategy, "top_k": [summary(r) for r in chosen]})


def read_top_k(nas_dir: str, nas: NasSettings) -> list[dict]:
    """The entries of `nas_dir/top_k.json` ([] when there is none); a damaged file is rebuilt from history.jsonl.

    The file is only a summary of history.jsonl, so it is rebuilt with a warning; when the history has no finished
    candidate either, the run stops with one line saying how to get a new one.
    """
    path = os.path.join(nas_dir, "top_k.json")
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            entries = json.load(f)["top_k"]
        if not isinstance(entries, list) or not all(isinstance(e["arch_id"], str) for e in entries):
            raise ValueError("top_k is not a list of entries with an arch_id")
        return entries
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]
    from kdjax.nas.history import History

    history = History(os.path.join(nas_dir, "history.jsonl"))
    chosen = choose(history.rows, nas)
    if not chosen:
        raise KdjaxError(
            f"{path} is damaged ({reason}) and {history.path} has no finished candidate to rebuild it from; re-run "
            "the search (--config.stages=nas --config.force=true) or delete the file to distil config.kd.arch"
        )
    log.warning("%s was damaged (%s); rebuilt it from %s", path, reason, history.path)
    write_top_k(nas_dir, nas.strategy, chosen)
    return [summary(r) for r in chosen]
