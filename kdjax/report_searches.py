"""The search histories a report reads: this workdir's and its siblings' (`report.extra_workdirs`), on one reward scale.

Each row of a `nas/history.jsonl` gains `workdir` (absolute path of the workdir it came from) and `series` (the label of
its line in the figures and its row in the search table): the strategy alone for a report of one workdir, and
`<workdir>:<strategy>` as soon as siblings are overlaid, so every series says where it came from.

Each search computed its rewards with its own `nas.reward` settings (alpha, beta, hard budget); overlaying them as
recorded would rank an alpha=-1 search against an alpha=-0.07 one on different scales. So every candidate's reward is
recomputed from its recorded loss, latency and teacher latency with the reporting workdir's settings (the recorded
value stays in `reward_recorded`); a row that lacks those numbers keeps its recorded reward, and `notes` says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import numpy as np

from kdjax.reward import RewardConfig, reward
from kdjax.workdir import Workdir, read_json

log = logging.getLogger(__name__)

# What the report counts per search: history rows, one per distinct architecture trained by mini-KD. A strategy that
# proposes an architecture again (Optuna's TPE, the LSTM controller) reuses its recorded reward and writes no row, so
# a search of N trials can hold fewer rows; counted this way the x-axis of Fig. 2 is the search's cost.
DISTINCT = "distinct candidates (mini-KD runs)"
REPEATS = (
    "A search that proposes an architecture again reuses its reward without a new mini-KD or history row, so an "
    "Optuna or LSTM search can count fewer distinct candidates than trials."
)


def read_history(path: str, label: str | None = None) -> list[dict]:
    """Rows of a nas/history.jsonl; malformed lines are skipped with a warning. `label` prefixes the strategy."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                log.warning("%s:%d: not JSON, skipped", path, i)
                continue
            strategy = str(row.get("strategy", "unknown"))
            row["series"] = f"{label}:{strategy}" if label else strategy
            rows.append(row)
    return rows


def workdir_labels(root: str, extra_workdirs: list[str]) -> list[tuple[str, str | None]]:
    """(absolute workdir, series prefix) for the report's workdir and each sibling; no prefix for a lone workdir.

    The prefix is the folder's name, or the path as given when two folders share a name.
    """
    given = [root, *extra_workdirs]
    if len(given) == 1:
        return [(os.path.abspath(root), None)]
    names = [os.path.basename(os.path.abspath(w)) for w in given]
    return [
        (os.path.abspath(w), name if names.count(name) == 1 else os.path.normpath(w)) for w, name in zip(given, names)
    ]


def reward_settings(workdir: str) -> RewardConfig | None:
    """The `nas.reward` settings recorded in W/config.json by the workdir's last run (None if unknown)."""
    try:
        recorded = read_json(os.path.join(workdir, "config.json"))["nas"]["reward"]
        names = [f.name for f in dataclasses.fields(RewardConfig)]
        return RewardConfig(**{k: float(recorded[k]) for k in names if k in recorded})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_histories(root: str, extra_workdirs: list[str]) -> list[dict]:
    """This workdir's nas/history.jsonl (and nas/*/history.jsonl), plus those of the extra workdirs, labelled."""
    rows = []
    for wd, label in workdir_labels(root, list(extra_workdirs)):
        found = Workdir(wd, create=False).histories()
        if not found and wd != os.path.abspath(root):
            # Most likely a typo in report.extra_workdirs: say so rather than draw the figures without it.
            log.warning("report.extra_workdirs: %s has no nas/history.jsonl; it is left out of the figures", wd)
        for p in found:
            for row in read_history(p, label):
                row["workdir"] = wd
                rows.append(row)
    return rows


def finite_or_none(x) -> float | None:
    """`x` as a float when it is a finite number (history and result fields may be missing, null, NaN or text)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def series_by_strategy(history: list[dict]) -> dict[str, list[dict]]:
    """History rows grouped by their series label (`<workdir label>:<strategy>`), in evaluation order."""
    out: dict[str, list[dict]] = {}
    for row in history:
        out.setdefault(row["series"], []).append(row)
    return out


def _describe(cfg: RewardConfig | None) -> str:
    if cfg is None:
        return "unknown settings"
    text = f"alpha={cfg.alpha:g}, beta={cfg.beta:g}"
    return text + (f", latency_budget={cfg.latency_budget:g}" if cfg.latency_budget > 0 else "")


def one_reward_scale(rows: list[dict], root: str, cfg: RewardConfig | None = None) -> list[str]:
    """Recompute every row's reward with `cfg` (default: the report workdir's recorded settings); returns notes.

    No notes when every search already used `cfg`; otherwise one that names the scale and each search's own settings,
    and a warning naming the searches whose rewards could not be recomputed and may be on another scale.
    """
    cfg = cfg or reward_settings(root)
    workdirs = list(dict.fromkeys(r["workdir"] for r in rows))
    labels = {r["workdir"]: r["series"].rsplit(":", 1)[0] if ":" in r["series"] else "this workdir" for r in rows}
    searched = {wd: reward_settings(wd) for wd in workdirs}
    kept: set[str] = set()
    for r in rows:
        r["reward_recorded"] = r.get("reward")
        lat, t_lat = finite_or_none(r.get("latency_ms")), finite_or_none(r.get("teacher_latency_ms"))
        if cfg is None or not lat or not t_lat:
            kept.add(r["workdir"])
            continue
        loss = finite_or_none(r.get("loss"))
        r["reward"] = reward(math.nan if loss is None else loss, lat, t_lat, cfg)
    if cfg is None:
        # Nothing recomputed: fine only if every search is known to have used the same settings.
        if len(set(searched.values())) == 1 and None not in searched.values():
            return []
        off = list(workdirs)
    else:
        off = [wd for wd in workdirs if searched[wd] != cfg]
    if not off:
        return []
    notes = []
    if cfg is not None and any(wd not in kept for wd in workdirs):
        used = "; ".join(f"{labels[wd]}: {_describe(searched[wd])}" for wd in workdirs)
        notes.append(
            f"Rewards are recomputed on one scale ({_describe(cfg)}, the reporting workdir's nas.reward) from each "
            f"candidate's mini-KD loss and latencies; the searches themselves used: {used}."
        )
    mixed = [wd for wd in workdirs if wd in kept and wd in off]
    if mixed:
        which = "; ".join(f"{labels[wd]}: {_describe(searched[wd])}" for wd in mixed)
        notes.append(
            f"WARNING: rewards of {which} are as recorded, not recomputed (no latencies or settings to do it), so "
            "Fig. 2 and the search table may compare different reward scales."
        )
    return notes


def best_so_far_curves(history: list[dict]) -> dict[str, dict[str, list[float]]]:
    """strategy -> {series label: best reward so far after each candidate}, over rows with a finite reward."""
    out: dict[str, dict[str, list[float]]] = {}
    for series, rows in series_by_strategy(history).items():
        rewards = [float(r["reward"]) for r in rows if finite_or_none(r.get("reward")) is not None]
        if rewards:
            strategy = str(rows[0].get("strategy", "unknown"))
            out.setdefault(strategy, {})[series] = [max(rewards[: i + 1]) for i in range(len(rewards))]
    return out


def strategy_bands(history: list[dict]) -> dict[str, dict]:
    """Per strategy searched more than once (sibling workdirs, e.g. one per seed): the mean, min and max over its
    searches of the best reward so far, for candidate counts every search reached (an LSTM search that re-sampled an
    architecture has fewer rows, so the band stops at the shortest search rather than averaging fewer runs)."""
    bands = {}
    for strategy, curves in best_so_far_curves(history).items():
        if len(curves) < 2:
            continue
        n = min(len(c) for c in curves.values())
        table = np.asarray([c[:n] for c in curves.values()], dtype=np.float64)
        bands[strategy] = {
            "searches": len(curves),
            "mean": table.mean(axis=0).tolist(),
            "min": table.min(axis=0).tolist(),
            "max": table.max(axis=0).tolist(),
        }
    return bands
