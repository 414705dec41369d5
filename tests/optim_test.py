"""TrainState: one class for distillation and the fine-tuning grid; old checkpoints keep restoring."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.checkpoint import Checkpointer
from kdjax.optim import OptimConfig, TrainState


@flax.struct.dataclass
class _LegacyState:
    """The three-field state every KD checkpoint was written with before `lr` existed."""

    step: jax.Array
    params: dict
    opt_state: Any


def _params():
    return {"dense": {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.zeros((2,))}}


def test_distillation_state_restores_checkpoints_written_before_the_lr_field(tmp_path):
    opt = OptimConfig(1e-2, total_steps=4)
    state = TrainState.create(_params(), opt)
    state = state.apply_gradients(jax.tree.map(jnp.ones_like, state.params), opt)
    ck = Checkpointer(str(tmp_path), async_save=False)
    ck.save(1, _LegacyState(state.step, state.params, state.opt_state))
    step, restored, _ = ck.restore(jax.tree.map(np.zeros_like, TrainState.create(_params(), opt)))
    ck.close()
    assert step == 1 and isinstance(restored, TrainState) and not restored.scaled and restored.lr is None
    np.testing.assert_allclose(restored.params["dense"]["kernel"], state.params["dense"]["kernel"])


def test_scaled_state_round_trips_and_scales_the_unit_schedule(tmp_path):
    unit, peaked = OptimConfig(1.0, total_steps=4), OptimConfig(3e-3, total_steps=4)
    grads = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
    scaled = TrainState.create(_params(), unit, lr=jnp.asarray(3e-3, jnp.float32))
    plain = TrainState.create(_params(), peaked)
    step = jax.jit(lambda s, g: s.apply_gradients(g, unit))
    a, b = step(scaled, grads), plain.apply_gradients(grads, peaked)
    # AdamW is linear in its learning rate: a unit schedule scaled by the state's peak is the peaked schedule.
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8), a.params, b.params)
    np.testing.assert_allclose(a.learning_rate(unit), b.learning_rate(peaked), rtol=1e-6)
    ck = Checkpointer(str(tmp_path), async_save=False)
    ck.save(1, a)
    _, restored, _ = ck.restore(jax.tree.map(np.zeros_like, a))
    ck.close()
    assert restored.scaled and float(restored.lr) == np.float32(3e-3) and int(restored.step) == 1


def test_decay_mask_spares_biases_and_layernorm_in_both_layer_layouts():
    from kdjax.models import STACKED
    from kdjax.optim import decay_mask

    layer = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}, "LayerNorm": {"scale": jnp.ones((2,))}}
    stacked = {STACKED: jax.tree.map(lambda x: jnp.stack([x, x]), layer)}
    for params, prefix in ((layer, ()), (stacked, (STACKED,))):
        mask = decay_mask(params)
        sub = mask[prefix[0]] if prefix else mask
        # A stacked bias is 2-D and a stacked kernel 3-D: the layer axis must not count.
        assert sub["dense"]["kernel"] is True and sub["dense"]["bias"] is False and sub["LayerNorm"]["scale"] is False
