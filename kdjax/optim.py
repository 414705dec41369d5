"""AdamW with warmup and decay, and the train state it updates (shared by distillation and GLUE fine-tuning)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.models import STACKED


def decay_mask(params: Any) -> Any:
    """True for the leaves AdamW decays: not biases or LayerNorm scales, as in BERT. Leaves of a scanned layer stack
    carry a leading layer axis (kdjax.models.STACKED), so a bias there is 2-D."""

    def decays(path, x) -> bool:
        names = [str(getattr(k, "key", k)) for k in path]
        return x.ndim - (STACKED in names) > 1 and not any("LayerNorm" in n for n in names)

    return jax.tree_util.tree_map_with_path(decays, params)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Hashable AdamW + schedule settings (a static argument of the jitted step)."""

    learning_rate: float
    total_steps: int
    warmup_steps: int = 0
    schedule: str = "linear"
    weight_decay: float = 0.01
    grad_clip_norm: float = 1.0

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
        tx = optax.adamw(
            self.schedule_fn(), b1=0.9, b2=0.999, eps=1e-6, weight_decay=self.weight_decay, mask=decay_mask
        )
        if self.grad_clip_norm > 0:
            tx = optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), tx)
        return tx


def host_opt_init(tx: optax.GradientTransformation, params: Any) -> Any:
    """`tx.init(params)` as numpy zeros built on the host: no program compiled per parameter shape.

    Run eagerly, optax's init compiles a fill program per leaf shape; run in `jax.jit`, one program per candidate
    shape (part of the ~1-2.5 CPU-s an init used to cost). Every leaf of kdjax's optimizer state (clip, AdamW's
    moments and step count, the schedule's count) starts at zero, and this is checked rather than assumed: `tx.init`
    runs eagerly on stand-ins of the same structure and ranks but one element per axis (a few tiny shapes, compiled
    once per process), and a transform whose state does not start at zero for params of ones (a copy of the params,
    a constant) is refused. The shapes and dtypes come from `jax.eval_shape`, which traces but compiles nothing.
    """
    abstract = jax.eval_shape(tx.init, params)
    probe = tx.init(jax.tree.map(lambda x: np.ones((1,) * np.ndim(x), x.dtype), params))
    same_tree = str(jax.tree.structure(probe)) == str(jax.tree.structure(abstract))
    if not same_tree or any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(probe)):
        raise ValueError("host_opt_init: this optimizer's state does not start at zero; use tx.init")
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)


@jax.tree_util.register_pytree_with_keys_class
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything training changes, and so everything a checkpoint saves.

    `params` is the trained pytree: {'student', 'projection'} in distillation, the classifier's {'model',
    'projection'} in fine-tuning. The optimiser itself is not a field: it is rebuilt from the hashable `OptimConfig`,
    a static argument of the jitted steps, so the state stays a plain pytree for Orbax and `jax.jit`.

    `lr` (fine-tuning's learning-rate grid) is the peak learning rate as an array, scaling an `OptimConfig` whose
    schedule peaks at 1, so every grid point runs the same compiled step. Without it (distillation) the state has
    exactly the three children it always had, so checkpoints written before the field existed still restore.
    """

    step: jax.Array | np.ndarray  # numpy on the host (`create_on_host`), until put on devices
    params: dict
    opt_state: Any
    lr: jax.Array | None = None
    # Whether `lr` is a child. Kept apart from `lr is None` because tree maps (Orbax's among them) rebuild the
    # state with None or abstract leaves, which must keep the layout they came from.
    scaled: bool = False

    def tree_flatten_with_keys(self) -> tuple[list, bool]:
        names = ("step", "params", "opt_state", "lr") if self.scaled else ("step", "params", "opt_state")
        return [(jax.tree_util.GetAttrKey(n), getattr(self, n)) for n in names], self.scaled

    @classmethod
    def tree_unflatten(cls, scaled: bool, children: list) -> TrainState:
        step, params, opt_state, *lr = children
        return cls(step, params, opt_state, lr[0] if scaled else None, scaled)

    @classmethod
    def create(cls, params: dict, opt: OptimConfig, lr: jax.Array | None = None) -> TrainState:
        """Step 0 with a fresh optimiser state; `lr` makes it a learning-rate-scaled state (see the class)."""
        step = jnp.zeros((), jnp.int32)
        return cls(step, params, opt.make().init(params), lr, scaled=lr is not None)

    @classmethod
    def create_on_host(cls, params: dict, opt: OptimConfig) -> TrainState:
        """`create` as numpy arrays, with no compiled program (see `host_opt_init`); put it on devices to train."""
        return cls(np.zeros((), np.int32), params, host_opt_init(opt.make(), params))

    def learning_rate(self, opt: OptimConfig) -> jax.Array:
        """The learning rate this step applies."""
        rate = opt.schedule_fn()(self.step)
        return rate * self.lr if self.scaled else rate

    def apply_gradients(self, grads: dict, opt: OptimConfig) -> TrainState:
        """One optimiser step: the next state (step + 1)."""
        updates, opt_state = opt.make().update(grads, self.opt_state, self.params)
        if self.scaled:
            # AdamW's update (weight decay included) is linear in the learning rate: scaling by the peak is exact.
            updates = jax.tree.map(lambda u: u * self.lr, updates)
        params = optax.apply_updates(self.params, updates)
        return dataclasses.replace(self, step=self.step + 1, params=params, opt_state=opt_state)
