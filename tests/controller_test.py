"""LSTM controller: masked sampling yields only valid specs, keys are explicit, REINFORCE moves towards reward."""

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.config.settings import SpaceSettings
from kdjax.nas import controller
from kdjax.search_space import SearchSpace
from kdjax.spec import ArchSpec

TEACHER = ArchSpec(num_layers=12, hidden_size=768, num_heads=12, ffn_size=3072)
CFG = controller.ControllerConfig(learning_rate=0.05)
N = 8  # candidates per episode (the same shape as the other tests, so compiled programs are shared)


def small_space(fraction=0.3):
    # A tight cap: many (layers, hidden, ffn) combinations are masked.
    return SearchSpace.from_teacher(TEACHER, SpaceSettings(max_params_fraction=fraction))


def test_samples_are_valid_deterministic_and_reinforce_learns():
    space = small_space()
    state = controller.init_state(space, CFG, seed=0)
    valid = jnp.asarray(space.valid_tensor, jnp.float32)
    points = set(space.points)

    def draw(st, episode):
        keys = controller.episode_keys(0, episode, N)
        return np.asarray(controller.sample(st["params"], valid, keys, num_choices=space.num_choices, hidden_size=64))

    a0 = draw(state, 0)
    assert all(tuple(int(i) for i in row) in points for row in a0)
    np.testing.assert_array_equal(a0, draw(state, 0))  # same key, same draw
    assert not np.array_equal(a0, draw(state, 1))

    # Reward only candidate 0's number of layers; after some updates that choice becomes more likely.
    target = a0[0, 0]

    def prob_target(st):
        draws = np.concatenate([draw(st, 100 + e) for e in range(6)])
        return np.mean(draws[:, 0] == target)

    before = prob_target(state)
    for e in range(15):
        acts = draw(state, e)
        rewards = (acts[:, 0] == target).astype(np.float32)
        state = controller._update(state, valid, acts, rewards, space, CFG)
    assert int(state["episode"]) == 15
    assert prob_target(state) > before
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x: bool(jnp.all(jnp.isfinite(x))), state["params"]))
