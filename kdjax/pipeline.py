"""Run the configured stages in order under the workdir's lock; a finished stage is skipped unless `config.force`."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import ml_collections

from kdjax import kd_stage, plan
from kdjax.config import check_data, validate
from kdjax.config.settings import Settings, glue_settings
from kdjax.context import RunContext
from kdjax.errors import KdjaxError
from kdjax.interrupts import Interrupted, disk_error, disk_error_message, interrupted_message, signals_as_interrupts
from kdjax.workdir import Workdir, WorkdirLock, read_json, write_json

log = logging.getLogger(__name__)


def _teacher_stage(ctx: RunContext) -> dict:
    t = ctx.teacher
    lat = ctx.teacher_latency()
    info = {
        "source": t.source,
        "spec": t.spec.to_dict(),
        "params": t.spec.num_params,
        "has_mlm_head": t.has_mlm_head,
        "latency": {ctx.settings.nas.latency.key: lat},
        "devices": ctx.devices_summary(),
    }
    write_json(ctx.workdir.path("teacher", "info.json"), info)
    print(
        f"teacher: {t.source} {t.spec.arch_id} ({t.spec.num_params / 1e6:.1f}M params), "
        f"{lat['latency_ms']:.2f} ms ({ctx.settings.nas.latency.key})"
    )
    return {"params": t.spec.num_params}


def _nas_stage(ctx: RunContext) -> dict:
    from kdjax.nas import stage

    return stage.run(ctx)


def _glue_stage(ctx: RunContext) -> dict:
    from kdjax import glue_stage

    return glue_stage.run(ctx)


def _report_stage(ctx: RunContext) -> dict:
    from kdjax import report

    return report.run(ctx)


def _report_pending(ctx: RunContext) -> list[str]:
    """Inputs of a finished report written since (an earlier stage of this run, or a run of stages=glue alone)."""
    from kdjax import report

    since = ctx.workdir.finished_at("report")
    newer = report.newer_inputs(ctx.workdir.root, since) if since is not None else []
    return newer[:1] + [f"{len(newer) - 1} more"] if len(newer) > 1 else newer


# Explicit registry: stage name -> function(ctx) -> info dict recorded in the stage marker.
STAGES = {
    "teacher": _teacher_stage,
    "nas": _nas_stage,
    "kd": kd_stage.run,
    "glue": _glue_stage,
    "report": _report_stage,
}


# What a forced stage must not resume from, set aside before it runs (the kd stage sets aside its own arch folder).
FRESH_OUTPUTS = {"nas": ("nas",)}


def _glue_pending(ctx: RunContext) -> list[str]:
    from kdjax import glue_status

    return glue_status.pending(ctx)


def _glue_unmeasured(ctx: RunContext) -> list[str]:
    from kdjax import glue_status

    return glue_status.unmeasured(ctx)


# Outputs a finished stage has not made yet, and why: the kd stage's chosen student and the models glue.models names
# that it distils, scores of models re-made since, and latency records of another protocol. The stage runs again for
# them instead of being skipped.
PENDING = {
    "kd": [
        (kd_stage.chosen_pending, "a student chosen since"),
        (kd_stage.pending, "named since in glue.models"),
    ],
    "glue": [
        (_glue_pending, "their weights changed since they were scored"),
        (_glue_unmeasured, "their latency was recorded under another protocol or by an older kdjax"),
    ],
    "report": [(_report_pending, "written since the report")],
}
# Stages whose skip is decided again when the loop reaches them: an earlier stage of the same run may have written
# their inputs (the report is made again after a glue stage that scored something).
DECIDED_LATE = ("report",)


def _skipped(ctx: RunContext, name: str) -> bool:
    """A finished stage is skipped unless forced or asked for outputs it has not made (then it says so)."""
    if ctx.settings.force or not ctx.workdir.is_done(name):
        return False
    if not finished(ctx.workdir, name, ctx.settings):
        print(f"{name}: finished before for another request; running again for what is new")
        return False
    again = False
    for pending, why in PENDING.get(name, []):
        missing = pending(ctx)
        if missing:
            print(f"{name}: finished before; running again for {', '.join(missing)} ({why})")
            again = True
    return not again


# Recorded requests say their format; markers written before it hold the raw config's glue section instead.
REQUEST_FORMAT = 2


def glue_request(settings: Settings) -> dict:
    """What a glue stage was asked to score (models, tasks, recipe, task distillation, data, seed), from the typed
    settings, as JSON reads it back: spellings that validate to the same settings ('1e-3' and '0.001') are one
    request."""
    request = {
        "format": REQUEST_FORMAT,
        "glue": dataclasses.asdict(settings.glue),
        "glue_dir": settings.data.glue_dir,
        "seed": settings.seed,
    }
    return json.loads(json.dumps(request))


def read_glue_request(recorded) -> dict | None:
    """A recorded glue request in the current format. An older marker's raw config section is read as `validate`
    reads a config; one that cannot be read is None, and the stage runs again (scoring only what is new)."""
    if not isinstance(recorded, dict) or "format" in recorded:
        return recorded
    try:
        seed = int(recorded["seed"])
        glue = glue_settings(ml_collections.ConfigDict(recorded["glue"]), seed)
        request = {"format": REQUEST_FORMAT, "glue": dataclasses.asdict(glue), "glue_dir": str(recorded["glue_dir"])}
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
    return json.loads(json.dumps({**request, "seed": seed}))


class StageRequest(NamedTuple):
    make: Callable[[Settings], dict]  # this run's request
    read: Callable[[Any], dict | None]  # a recorded one, in the current format


# Stages whose marker records their request: a finished one runs again (without force) when the request changed.
# The glue stage keeps every (model, task) already scored with the same recipe, so asking for another task, model or
# recipe on a finished workdir scores just what is new instead of skipping the request.
STAGE_REQUEST = {"glue": StageRequest(glue_request, read_glue_request)}


def finished(wd: Workdir, name: str, settings: Settings) -> bool:
    """The stage finished, for this request where the stage records one."""
    if not wd.is_done(name):
        return False
    if name not in STAGE_REQUEST:
        return True
    # An unreadable marker reads as {}: the stage runs again.
    request = STAGE_REQUEST[name]
    return request.read(wd.stage_info(name).get("request")) == request.make(settings)


def machine_cache_dir() -> str:
    """The machine-level XLA cache, beside the latency cache: $KDJAX_CACHE_DIR/xla or ~/.cache/kdjax/xla. Programs
    depend only on shapes and settings, not on a workdir, so every run, strategy and workdir on the machine shares
    them."""
    base = os.environ.get("KDJAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kdjax"
    )
    return os.path.join(base, "xla")


def enable_compilation_cache(directory: str | None = None) -> None:
    """Persist compiled XLA programs across runs (a resumed search, a re-run or a new workdir recompiles nothing) in
    `directory` (default `machine_cache_dir()`); a cache folder already chosen (JAX_COMPILATION_CACHE_DIR, as the
    tests set one for all their runs) is kept."""
    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", directory or machine_cache_dir())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def record_config(workdir: Workdir, cfg: dict) -> None:
    """W/config.json = this invocation's config; a different earlier one moves to W/configs/ instead of being lost."""
    path = workdir.path("config.json")
    if os.path.exists(path):
        try:
            same = read_json(path) == json.loads(json.dumps(cfg))
        except ValueError:  # unreadable: keep it aside as well
            same = False
        if not same:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(os.path.getmtime(path)))
            os.replace(path, os.path.join(workdir.subdir("configs"), f"config-{stamp}.json"))
    write_json(path, cfg)


def run(config, workdir: str) -> None:
    """Validate `config`, lock the workdir, then run each selected stage in pipeline order."""
    settings = validate(config)
    check_data(settings)
    wd = Workdir(workdir)
    stage = "startup"
    try:
        with WorkdirLock(wd.root, wait=settings.wait_for_lock), signals_as_interrupts():
            ctx = RunContext(settings, wd)
            enable_compilation_cache()
            record_config(wd, config.to_dict())
            # What this run will cost (stages that will not be skipped), and an ETA once their first steps are timed.
            skipped = {s for s in STAGES if s in ctx.stages and _skipped(ctx, s)}
            plan.start(ctx, [s for s in STAGES if s in ctx.stages and s not in skipped])
            for name in STAGES:
                if name not in ctx.stages:
                    continue
                if name in skipped and (name not in DECIDED_LATE or _skipped(ctx, name)):
                    print(f"{name}: already finished in {wd.root}, skipping (--config.force=true to re-run)")
                    continue
                stage = name
                if settings.force:
                    # Until it finishes, a forced stage is unfinished: an interrupted one resumes instead of skipping.
                    wd.clear(name)
                    for rel in FRESH_OUTPUTS.get(name, ()):
                        wd.set_aside(name, wd.path(rel))
                log.info("stage %s", name)
                info = STAGES[name](ctx) or {}
                if name in STAGE_REQUEST:
                    info = {**info, "request": STAGE_REQUEST[name].make(settings)}
                wd.mark_done(name, info)
                plan.stage_done(name)
                wd.drop_previous(name)
    except (KeyboardInterrupt, Interrupted) as e:
        if stage == "startup":
            raise KdjaxError("interrupted before any stage started; run the same command to start again") from None
        raise KdjaxError(interrupted_message(stage, e, forced=settings.force)) from None
    except KdjaxError:
        raise
    except Exception as e:
        err = disk_error(e)
        if err is None:
            raise
        raise KdjaxError(disk_error_message(stage, err, wd.root)) from e
