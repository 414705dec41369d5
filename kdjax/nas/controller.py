"""LSTM controller trained with REINFORCE (the classic NAS controller), and the episode loop around it.

The controller decides one search-space dimension per LSTM step: step d embeds the previous choice, runs the cell,
and emits a softmax over dimension d's values, masked to the values that still have a valid completion (heads
dividing hidden, params under the cap; see `SearchSpace.valid_tensor`), so every sample is a valid architecture and
no resampling is needed. Keys are `fold_in(fold_in(root, episode), candidate)`, and the controller (params, Adam
state, baseline, episode) is checkpointed after every episode, so a resumed search draws exactly what an unstopped
one would have drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.search_space import SearchSpace, announcing
from kdjax.spec import ArchSpec

log = logging.getLogger(__name__)

# evaluate(spec, episode=..., candidate=...) -> record with at least 'reward'.
Evaluate = Callable[..., dict]
_MASKED = -1e9


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    hidden_size: int = 64
    learning_rate: float = 0.01
    entropy_weight: float = 1e-3
    baseline_decay: float = 0.8


class Controller(nn.Module):
    """Autoregressive policy over the space's dimensions; returns (actions, log-prob, entropy) of one sample."""

    num_choices: tuple[int, ...]
    hidden_size: int = 64

    def setup(self):
        self.cell = nn.LSTMCell(self.hidden_size)
        self.start = self.param("start", nn.initializers.normal(0.1), (self.hidden_size,))
        # Plain tables rather than nn.Embed, whose single-row case broadcasts away the index.
        self.embeds = [
            self.param(f"embed_{d}", nn.initializers.normal(1.0), (n, self.hidden_size))
            for d, n in enumerate(self.num_choices)
        ]
        self.heads = [nn.Dense(n) for n in self.num_choices]

    def __call__(self, valid: jax.Array, key: jax.Array | None = None, actions: jax.Array | None = None):
        """Sample with `key`, or score given `actions` (teacher forcing) when `actions` is not None."""
        carry = (jnp.zeros(self.hidden_size), jnp.zeros(self.hidden_size))
        x = self.start
        chosen: list[jax.Array] = []
        log_prob: jax.Array | float = 0.0
        entropy: jax.Array | float = 0.0
        for d, n in enumerate(self.num_choices):
            carry, y = self.cell(carry, x)
            # Values of dimension d that keep a valid completion given the choices so far.
            mask = _completions(valid, chosen, self.num_choices).reshape(n, -1).any(-1)
            logits = jnp.where(mask, self.heads[d](y), _MASKED)
            logp = jax.nn.log_softmax(logits)
            if actions is None:
                assert key is not None, "sampling needs a key"
                a = jax.random.categorical(jax.random.fold_in(key, d), logits)
            else:
                a = actions[d]
            log_prob = log_prob + logp[a]
            entropy = entropy - jnp.sum(jnp.where(mask, jnp.exp(logp) * logp, 0.0))
            chosen.append(a)
            x = self.embeds[d][a]
        return jnp.stack(chosen), log_prob, entropy


def _completions(valid: jax.Array, chosen: list, num_choices: tuple[int, ...]) -> jax.Array:
    """valid[chosen...] as one-hot contractions: compiles much faster under vmap and grad than a dynamic gather."""
    sub = valid
    for d, a in enumerate(chosen):
        sub = jnp.tensordot(jax.nn.one_hot(a, num_choices[d], dtype=sub.dtype), sub, axes=1)
    return sub > 0


@functools.partial(jax.jit, static_argnames=("num_choices", "hidden_size"))
def sample(params, valid, keys, *, num_choices, hidden_size):
    """One architecture (index tuple) per key: (num_keys, num_dims) int array."""
    model = Controller(num_choices, hidden_size)
    return jax.vmap(lambda k: model.apply({"params": params}, valid, key=k)[0])(keys)


@functools.partial(jax.jit, static_argnames=("num_choices", "cfg"))
def reinforce_step(params, opt_state, valid, actions, advantages, *, num_choices, cfg: ControllerConfig):
    """One Adam step on -E[advantage * log pi(a)] - entropy_weight * H(pi)."""
    model = Controller(num_choices, cfg.hidden_size)

    def loss_fn(p):
        _, logp, ent = jax.vmap(lambda a: cast(tuple, model.apply({"params": p}, valid, actions=a)))(actions)
        loss = -jnp.mean(advantages * logp) - cfg.entropy_weight * jnp.mean(ent)
        return loss, {"loss": loss, "entropy": jnp.mean(ent)}

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optax.adam(cfg.learning_rate).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics


def init_state(space: SearchSpace, cfg: ControllerConfig, seed: int) -> dict:
    """Fresh controller state: params, Adam state, moving-average baseline (and whether it is set), next episode."""
    model = Controller(space.num_choices, cfg.hidden_size)
    valid = jnp.asarray(space.valid_tensor, jnp.float32)
    # Jitted: an eager init dispatches every op separately, which is slower than compiling the whole thing.
    init = jax.jit(lambda k: model.init(k, valid, key=jax.random.PRNGKey(0))["params"])
    params = init(jax.random.fold_in(jax.random.PRNGKey(seed), 0))
    return {
        "params": params,
        "opt_state": optax.adam(cfg.learning_rate).init(params),
        "baseline": jnp.zeros((), jnp.float32),
        "has_baseline": jnp.zeros((), jnp.bool_),
        "episode": jnp.zeros((), jnp.int32),
    }


def episode_keys(seed: int, episode: int, n: int) -> jax.Array:
    root = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    ep = jax.random.fold_in(root, episode)
    return jax.vmap(lambda c: jax.random.fold_in(ep, c))(jnp.arange(n))


def search(
    space: SearchSpace,
    evaluate: Evaluate,
    *,
    num_episodes: int,
    candidates_per_episode: int,
    seed: int,
    cfg: ControllerConfig = ControllerConfig(),
    checkpointer=None,
    prepare: Callable[[ArchSpec], None] | None = None,
) -> list[dict]:
    """Run (or resume from `checkpointer`) the REINFORCE search; returns this run's records in order. `prepare(spec)`
    is told each episode's next candidate before the current one is evaluated."""
    state = init_state(space, cfg, seed)
    if checkpointer is not None:
        restored = checkpointer.restore(state)
        if restored is not None:
            state = restored[1]
            log.info("lstm: resuming at episode %d", int(state["episode"]))
    valid = jnp.asarray(space.valid_tensor, jnp.float32)
    records = []
    for episode in range(int(state["episode"]), num_episodes):
        keys = episode_keys(seed, episode, candidates_per_episode)
        actions = np.asarray(
            sample(state["params"], valid, keys, num_choices=space.num_choices, hidden_size=cfg.hidden_size)
        )
        rewards = []
        specs: list[ArchSpec] = [space.spec(tuple(int(i) for i in idx)) for idx in actions]
        for c, spec in announcing(specs, prepare):  # within the episode: the next candidate compiles meanwhile
            rec = evaluate(spec, episode=episode, candidate=c)
            records.append(rec)
            rewards.append(float(rec["reward"]))
        state = _update(state, valid, actions, np.asarray(rewards, np.float32), space, cfg)
        if checkpointer is not None:
            checkpointer.save(episode + 1, state, {"episode": episode + 1})
    return records


def _update(state: dict, valid, actions: np.ndarray, rewards: np.ndarray, space: SearchSpace, cfg) -> dict:
    # The first episode's mean starts the baseline, so its advantages are centred rather than all positive.
    baseline = jnp.where(state["has_baseline"], state["baseline"], jnp.mean(rewards))
    advantages = jnp.asarray(rewards) - baseline
    params, opt_state, _ = reinforce_step(
        state["params"],
        state["opt_state"],
        valid,
        jnp.asarray(actions),
        advantages,
        num_choices=space.num_choices,
        cfg=cfg,
    )
    return {
        "params": params,
        "opt_state": opt_state,
        "baseline": (cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * jnp.mean(rewards)).astype(jnp.float32),
        "has_baseline": jnp.ones((), jnp.bool_),
        "episode": state["episode"] + 1,
    }
