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


def test_sentence_cosine_hand_computed_masked_and_in_the_total():
    # Student width 1, teacher width 2: the projection's second half (columns 2-3) maps onto the teacher's last layer.
    proj = {"kernel": jnp.array([[9.0, 9.0, 1.0, 0.0]]), "bias": jnp.array([0.0, 0.0, 0.0, 1.0])}
    student = jnp.array([[[1.0], [3.0], [100.0]]])  # projected halves: (1, 1), (3, 1), (100, 1)
    teacher = jnp.array([[[2.0, 2.0], [2.0, 0.0], [0.0, 5.0]]])
    mask = jnp.array([[1, 1, 0]])  # the third token is padding
    # Means over the two real tokens: student (2, 1), teacher (2, 1): identical directions, loss 0.
    assert float(losses.sentence_cosine(student, teacher, proj, mask)) == pytest.approx(0.0, abs=1e-6)
    # With the padding counted the student mean is (104/3, 1) and the teacher's (4/3, 7/3).
    s, t = np.array([104 / 3, 1.0]), np.array([4 / 3, 7 / 3])
    want = 1 - s @ t / (np.linalg.norm(s) * np.linalg.norm(t))
    got = float(losses.sentence_cosine(student, teacher, proj, jnp.array([[1, 1, 1]])))
    assert got == pytest.approx(want, rel=1e-5) and got > 0.1
    # Only the direction counts (scale-free), and it enters the weighted total as its own part.
    assert float(losses.sentence_cosine(student, 7.0 * teacher, proj, mask)) == pytest.approx(0.0, abs=1e-6)
    cfg = losses.LossConfig(hidden_weight=0.0, sentence_weight=2.0)
    out = {"hidden_states": [jnp.zeros_like(student), student]}
    ref = {"hidden_states": [jnp.zeros_like(teacher), teacher]}
    total, parts = losses.distillation_loss(out, ref, proj, {"attention_mask": jnp.array([[1, 1, 1]])}, cfg, 1)
    assert set(parts) == {"sentence_cosine"} and float(total) == pytest.approx(2 * want, rel=1e-5)
    # It trains the student towards the teacher's embedding: a gradient step lowers it.
    loss = lambda x: losses.sentence_cosine(x, teacher, proj, jnp.array([[1, 1, 1]]))
    g = jax.grad(loss)(student)
    assert float(loss(student - 1.0 * g)) < got
