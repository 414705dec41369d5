"""Distillation losses against small hand-computed cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses


def test_uniform_last_mapping_matches_seed():
    # Ls=3, Lt=12: floor(i*12/3) = 0, 4, 8 and 12-3+i = 9, 10, 11.
    assert losses.uniform_last_mapping(3, 12) == [(0, 9), (4, 10), (8, 11)]
    assert losses.uniform_last_mapping(6, 6) == [(i, i) for i in range(6)]
    assert losses.uniform_last_mapping(4, 6) == [(0, 2), (1, 3), (3, 4), (4, 5)]


def test_hidden_mse_hand_computed():
    # One student layer (Ls=1), teacher with 2 layers: mapping (0, 1) -> teacher layers 1 and 2 (index 0 = embeddings).
    s = [jnp.zeros((1, 2, 1)), jnp.array([[[1.0], [2.0]]])]
    t = [jnp.zeros((1, 2, 1)), jnp.array([[[1.0], [1.0]]]), jnp.array([[[3.0], [0.0]]])]
    proj = {"kernel": jnp.array([[1.0, 1.0]]), "bias": jnp.zeros(2)}
    mask = jnp.array([[1, 1]])
    # token 0: pred (1,1) vs (1,3): mse = (0 + 4)/2 = 2; token 1: pred (2,2) vs (1,0): (1 + 4)/2 = 2.5
    assert float(losses.hidden_mse(s, t, proj, mask)) == pytest.approx(2.25)
    # Padding is excluded: only token 0 counts.
    assert float(losses.hidden_mse(s, t, proj, jnp.array([[1, 0]]))) == pytest.approx(2.0)


def test_relation_kl_zero_for_identical_and_positive_otherwise():
    rng = jax.random.PRNGKey(0)
    q = jax.random.normal(rng, (2, 5, 4, 8))
    qkv = (q, q * 0.5, -q)
    mask = jnp.ones((2, 5), jnp.int32)
    assert float(losses.attention_relation_kl(qkv, qkv, mask, heads=4)) == pytest.approx(0.0, abs=1e-6)
    # Different head counts (2 heads x 16 vs 4 heads x 8) of the same hidden vectors give identical relations.
    same = tuple(x.reshape(2, 5, 2, 16) for x in qkv)
    assert float(losses.attention_relation_kl(same, qkv, mask, heads=2)) == pytest.approx(0.0, abs=1e-6)
    other = tuple(jax.random.normal(jax.random.PRNGKey(i), (2, 5, 4, 8)) for i in range(3))
    assert float(losses.attention_relation_kl(other, qkv, mask, heads=4)) > 0.01


def test_relation_kl_hand_computed_one_relation():
    # One head, two tokens, d=1: teacher x=(0, 0) -> uniform relations; student x=(1, 0).
    t = jnp.zeros((1, 2, 1, 1))
    s = jnp.array([[[[1.0]], [[0.0]]]])
    mask = jnp.ones((1, 2))
    # student relation row 0: softmax([1, 0]); row 1: softmax([0, 0]) -> KL(u || p) only for row 0.
    p = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    kl_row0 = np.sum(0.5 * (np.log(0.5) - np.log(p)))
    expected = kl_row0 / 2  # averaged over the two query tokens, one relation (Q-Q only)
    got = losses.attention_relation_kl((s,), (t,), mask, heads=1)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_logit_kl_hand_computed_and_masked():
    t = jnp.array([[[0.0, 0.0], [5.0, 0.0]]])
    s = jnp.array([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    mlm = jnp.array([[1, 0]])  # only position 0 is masked
    # T=1: teacher (0.5, 0.5), student (0.75, 0.25): KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    assert float(losses.logit_kl(s, t, mlm, 1.0)) == pytest.approx(expected, rel=1e-5)
    # Temperature scales by T^2 of the softened KL.
    assert float(losses.logit_kl(s, s, mlm, 2.0)) == pytest.approx(0.0, abs=1e-7)


def test_combined_loss_weights_and_parts():
    cfg = losses.LossConfig(hidden_weight=2.0, attention_relation_weight=0.5)
    h = [jnp.ones((1, 3, 4))] * 3
    qkv = [(jnp.ones((1, 3, 2, 2)),) * 3]
    out = {"hidden_states": h, "qkv": qkv}
    proj = {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)}
    batch = {"attention_mask": jnp.ones((1, 3)), "mlm_mask": jnp.zeros((1, 3))}
    total, parts = losses.distillation_loss(out, out, proj, batch, cfg, heads=2)
    assert set(parts) == {"hidden_mse", "attention_relation"}
    assert float(total) == pytest.approx(2.0 * float(parts["hidden_mse"]) + 0.5 * float(parts["attention_relation"]))
    assert float(parts["hidden_mse"]) == pytest.approx(1.0)  # zero projection vs all-ones teacher states


def test_relation_heads_must_divide_both():
    cfg = losses.LossConfig(relation_heads=0)
    assert losses.relation_heads(cfg, 384, 768, 6, 12) == 6
    with pytest.raises(ValueError):
        losses.relation_heads(losses.LossConfig(relation_heads=5), 384, 768, 6, 12)
