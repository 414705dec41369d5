"""A candidate's init state is built on the host: numpy draws and optimizer zeros, deterministic per key, the same
state optax and the modules' rules give, and no program compiled (nor lowered) per candidate shape."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import monitoring

from kdjax.losses import LossConfig, init_projection
from kdjax.models import INIT_STD, random_params, stack_layers
from kdjax.optim import OptimConfig, host_opt_init
from kdjax.spec import ArchSpec
from kdjax.steps import init_state

SPEC = ArchSpec(num_layers=3, hidden_size=32, num_heads=4, ffn_size=48, vocab_size=99, max_position_embeddings=40)
TEACHER = ArchSpec(num_layers=4, hidden_size=48, num_heads=4, ffn_size=64, vocab_size=99, max_position_embeddings=40)


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


def test_random_params_are_numpy_deterministic_per_key_and_differ_across_keys():
    a = random_params(SPEC, jax.random.PRNGKey(3), with_mlm_head=True)
    _assert_same(a, random_params(SPEC, jax.random.PRNGKey(3), with_mlm_head=True))
    # A typed key with the same bits draws the same values; a folded key draws others.
    _assert_same(a, random_params(SPEC, jax.random.key(3), with_mlm_head=True))
    b = random_params(SPEC, jax.random.fold_in(jax.random.PRNGKey(3), 1), with_mlm_head=True)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(a))
    kernels = [(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True) if x.ndim == 2]
    assert kernels and all(not np.array_equal(x, y) for x, y in kernels)


def test_scanned_random_params_are_the_per_layer_draw_stacked():
    per_layer = random_params(SPEC, jax.random.PRNGKey(0))
    scanned = random_params(SPEC, jax.random.PRNGKey(0), scan_layers=True)
    _assert_same(scanned, stack_layers(per_layer))
    assert scanned["encoder"]["layer"]["stacked"]["layer"]["output"]["dense"]["kernel"].shape == (3, 48, 32)


def test_projection_is_lecun_normal_with_zero_bias_and_deterministic():
    p = init_projection(jax.random.PRNGKey(0), 256, 384)
    assert p["kernel"].shape == (256, 768) and p["kernel"].dtype == np.float32
    assert abs(float(np.std(p["kernel"])) * np.sqrt(256) - 1.0) < 0.02
    np.testing.assert_array_equal(p["bias"], np.zeros(768, np.float32))
    np.testing.assert_array_equal(p["kernel"], init_projection(jax.random.PRNGKey(0), 256, 384)["kernel"])
    assert not np.array_equal(p["kernel"], init_projection(jax.random.PRNGKey(1), 256, 384)["kernel"])


@pytest.mark.parametrize("clip", [0.0, 1.0])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_host_optimizer_state_equals_optax_init(clip, scan_layers):
    opt = OptimConfig(learning_rate=1e-3, total_steps=10, warmup_steps=2, grad_clip_norm=clip)
    params = {"student": random_params(SPEC, jax.random.PRNGKey(0), scan_layers=scan_layers)}
    _assert_same(host_opt_init(opt.make(), params), opt.make().init(jax.tree.map(jnp.asarray, params)))


def test_host_optimizer_state_refuses_a_state_that_does_not_start_at_zero():
    copies_params = optax.GradientTransformation(lambda p: jax.tree.map(jnp.asarray, p), lambda u, s, p=None: (u, s))
    with pytest.raises(ValueError, match="does not start at zero"):
        host_opt_init(copies_params, {"w": np.ones((2, 3), np.float32)})


def test_init_state_lowers_and_compiles_nothing_per_candidate_shape():
    seen: list[str] = []
    watching = [False]

    def listen(name: str, secs: float, **kwargs) -> None:
        # Lowering is counted too: a per-shape program found in the persistent cache is still lowered.
        if watching[0] and name.endswith(("jaxpr_to_mlir_module_duration", "backend_compile_duration")):
            seen.append(name)

    monitoring.register_event_duration_secs_listener(listen)
    opt, loss = OptimConfig(learning_rate=1e-3, total_steps=10), LossConfig()
    init_state(jax.random.PRNGKey(0), SPEC, TEACHER, opt, loss)  # once per process: key split, the zeros probe
    watching[0] = True
    shapes = [SPEC.student(num_layers=2, hidden_size=16, num_heads=2, ffn_size=24), SPEC.student(num_layers=4)]
    states = [init_state(jax.random.PRNGKey(1), s, TEACHER, opt, loss, scan_layers=True) for s in shapes]
    watching[0] = False
    assert seen == []
    for spec, state in zip(shapes, states, strict=True):
        assert state.params["projection"]["kernel"].shape == (spec.hidden_size, 2 * TEACHER.hidden_size)
        leaves = jax.tree.leaves(state)
        assert all(isinstance(x, np.ndarray) for x in leaves)
        assert int(state.step) == 0 and not any(np.any(x) for x in jax.tree.leaves(state.opt_state))
    embedding = states[1].params["student"]["embeddings"]["word_embeddings"]["embedding"]
    assert abs(float(np.std(embedding)) - INIT_STD) < 0.05 * INIT_STD


def test_init_state_copies_given_params_so_the_donating_step_cannot_consume_them():
    given = jax.tree.map(jnp.asarray, random_params(SPEC, jax.random.PRNGKey(2)))
    state = init_state(jax.random.PRNGKey(0), SPEC, TEACHER, OptimConfig(1e-3, 10), LossConfig(), student_params=given)
    _assert_same(state.params["student"], given)
    leaf = state.params["student"]["embeddings"]["word_embeddings"]["embedding"]
    assert isinstance(leaf, np.ndarray) and leaf is not given["embeddings"]["word_embeddings"]["embedding"]
