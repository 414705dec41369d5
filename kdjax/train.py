"""The distillation loop: `distill` trains a student towards a frozen teacher's outputs, and resumes.

The per-step key is `fold_in(root, step)` and the batch a function of the step alone, so a run resumed from a
checkpoint is identical to an unbroken one. Each step runs two compiled programs (kdjax.steps); logging,
checkpointing and pruning are hooks (kdjax.hooks) called at report steps.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from kdjax.data.batches import Batches
from kdjax.errors import KdjaxError
from kdjax.hooks import Hook, Report, report_steps
from kdjax.losses import LossConfig
from kdjax.models import unstack_layers
from kdjax.optim import OptimConfig
from kdjax.sharding import make_mesh, prefetch, replicate, shardings
from kdjax.spec import ArchSpec
from kdjax.steps import Programs, TeacherOutputCache, compile_programs, init_state, teacher_inputs

log = logging.getLogger(__name__)


class NonFiniteLossError(KdjaxError, RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class FrozenModel(Protocol):
    """A teacher as the loop needs it (kdjax.teacher.Teacher is one)."""

    spec: ArchSpec
    params: dict  # {'encoder': ..., 'mlm_head': ... (only read when the logit loss is on)}


@dataclasses.dataclass(frozen=True)
class Student:
    """The architecture being trained and where it starts."""

    spec: ArchSpec
    # Initial encoder weights (e.g. cut from the teacher); None draws them from the run's seed.
    params: dict | None = None
    # Initial hidden-state projection (student -> teacher width); None draws it from the run's seed.
    projection: dict | None = None


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """Everything besides the models and the batches that decides a run's numbers."""

    loss: LossConfig
    opt: OptimConfig
    num_steps: int
    seed: int
    dtype: Any = jnp.float32
    # None: every device of the process.
    mesh: Mesh | None = None
    # Train the student with its layers scanned (kdjax.models.LayerStack): compile cost independent of depth. The
    # params given and returned keep the per-layer layout; the train state (and so what hooks checkpoint) is scanned.
    scan_layers: bool = False
    # Dropout on the student during the step (its key: the step's fold_in); the teacher never drops.
    dropout_rate: float = 0.0


@dataclasses.dataclass
class DistillResult:
    params: dict
    steps: int
    epoch_losses: list[float]
    final_loss: float
    wall_s: float
    compile_s: float
    tokens: int
    resumed_from: int | None = None
    # Why a hook ended the run before `num_steps` (then `steps` is where it stopped); None when it ran to the end.
    stopped: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.wall_s - self.compile_s, 1e-9)


def distill(
    teacher: FrozenModel,
    student: Student,
    batches: Batches,
    settings: DistillSettings,
    *,
    hooks: Sequence[Hook] = (),
    report_every: int = 20,
    teacher_cache: TeacherOutputCache | None = None,
    desc: str = "kd",
    progress: bool = True,
) -> DistillResult:
    """Train `student` for `settings.num_steps` steps, resuming when a hook restores a checkpoint.

    Every `report_every` steps, every `every` steps of each hook and after the last step, the metrics of the steps
    since the previous report are fetched, checked (a non-finite loss or gradient norm raises `NonFiniteLossError`)
    and passed to each hook in order; a hook returning `Stop` ends the run there. With `teacher_cache`, teacher
    outputs are looked up by step (students distilled one after another on the same `batches`).
    """
    from tqdm.auto import tqdm

    cfg, hooks = settings, list(hooks)
    mesh = cfg.mesh or make_mesh()
    root = jax.random.PRNGKey(cfg.seed)
    t_params = replicate(teacher_inputs(teacher.params, cfg.loss), mesh)
    scan = _scanned(student, cfg)
    t_start = time.perf_counter()  # the state's init is part of the run
    state = replicate(_initial_state(teacher, student, cfg), mesh)
    start, resumed, last_loss = 0, None, float("nan")
    epoch_sums: dict[int, list[float]] = {}
    for hook in hooks:
        restored = hook.restore(state)
        if restored is not None:
            start, state, meta = restored
            resumed = start
            epoch_sums = {int(k): v for k, v in meta.get("epoch_sums", {}).items()}
            last_loss = float(meta.get("last_loss", float("nan")))
            for h in hooks:
                h.resume(start)
            log.info("%s: resumed from step %d", desc, start)
            break

    due = report_steps(hooks, report_every)
    compile_s, tokens = 0.0, 0
    pending: list[tuple[int, dict]] = []  # (step, metrics still on the device)
    bar = tqdm(total=cfg.num_steps, initial=start, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    programs: Programs | None = None
    cache_key = (teacher.params, batches, teacher.spec, cfg.loss, jnp.dtype(cfg.dtype).name, mesh)
    done, stopped = start, None

    def report() -> str | None:
        """Fetch and check the pending metrics, call the hooks; the reason of the first `Stop`, if any."""
        nonlocal pending, last_loss
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched, strict=True):
            loss = float(m["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"{desc}: non-finite loss ({loss}) at step {s + 1}; stopping")
            # A finite loss with a non-finite gradient still leaves NaN weights: stop before checkpointing them.
            grad_norm = float(m.get("grad_norm", 0.0))
            if not math.isfinite(grad_norm):
                raise NonFiniteLossError(f"{desc}: non-finite gradient norm ({grad_norm}) at step {s + 1}; stopping")
            acc = epoch_sums.setdefault(s // batches.steps_per_epoch, [0.0, 0])
            acc[0] += loss
            acc[1] += 1
        last_loss = float(fetched[-1]["loss"])
        pending = []
        r = Report(
            step=done,
            num_steps=cfg.num_steps,
            state=state,
            means={k: float(np.mean([float(m[k]) for m in fetched])) for k in fetched[-1]},
            last_loss=last_loss,
            epoch_losses={e: a[0] / a[1] for e, a in sorted(epoch_sums.items())},
            # A copy: the loop goes on adding to epoch_sums while a checkpoint may still be writing this.
            resume_meta={
                "step": done,
                "data_position": done,
                "epoch_sums": {e: list(a) for e, a in epoch_sums.items()},
                "seed": cfg.seed,
                "last_loss": last_loss,
            },
        )
        stops = [stop for hook in hooks if (stop := hook(r)) is not None]
        elapsed = time.perf_counter() - t_start - compile_s
        bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tokens / max(elapsed, 1e-9):,.0f}")
        return stops[0].reason if stops else None

    feed = prefetch(batches, mesh, start, cfg.num_steps)
    try:
        for step, host, batch in feed:
            tokens += batches.num_tokens(host)
            rng = jax.random.fold_in(root, step + 1)
            if programs is None:
                programs, programs_s = _programs(teacher, student, cfg, mesh, state, t_params, batch, rng)
                compile_s += programs_s
            if teacher_cache is None:
                state, metrics = programs.step(state, t_params, batch, rng)
            else:
                t_out = teacher_cache.get(cache_key, step, functools.partial(programs.teacher, t_params, batch))
                state, metrics = programs.student(state, t_out, batch, rng)
            pending.append((step, metrics))
            if len(pending) >= 2:
                # At most two steps in flight: the device stays busy, and the bar counts finished steps.
                pending[-2][1]["loss"].block_until_ready()
            done = step + 1
            if done == cfg.num_steps or due(done):
                stopped = report()
            bar.update(1)
            if stopped is not None:
                log.info("%s: stopped at step %d (%s)", desc, done, stopped)
                break
    finally:
        feed.close()
        bar.close()
    wall = time.perf_counter() - t_start
    epochs = [epoch_sums[e][0] / epoch_sums[e][1] for e in sorted(epoch_sums)]
    params = jax.device_get(state.params)
    if scan:
        params = {**params, "student": unstack_layers(params["student"])}
    return DistillResult(
        params=params,
        steps=done if stopped is not None else cfg.num_steps,
        epoch_losses=epochs,
        final_loss=last_loss,
        wall_s=wall,
        compile_s=compile_s,
        tokens=tokens,
        resumed_from=resumed,
        stopped=stopped,
    )


def precompile(teacher: FrozenModel, student: Student, batches: Batches, settings: DistillSettings) -> float:
    """Compile the programs `distill(teacher, student, batches, settings)` will run, without training; returns the
    seconds spent compiling (0 when they were ready).

    A search calls it on a thread for the next candidate while the current one trains: the programs land in
    kdjax.steps' shared cache, and the candidate's `distill` finds them there (or waits for the compile in flight).
    Only shapes are compiled against, so every argument is passed abstract; the state is first built on the host as
    `distill` builds it, for its shapes and tree structure (part of the program's key)."""
    cfg = settings
    mesh = cfg.mesh or make_mesh()
    data, rep = shardings(mesh)
    state = _abstract(_initial_state(teacher, student, cfg), rep)
    t_params = _abstract(teacher_inputs(teacher.params, cfg.loss), rep)
    batch = _abstract(batches.get(0), data)
    rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1)
    return _programs(teacher, student, cfg, mesh, state, t_params, batch, rng)[1]


def _scanned(student: Student, cfg: DistillSettings) -> bool:
    # ALBERT-style shared layers have nothing to stack: they keep the loop.
    return cfg.scan_layers and not student.spec.shared_layers


def _initial_state(teacher: FrozenModel, student: Student, cfg: DistillSettings):
    # Built on the host (numpy draws and zeros): no init program is compiled per candidate shape.
    return init_state(
        jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0),
        student.spec,
        teacher.spec,
        cfg.opt,
        cfg.loss,
        student.params,
        student.projection,
        scan_layers=_scanned(student, cfg),
    )


def _programs(teacher, student, cfg, mesh, state, t_params, batch, rng) -> tuple[Programs, float]:
    return compile_programs(
        student.spec,
        teacher.spec,
        cfg.loss,
        cfg.opt,
        cfg.dtype,
        mesh,
        state,
        t_params,
        batch,
        rng,
        _scanned(student, cfg),
        cfg.dropout_rate,
    )


def _abstract(tree: Any, sharding) -> Any:
    # Canonical dtypes (int64 -> int32 without x64), as `device_put` makes the arrays `distill` passes.
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), jax.dtypes.canonicalize_dtype(x.dtype), sharding=sharding), tree
    )
