"""The distillation step as pure functions, their compiled programs, and the caches that let a search reuse them.

A step is two programs: the frozen teacher's forward pass, `(teacher_params, batch) -> outputs`, and the student
update, `(state, teacher outputs, batch, rng) -> (state, metrics)`. `compile_programs` compiles each once per
(specs, loss, optimizer, dtype, mesh, batch shapes): the teacher program is keyed without the student, so a search
compiles it once and each candidate only its own student program, shared by candidates of equal shapes.
`TeacherOutputCache` goes further and reuses the teacher's outputs themselves across candidates. The compiled-program
cache is shared by threads: a search compiles the next candidate's programs on a thread while the current one trains
(`kdjax.train.precompile`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from kdjax.losses import LossConfig, distillation_loss, init_projection, relation_heads
from kdjax.models import Encoder, random_params, stack_layers
from kdjax.optim import OptimConfig, TrainState
from kdjax.sharding import shardings
from kdjax.spec import ArchSpec


def init_student(rng: jax.Array, spec: ArchSpec, with_mlm_head: bool = False, scan_layers: bool = False) -> dict:
    """Random student params as numpy arrays drawn on the host (kdjax.models.random_params: no compiled program),
    per-layer or scanned layout."""
    return random_params(spec, rng, with_mlm_head=with_mlm_head, scan_layers=scan_layers)


def init_state(
    rng: jax.Array,
    student: ArchSpec,
    teacher: ArchSpec,
    opt: OptimConfig,
    loss: LossConfig,
    student_params: dict | None = None,
    projection_params: dict | None = None,
    scan_layers: bool = False,
) -> TrainState:
    """Fresh state on the host (numpy leaves; `kdjax.sharding.replicate` puts it on the mesh); `student_params` /
    `projection_params` (e.g. teacher-initialised) replace the random inits. With `scan_layers` the student params
    are in the scanned layout (kdjax.models.stack_layers).

    Nothing here is compiled per candidate shape: the random draws, the optimizer's zeros and the layer stacking
    are numpy (a jitted init cost ~1-2.5 CPU-s of compile per shape). Given params are copied to the host, so the
    train step, which donates its state, never consumes the caller's arrays."""
    k_student, k_proj = jax.random.split(rng)
    if student_params is not None:
        student_params = jax.tree.map(np.array, student_params)
        if scan_layers:
            student_params = stack_layers(student_params)
    params = {
        "student": student_params
        if student_params is not None
        else init_student(k_student, student, with_mlm_head=loss.needs_logits, scan_layers=scan_layers),
        "projection": jax.tree.map(np.array, projection_params)
        if projection_params is not None
        else init_projection(k_proj, student.hidden_size, teacher.hidden_size),
    }
    return TrainState.create_on_host(params, opt)


def teacher_forward(teacher_params: dict, batch: dict, *, teacher: ArchSpec, loss_cfg: LossConfig, dtype: Any) -> dict:
    """Frozen-teacher outputs the losses read (hidden states; q/k/v and logits only when a loss needs them)."""
    t_model = Encoder(teacher, dtype=dtype, with_mlm_head=loss_cfg.needs_logits)
    out = cast(
        dict,
        t_model.apply(
            {"params": _merge_head(teacher_params)},
            batch["input_ids"],
            batch["attention_mask"],
            return_qkv=loss_cfg.needs_qkv,
        ),
    )
    return jax.lax.stop_gradient(out)


class StepSettings(NamedTuple):
    """What a compiled KD step is specialised on, one hashable static argument: specs, loss, optimiser, dtype."""

    student: ArchSpec
    teacher: ArchSpec
    loss: LossConfig
    opt: OptimConfig
    dtype_name: str
    # The student's params are in the scanned layout (kdjax.models.LayerStack).
    scan_layers: bool = False
    # Dropout on the student (kd.dropout_rate), keyed by the step's rng.
    dropout_rate: float = 0.0


def student_step(
    state: TrainState, t_out: dict, batch: dict, rng: jax.Array, *, settings: StepSettings
) -> tuple[TrainState, dict]:
    """One AdamW step of the student (and projection) towards precomputed teacher outputs; with
    `settings.scan_layers` the student params are in the scanned layout (kdjax.models.LayerStack)."""
    student, teacher, loss_cfg, opt = settings.student, settings.teacher, settings.loss, settings.opt
    heads = (
        relation_heads(loss_cfg, student.hidden_size, teacher.hidden_size, student.num_heads, teacher.num_heads)
        if loss_cfg.needs_qkv
        else 1
    )
    s_model = Encoder(
        student,
        dtype=jnp.dtype(settings.dtype_name),
        with_mlm_head=loss_cfg.needs_logits,
        scan_layers=settings.scan_layers,
        dropout_rate=settings.dropout_rate,
    )

    def loss_fn(params):
        s_out = cast(
            dict,
            s_model.apply(
                {"params": params["student"]},
                batch["input_ids"],
                batch["attention_mask"],
                return_qkv=loss_cfg.needs_qkv,
                deterministic=settings.dropout_rate == 0.0,
                rngs={"dropout": rng},
            ),
        )
        return distillation_loss(s_out, t_out, params["projection"], batch, loss_cfg, heads)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, opt)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": state.learning_rate(opt), **parts}
    return new_state, metrics


def train_step(
    state: TrainState, teacher_params: dict, batch: dict, rng: jax.Array, *, settings: StepSettings
) -> tuple[TrainState, dict]:
    """One KD step: teacher forward, then the student update (the two halves `distill` compiles separately)."""
    dtype = jnp.dtype(settings.dtype_name)
    t_out = teacher_forward(teacher_params, batch, teacher=settings.teacher, loss_cfg=settings.loss, dtype=dtype)
    return student_step(state, t_out, batch, rng, settings=settings)


def _merge_head(t_vars: dict) -> dict:
    """Teacher params in the Encoder's own layout (encoder params at top level, head as `mlm_head`)."""
    out = dict(t_vars["encoder"])
    if "mlm_head" in t_vars:
        out["mlm_head"] = t_vars["mlm_head"]
    return out


def teacher_inputs(teacher_params: dict, loss_cfg: LossConfig) -> dict:
    """Only the teacher weights a step reads (no MLM head unless the logit loss is on, no pooler)."""
    keep = {"encoder": teacher_params["encoder"]}
    if loss_cfg.needs_logits:
        if "mlm_head" not in teacher_params:
            raise ValueError("kd.loss.logit_weight > 0 needs a teacher with a masked-LM head; this teacher has none")
        keep["mlm_head"] = teacher_params["mlm_head"]
    return keep


@functools.lru_cache(maxsize=64)
def jitted_fused_step(settings: StepSettings, mesh: Mesh):
    """The fused step (teacher + student in one program), for benchmarks and single runs."""
    data, rep = shardings(mesh)
    step = functools.partial(train_step, settings=settings)
    return jax.jit(step, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep), donate_argnums=(0,))


def _jitted_teacher(teacher, loss_cfg, dtype_name, mesh):
    data, rep = shardings(mesh)
    fwd = functools.partial(teacher_forward, teacher=teacher, loss_cfg=loss_cfg, dtype=jnp.dtype(dtype_name))
    return jax.jit(fwd, in_shardings=(rep, data), out_shardings=data)


def _jitted_student(settings: StepSettings, mesh: Mesh):
    data, rep = shardings(mesh)
    step = functools.partial(student_step, settings=settings)
    return jax.jit(step, in_shardings=(rep, data, data, rep), out_shardings=(rep, rep), donate_argnums=(0,))


# Compiled programs by (program, shapes, ...), least recently used first; a long search with many distinct shapes
# drops the oldest executables instead of holding every one (the persistent cache still has them on disk).
_COMPILED: collections.OrderedDict = collections.OrderedDict()
MAX_COMPILED = 64
# Keys being compiled now, by the thread compiling them: a second thread asking for one waits for that compile.
_IN_FLIGHT: dict[tuple, concurrent.futures.Future] = {}
_LOCK = threading.Lock()


def _compile(key: tuple, build: Callable[[], Any]) -> tuple[Any, float]:
    """The program for `key`, compiled once by `build()` whichever thread asks first; returns (program, seconds this
    call spent compiling it or waiting for another thread's compile of it)."""
    t0 = time.perf_counter()
    with _LOCK:
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return _COMPILED[key], 0.0
        pending = _IN_FLIGHT.get(key)
        if pending is None:
            mine = _IN_FLIGHT[key] = concurrent.futures.Future()
    if pending is not None:
        return pending.result(), time.perf_counter() - t0
    try:
        compiled = build()
    except BaseException as e:
        with _LOCK:
            del _IN_FLIGHT[key]
        mine.set_exception(e)  # a waiting thread sees the same failure
        raise
    with _LOCK:
        _COMPILED[key] = compiled
        while len(_COMPILED) > MAX_COMPILED:
            _COMPILED.popitem(last=False)
        del _IN_FLIGHT[key]
    mine.set_result(compiled)
    return compiled, time.perf_counter() - t0


class Programs(NamedTuple):
    """The two compiled halves of a KD step."""

    teacher: Callable  # (teacher_params, batch) -> teacher outputs
    student: Callable  # (state, teacher outputs, batch, rng) -> (state, metrics); donates the state

    def step(self, state: TrainState, teacher_params: dict, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        """A whole KD step: the teacher's forward pass, then the student update on its outputs."""
        return self.student(state, self.teacher(teacher_params, batch), batch, rng)


def compile_programs(
    student: ArchSpec,
    teacher: ArchSpec,
    loss_cfg: LossConfig,
    opt: OptimConfig,
    dtype: Any,
    mesh: Mesh,
    state: TrainState,
    teacher_params: dict,
    batch: dict,
    rng: jax.Array,
    scan_layers: bool = False,
    dropout_rate: float = 0.0,
) -> tuple[Programs, float]:
    """The teacher and student programs for these arguments' shapes, and the seconds spent compiling them now or
    waiting for another thread's compile of them (0 when both were ready); `scan_layers`: `state` holds the student
    in the scanned layout. Any argument may be abstract (`jax.ShapeDtypeStruct`): only shapes are read."""
    dname = jnp.dtype(dtype).name
    shapes = tuple(sorted((k, v.shape) for k, v in batch.items()))
    t_jit = _jitted_teacher(teacher, loss_cfg, dname, mesh)
    t_fn, t_s = _compile(
        ("teacher", teacher, loss_cfg, dname, mesh, shapes), lambda: t_jit.lower(teacher_params, batch).compile()
    )
    settings = StepSettings(student, teacher, loss_cfg, opt, dname, scan_layers, dropout_rate)

    def build_student():
        # The teacher's output shapes (traced, not run) are the student program's input layout.
        data = shardings(mesh).data
        t_out = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=data),
            jax.eval_shape(t_jit, teacher_params, batch),
        )
        return _jitted_student(settings, mesh).lower(state, t_out, batch, rng).compile()

    # The state's structure too: the same shapes may come with or without an MLM head.
    s_fn, s_s = _compile(("student", settings, mesh, shapes, jax.tree.structure(state)), build_student)
    return Programs(t_fn, s_fn), t_s + s_s


class TeacherOutputCache:
    """Teacher outputs by step, for students trained one after another on the same batches.

    A search's candidates all see the same proxy batches (they depend only on the seed and the step), so the frozen
    teacher's forward pass -- about a quarter of a mini-KD step for a 3-layer student -- is computed for the first
    candidate and reused by the others. Outputs are kept on the device until `max_bytes` is reached; later steps
    are recomputed. `key` = (teacher params, batches, *hashables such as specs, loss, dtype, mesh) names what the
    outputs depend on besides the step; the first two are compared by identity, and a different key empties the
    cache. Reuse is exact: the same compiled program on the same inputs.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.key: tuple | None = None
        self.outputs: dict[int, Any] = {}
        self.nbytes = self.hits = self.misses = 0

    def get(self, key: tuple, step: int, compute: Callable[[], Any]) -> Any:
        if not self._same(key):
            self.key, self.outputs, self.nbytes = key, {}, 0
        out = self.outputs.get(step)
        if out is not None:
            self.hits += 1
            return out
        self.misses += 1
        out = compute()
        size = sum(x.nbytes for x in jax.tree.leaves(out))
        if self.nbytes + size <= self.max_bytes:
            self.outputs[step] = out
            self.nbytes += size
        return out

    def _same(self, key: tuple) -> bool:
        old = self.key
        return old is not None and old[0] is key[0] and old[1] is key[1] and old[2:] == key[2:]

    def stats(self) -> dict:
        return {"cached_steps": len(self.outputs), "mb": self.nbytes / 2**20, "hits": self.hits, "misses": self.misses}
