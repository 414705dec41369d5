"""What the glue stage (kdjax.glue_stage) has left to do in a workdir, read without training or timing anything.

The pipeline asks it whether a finished glue stage must run again (`pending`: scores made from weights re-made since;
`unmeasured`: scored models without a current latency record), and the plan what the stage would skip (`scored`).
Each answers from the score and latency files the stage writes, judged the way the stage itself judges them.
"""

from __future__ import annotations

import contextlib
import io
import os

from kdjax import model_latency
from kdjax.context import RunContext
from kdjax.errors import KdjaxError
from kdjax.glue_models import ModelRef, resolve_models, row_names, teacher_ref
from kdjax.glue_runs import same_weights
from kdjax.glue_stage import Stage, result_path
from kdjax.workdir import read_json


def _refs(ctx: RunContext) -> list[ModelRef]:
    """The models of glue.models; none when they do not resolve, for the stage to report when it runs."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # what resolving skips, the stage itself says when it runs
            return resolve_models(ctx, list(ctx.settings.glue.models))
    except KdjaxError:
        return []


def pending(ctx: RunContext) -> list[str]:
    """Rows of glue.models whose scores were made from other weights than their folder holds now (a model re-made
    since, e.g. re-distilled with --config.force=true): a finished glue stage runs again for them (kdjax.pipeline)."""
    stale = []
    for ref in _refs(ctx):
        if ref.weights_file() is None:
            continue
        for name in row_names(ctx, ref):
            paths = [result_path(ctx, name, task) for task in ctx.settings.glue.tasks]
            if any(_stale(p, ref) for p in paths):
                stale.append(name)
    return stale


def unmeasured(ctx: RunContext) -> list[str]:
    """Scored rows of glue.models whose latency record is missing or not current (another protocol or machine, an
    older kdjax's record without the paired PyTorch timing): a finished glue stage runs again and only measures them."""
    tasks = ctx.settings.glue.tasks
    done = [r for r in _refs(ctx) if any(os.path.exists(result_path(ctx, r.name, t)) for t in tasks)]
    paths = {r.name: ctx.workdir.latency_path(r.kind, r.arch_id, r.name) for r in done}
    return [name for name, p in paths.items() if not model_latency.is_current(p, ctx.settings.nas.latency)]


def _stale(path: str, ref: ModelRef) -> bool:
    try:
        return os.path.exists(path) and not same_weights(path, read_json(path), ref)
    except ValueError:  # unreadable: the stage's is_current scores it again anyway
        return True


def scored(ctx: RunContext) -> set[tuple[str, str]]:
    """(row, task) pairs of glue.models, and the teacher's, that the stage would not score again now (the plan
    counts the rest, kdjax.glue_plan)."""
    refs = _refs(ctx)
    stage = Stage(ctx)
    tasks = ctx.settings.glue.tasks
    out = {("teacher", task) for task in tasks if stage.teacher_current(task)}
    for ref in refs:
        for name, method in stage.methods(ref):
            out |= {(name, task) for task in tasks if stage.is_scored(ref, task, name, method)}
    return out


def reusable(ctx: RunContext) -> dict[tuple[str, str], set[tuple[float, int]]]:
    """(row, task) -> the runs (learning rate, seed) of its score on disk that the stage would read rather than train
    (kdjax.glue_runs), for rows of glue.models and the teacher; the plan counts only the other runs."""
    stage = Stage(ctx)
    rows: list[tuple[ModelRef, str, dict | None]] = [(teacher_ref(ctx), "teacher", None)]
    rows += [(ref, name, method) for ref in _refs(ctx) if ref.kind != "teacher" for name, method in stage.methods(ref)]
    out: dict[tuple[str, str], set[tuple[float, int]]] = {}
    for task in ctx.settings.glue.tasks:
        for ref, name, method in rows:
            runs = stage.earlier(ref, task, name, method)
            if runs:
                out[(name, task)] = set(runs)
    return out
