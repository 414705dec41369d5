"""Knowledge-distillation trainer: a pure jitted `train_step` with a data-parallel mesh, and the loop around it.

`train_step(state, teacher_params, batch, rng)` is compiled once per (student spec, teacher spec, loss, optimizer,
dtype, mesh, batch shape) and reused by every candidate of a search with the same shapes (`compiled_train_step`).
The loop (`distill`) checkpoints with Orbax, resumes from the newest good checkpoint, derives the per-step key with
`fold_in(root, step)` and the batch from the step alone, so a resumed run is identical to an unbroken one.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kdjax.data.batches import Batches
from kdjax.errors import KdjaxError
from kdjax.losses import LossConfig, distillation_loss, init_projection, relation_heads
from kdjax.models import Encoder
from kdjax.spec import ArchSpec

log = logging.getLogger(__name__)


class NonFiniteLossError(KdjaxError, RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@flax.struct.dataclass
class KDState:
    step: jax.Array
    params: dict  # {'student': Encoder params, 'projection': Linear(Hs, 2*Ht)}
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Hashable AdamW + schedule settings (a static argument of the jitted step)."""

    learning_rate: float
    total_steps: int
    warmup_steps: int = 0
    schedule: str = "linear"
    weight_decay: float = 0.01
    grad_clip_norm: float = 1.0

    @classmethod
    def from_config(cls, kd_cfg, total_steps: int) -> OptimConfig:
        return cls(
            learning_rate=float(kd_cfg.learning_rate),
            total_steps=int(total_steps),
            warmup_steps=int(kd_cfg.warmup_fraction * total_steps),
            schedule=str(kd_cfg.schedule),
            weight_decay=float(kd_cfg.weight_decay),
            grad_clip_norm=float(kd_cfg.grad_clip_norm),
        )

    def schedule_fn(self) -> optax.Schedule:
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        if self.schedule == "constant":
            decay = optax.constant_schedule(self.learning_rate)
        elif self.schedule == "cosine":
            decay = optax.cosine_decay_schedule(self.learning_rate, decay_steps)
        else:
            decay = optax.linear_schedule(self.learning_rate, 0.0, decay_steps)
        if self.warmup_steps == 0:
            return decay
        warm = optax.linear_schedule(0.0, self.learning_rate, self.warmup_steps)
        return optax.join_schedules([warm, decay], [self.warmup_steps])

    def make(self) -> optax.GradientTransformation:
        # No weight decay on biases and LayerNorm scales, as in BERT.
        def decay_mask(params):
            return jax.tree_util.tree_map_with_path(lambda p, x: x.ndim > 1 and "LayerNorm" not in str(p), params)

        tx = optax.adamw(
            self.schedule_fn(), b1=0.9, b2=0.999, eps=1e-6, weight_decay=self.weight_decay, mask=decay_mask
        )
        if self.grad_clip_norm > 0:
            tx = optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), tx)
        return tx


def compute_dtype(name: str):
    """'auto' -> bfloat16 on GPU/TPU, float32 on CPU."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    return jnp.dtype(name)


def make_mesh(devices=None) -> Mesh:
    """1-D data-parallel mesh over all devices (Auto axis types: see DESIGN.md pitfalls)."""
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def init_student(rng: jax.Array, spec: ArchSpec, seq_len: int = 8, with_mlm_head: bool = False) -> dict:
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return Encoder(spec, with_mlm_head=with_mlm_head).init(rng, ids, jnp.ones_like(ids))["params"]


def init_state(
    rng: jax.Array,
    student: ArchSpec,
    teacher: ArchSpec,
    opt: OptimConfig,
    loss: LossConfig,
    student_params: dict | None = None,
    projection_params: dict | None = None,
) -> KDState:
    """Fresh state; `student_params` / `projection_params` (e.g. teacher-initialised) replace the random inits."""
    k_student, k_proj = jax.random.split(rng)
    params = {
        "student": student_params
        if student_params is not None
        else init_student(k_student, student, with_mlm_head=loss.needs_logits),
        "projection": projection_params
        if projection_params is not None
        else init_projection(k_proj, student.hidden_size, teacher.hidden_size),
    }
    return KDState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.make().init(params))


@functools.lru_cache(maxsize=64)
def _jitted_init(student: ArchSpec, teacher: ArchSpec, opt: OptimConfig, loss_cfg: LossConfig, mesh):
    """`init_state(rng, student_params or None, projection_params or None)` jitted once per shape (and per which
    of the two are given), placed replicated on the mesh (eager Flax init is slow per op)."""
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.jit(lambda rng, sp, pp: init_state(rng, student, teacher, opt, loss_cfg, sp, pp), out_shardings=rep)


def teacher_forward(teacher_params: dict, batch: dict, *, teacher: ArchSpec, loss_cfg: LossConfig, dtype: Any) -> dict:
    """Frozen-teacher outputs the losses read (hidden states; q/k/v and logits only when a loss needs them)."""
    t_model = Encoder(teacher, dtype=dtype, with_mlm_head=loss_cfg.needs_logits)
    out = t_model.apply(
        {"params": _merge_head(teacher_params)},
        batch["input_ids"],
        batch["attention_mask"],
        return_qkv=loss_cfg.needs_qkv,
    )
    return jax.lax.stop_gradient(out)


def student_step(
    state: KDState,
    t_out: dict,
    batch: dict,
    rng: jax.Array,
    *,
    student: ArchSpec,
    teacher: ArchSpec,
    loss_cfg: LossConfig,
    opt: OptimConfig,
    dtype: Any,
) -> tuple[KDState, dict]:
    """One AdamW step of the student (and projection) towards precomputed teacher outputs."""
    del rng  # no dropout in distillation; kept in the signature so stochastic variants need no API change
    heads = (
        relation_heads(loss_cfg, student.hidden_size, teacher.hidden_size, student.num_heads, teacher.num_heads)
        if loss_cfg.needs_qkv
        else 1
    )
    s_model = Encoder(student, dtype=dtype, with_mlm_head=loss_cfg.needs_logits)

    def loss_fn(params):
        s_out = s_model.apply(
            {"params": params["student"]}, batch["input_ids"], batch["attention_mask"], return_qkv=loss_cfg.needs_qkv
        )
        return distillation_loss(s_out, t_out, params["projection"], batch, loss_cfg, heads)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = opt.make().update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": opt.schedule_fn()(state.step), **parts}
    return KDState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def train_step(
    state: KDState,
    teacher_params: dict,
    batch: dict,
    rng: jax.Array,
    *,
    student: ArchSpec,
    teacher: ArchSpec,
    loss_cfg: LossConfig,
    opt: OptimConfig,
    dtype: Any,
) -> tuple[KDState, dict]:
    """One KD step: teacher forward, then the student update (the two halves `distill` compiles separately)."""
    t_out = teacher_forward(teacher_params, batch, teacher=teacher, loss_cfg=loss_cfg, dtype=dtype)
    return student_step(
        state, t_out, batch, rng, student=student, teacher=teacher, loss_cfg=loss_cfg, opt=opt, dtype=dtype
    )


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
def _jitted_step(student, teacher, loss_cfg, opt, dtype_name, mesh):
    """The fused step (teacher + student in one program), for benchmarks and single runs."""
    data = NamedSharding(mesh, PartitionSpec("data"))
    rep = NamedSharding(mesh, PartitionSpec())
    step = functools.partial(
        train_step, student=student, teacher=teacher, loss_cfg=loss_cfg, opt=opt, dtype=jnp.dtype(dtype_name)
    )
    return jax.jit(step, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep), donate_argnums=(0,))


def _jitted_teacher(teacher, loss_cfg, dtype_name, mesh):
    data = NamedSharding(mesh, PartitionSpec("data"))
    rep = NamedSharding(mesh, PartitionSpec())
    fwd = functools.partial(teacher_forward, teacher=teacher, loss_cfg=loss_cfg, dtype=jnp.dtype(dtype_name))
    return jax.jit(fwd, in_shardings=(rep, data), out_shardings=data)


def _jitted_student(student, teacher, loss_cfg, opt, dtype_name, mesh):
    data = NamedSharding(mesh, PartitionSpec("data"))
    rep = NamedSharding(mesh, PartitionSpec())
    step = functools.partial(
        student_step, student=student, teacher=teacher, loss_cfg=loss_cfg, opt=opt, dtype=jnp.dtype(dtype_name)
    )
    return jax.jit(step, in_shardings=(rep, data, data, rep), out_shardings=(rep, rep), donate_argnums=(0,))


# Compiled programs by (program, shapes, ...), least recently used first; a long search with many distinct shapes
# drops the oldest executables instead of holding every one (the persistent cache still has them on disk).
_COMPILED: collections.OrderedDict = collections.OrderedDict()
MAX_COMPILED = 64


def _compile(key, jitted, *args) -> tuple[Any, float]:
    """AOT-compile once per key; returns (compiled, seconds spent compiling now)."""
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key], 0.0
    t0 = time.perf_counter()
    _COMPILED[key] = jitted.lower(*args).compile()
    while len(_COMPILED) > MAX_COMPILED:
        _COMPILED.popitem(last=False)
    return _COMPILED[key], time.perf_counter() - t0


def compiled_train_step(student, teacher, loss_cfg, opt, dtype, mesh, state, teacher_params, batch, rng):
    """`(state, teacher_params, batch, rng) -> (state, metrics)` from two AOT-compiled programs.

    The teacher forward is keyed without the student, so a search compiles it once and every candidate only
    compiles its own (smaller) student step; the student step is shared by candidates of equal shapes.
    Returns (fn, compile seconds spent now).
    """
    dname = jnp.dtype(dtype).name
    shapes = tuple(sorted((k, v.shape) for k, v in batch.items()))
    t_jit = _jitted_teacher(teacher, loss_cfg, dname, mesh)
    t_fn, t_s = _compile(("teacher", teacher, loss_cfg, dname, mesh, shapes), t_jit, teacher_params, batch)
    s_key = ("student", student, teacher, loss_cfg, opt, dname, mesh, shapes)
    if s_key in _COMPILED:
        s_fn, s_s = _compile(s_key, None)
    else:
        # The teacher's output shapes (traced, not run) are the student program's input layout.
        data = NamedSharding(mesh, PartitionSpec("data"))
        t_out = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=data),
            jax.eval_shape(t_jit, teacher_params, batch),
        )
        s_jit = _jitted_student(student, teacher, loss_cfg, opt, dname, mesh)
        s_fn, s_s = _compile(s_key, s_jit, state, t_out, batch, rng)

    def step(state, teacher_params, batch, rng):
        return s_fn(state, t_fn(teacher_params, batch), batch, rng)

    step.teacher, step.student = t_fn, s_fn  # the halves, for callers that reuse teacher outputs
    return step, t_s + s_s


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
        self.key = None
        self.outputs: dict[int, Any] = {}
        self.nbytes = self.hits = self.misses = 0

    def get(self, key, step: int, compute: Callable[[], Any]) -> Any:
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

    def _same(self, key) -> bool:
        old = self.key
        return old is not None and old[0] is key[0] and old[1] is key[1] and old[2:] == key[2:]

    def stats(self) -> dict:
        return {"cached_steps": len(self.outputs), "mb": self.nbytes / 2**20, "hits": self.hits, "misses": self.misses}


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {k: jax.device_put(v, sharding) for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def prefetch(batches: Batches, mesh: Mesh, start: int, stop: int, depth: int = 2):
    """Yield (step, host batch, device batch), preparing the next `depth` batches on a background thread.

    Masking and the host-to-device copy of step s+1 overlap the device step s (jitted steps dispatch
    asynchronously), so the accelerator does not wait on numpy.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop_event = threading.Event()

    def work():
        try:
            for step in range(start, stop):
                if stop_event.is_set():
                    return
                host = batches.get(step)
                q.put((step, host, shard_batch(host, mesh)))
        except BaseException as e:  # surfaced in the consumer
            q.put(e)
        q.put(None)

    thread = threading.Thread(target=work, daemon=True, name="kdjax-prefetch")
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop_event.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


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

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.wall_s - self.compile_s, 1e-9)


def distill(
    *,
    teacher_spec: ArchSpec,
    teacher_params: dict,
    student: ArchSpec,
    batches: Batches,
    loss_cfg: LossConfig,
    opt: OptimConfig,
    num_steps: int,
    seed: int,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    checkpointer=None,
    checkpoint_every: int = 0,
    writer=None,
    log_every: int = 20,
    student_params: dict | None = None,
    projection_params: dict | None = None,
    progress: bool = True,
    desc: str = "kd",
    teacher_cache: TeacherOutputCache | None = None,
) -> DistillResult:
    """Train `student` for `num_steps` steps; resume from `checkpointer` when it holds a checkpoint.

    With `teacher_cache`, teacher outputs are looked up by step (students distilled on the same `batches`).
    """
    from tqdm.auto import tqdm

    mesh = mesh or make_mesh()
    root = jax.random.PRNGKey(seed)
    t_params = replicate(teacher_inputs(teacher_params, loss_cfg), mesh)
    init = _jitted_init(student, teacher_spec, opt, loss_cfg, mesh)
    state = init(jax.random.fold_in(root, 0), student_params, projection_params)
    start, resumed, last_loss_restored = 0, None, float("nan")
    epoch_sums: dict[int, list[float]] = {}
    if checkpointer is not None:
        restored = checkpointer.restore(state)
        if restored is not None:
            start, state, meta = restored
            resumed = start
            epoch_sums = {int(k): v for k, v in meta.get("epoch_sums", {}).items()}
            last_loss_restored = float(meta.get("last_loss", float("nan")))
            if writer is not None:
                writer.truncate_after(start)
            log.info("%s: resumed from step %d", desc, start)

    t_start = time.perf_counter()
    compile_s, tokens, pending = 0.0, 0, []
    bar = tqdm(total=num_steps, initial=start, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    last_loss = last_loss_restored
    fn = None
    cache_key = (teacher_params, batches, teacher_spec, loss_cfg, jnp.dtype(dtype).name, mesh)

    def flush(step: int) -> None:
        nonlocal pending, last_loss
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched, strict=True):
            loss = float(m["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"{desc}: non-finite loss ({loss}) at step {s + 1}; stopping")
            # A finite loss with a non-finite gradient still leaves NaN weights: stop before checkpointing them.
            grad_norm = float(m.get("grad_norm", 0.0))
            if not math.isfinite(grad_norm):
                raise NonFiniteLossError(f"{desc}: non-finite gradient norm ({grad_norm}) at step {s + 1}; stopping")
            epoch = s // batches.steps_per_epoch
            acc = epoch_sums.setdefault(epoch, [0.0, 0])
            acc[0] += loss
            acc[1] += 1
        last_loss = float(fetched[-1]["loss"])
        if writer is not None:
            means = {k: float(np.mean([float(m[k]) for m in fetched])) for k in fetched[-1]}
            writer.write(step, means)
        pending = []

    try:
        for step, host, batch in prefetch(batches, mesh, start, num_steps):
            tokens += batches.num_tokens(host)
            rng = jax.random.fold_in(root, step + 1)
            if fn is None:
                fn, compile_s = compiled_train_step(
                    student, teacher_spec, loss_cfg, opt, dtype, mesh, state, t_params, batch, rng
                )
            if teacher_cache is None:
                state, metrics = fn(state, t_params, batch, rng)
            else:
                t_out = teacher_cache.get(cache_key, step, functools.partial(fn.teacher, t_params, batch))
                state, metrics = fn.student(state, t_out, batch, rng)
            pending.append((step, metrics))
            if len(pending) >= 2:
                # At most two steps in flight: the device stays busy, and the bar counts finished steps.
                pending[-2][1]["loss"].block_until_ready()
            done = step + 1
            if done % log_every == 0 or done == num_steps or (checkpoint_every and done % checkpoint_every == 0):
                flush(done)
                elapsed = time.perf_counter() - t_start - compile_s
                bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tokens / max(elapsed, 1e-9):,.0f}")
            if checkpointer is not None and checkpointer.should_save(done):
                flush(done)  # the metrics up to here belong in the checkpoint's meta
                meta = {"step": done, "data_position": done, "epoch_sums": epoch_sums, "seed": seed}
                meta["last_loss"] = last_loss
                checkpointer.save(done, state, meta)
            bar.update(1)
    finally:
        bar.close()
    flush(num_steps)
    wall = time.perf_counter() - t_start
    epochs = [epoch_sums[e][0] / epoch_sums[e][1] for e in sorted(epoch_sums)]
    return DistillResult(
        params=jax.device_get(state.params),
        steps=num_steps,
        epoch_losses=epochs,
        final_loss=last_loss,
        wall_s=wall,
        compile_s=compile_s,
        tokens=tokens,
        resumed_from=resumed,
    )
