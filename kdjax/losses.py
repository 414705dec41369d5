"""Distillation losses (pure jnp): hidden-state MSE (the original pipeline's), MiniLMv2 attention relations, logit KL,
and a sentence-embedding cosine (sentence-transformers' distillation target: the mean-pooled last layer).

All token averages skip padding (`attention_mask`); the logit KL averages over the masked-LM positions only.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models import host_rng


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Hashable loss settings (a static argument of the jitted steps)."""

    hidden_weight: float = 1.0
    attention_relation_weight: float = 0.0
    logit_weight: float = 0.0
    sentence_weight: float = 0.0
    temperature: float = 2.0
    relation_heads: int = 0

    @property
    def needs_qkv(self) -> bool:
        return self.attention_relation_weight > 0

    @property
    def needs_logits(self) -> bool:
        return self.logit_weight > 0


def uniform_last_mapping(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Seed's "Uniform+Last": student layer i (0-based) reads teacher layers floor(i*Lt/Ls) and Lt-Ls+i."""
    return [
        (i * teacher_layers // student_layers, max(0, teacher_layers - student_layers + i))
        for i in range(student_layers)
    ]


def init_projection(rng: jax.Array, student_hidden: int, teacher_hidden: int) -> dict:
    """Linear(Hs, 2*Ht) shared by every student layer (the original pipeline's), LeCun-normal kernel, zero bias;
    numpy arrays drawn on the host from `rng` (kdjax.models.host_rng), so no program is compiled per width."""
    kernel = host_rng(rng).standard_normal((student_hidden, 2 * teacher_hidden), dtype=np.float32)
    kernel /= np.float32(math.sqrt(student_hidden))
    return {"kernel": kernel, "bias": np.zeros((2 * teacher_hidden,), np.float32)}


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x[B, T] over positions where mask[B, T] is set."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def hidden_mse(student_hidden, teacher_hidden, projection: dict, attention_mask: jax.Array) -> jax.Array:
    """Seed hidden-state MSE: each student layer output, projected to 2*Ht, vs its two mapped teacher layers.

    `student_hidden` / `teacher_hidden` include the embedding output at index 0 (as `Encoder` returns them).
    """
    ls, lt = len(student_hidden) - 1, len(teacher_hidden) - 1
    losses = []
    for i, (a, b) in enumerate(uniform_last_mapping(ls, lt)):
        s = student_hidden[i + 1].astype(jnp.float32) @ projection["kernel"] + projection["bias"]
        t = jnp.concatenate([teacher_hidden[a + 1], teacher_hidden[b + 1]], axis=-1).astype(jnp.float32)
        losses.append(_masked_mean(jnp.mean((s - t) ** 2, axis=-1), attention_mask))
    return jnp.mean(jnp.stack(losses))


def _mean_pool(x: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of x[B, T, H] over the unpadded tokens of each row: [B, H]."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    return jnp.sum(x.astype(jnp.float32) * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def sentence_cosine(student_last, teacher_last, projection: dict, attention_mask: jax.Array) -> jax.Array:
    """1 - cosine between the mean-pooled last layers, the student's projected to the teacher's width.

    A mean-pooling sentence-transformers teacher (all-MiniLM-L6-v2) owes its STS skill to this embedding's geometry,
    which a per-token MSE weighs by the largest hidden dimensions; this term targets the embedding itself, as
    sentence-transformers distils smaller models. The shared projection's second half is the one the hidden MSE maps
    onto the teacher's last layer (Uniform+Last: the student's last layer reads the teacher's last).
    """
    ht = teacher_last.shape[-1]
    s = (student_last.astype(jnp.float32) @ projection["kernel"] + projection["bias"])[..., ht:]
    s, t = _mean_pool(s, attention_mask), _mean_pool(teacher_last, attention_mask)
    cos = jnp.sum(s * t, axis=-1) / jnp.maximum(jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(t, axis=-1), 1e-6)
    return jnp.mean(1.0 - cos)


def _relation_log_probs(x: jax.Array, heads: int, attention_mask: jax.Array) -> jax.Array:
    """log softmax(X_r X_r^T / sqrt(d_r)) over keys for x[B, T, N, D] regrouped into `heads` relation heads."""
    b, t = x.shape[:2]
    x = x.reshape(b, t, heads, -1).astype(jnp.float32)
    scores = jnp.einsum("bqrd,bkrd->brqk", x, x) / math.sqrt(x.shape[-1])
    scores = jnp.where(attention_mask[:, None, None, :].astype(bool), scores, -1e9)
    return jax.nn.log_softmax(scores, axis=-1)


def attention_relation_kl(student_qkv, teacher_qkv, attention_mask: jax.Array, heads: int) -> jax.Array:
    """MiniLMv2: KL(teacher || student) of Q-Q, K-K and V-V self-attention relations, summed over the three.

    `student_qkv` / `teacher_qkv` are the (q, k, v) of one layer each, shaped [B, T, heads, head_dim]; the
    relation head count `heads` must divide both hidden sizes, so teacher and student head counts may differ.
    """
    total: jax.Array | float = 0.0
    for s, t in zip(student_qkv, teacher_qkv, strict=True):
        log_ps = _relation_log_probs(s, heads, attention_mask)
        log_pt = _relation_log_probs(t, heads, attention_mask)
        kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)  # [B, R, T]
        total = total + _masked_mean(jnp.mean(kl, axis=1), attention_mask)
    return jnp.asarray(total)


def logit_kl(student_logits, teacher_logits, mlm_mask: jax.Array, temperature: float) -> jax.Array:
    """Temperature KL(teacher || student) on masked-LM logits at the masked positions, scaled by T^2."""
    log_ps = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    log_pt = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
    return _masked_mean(kl, mlm_mask) * temperature**2


def relation_heads(cfg: LossConfig, student_hidden: int, teacher_hidden: int, student_heads: int, teacher_heads: int):
    """Relation heads: the configured count, or gcd of the head counts (divides both hidden sizes)."""
    heads = cfg.relation_heads or math.gcd(student_heads, teacher_heads)
    if student_hidden % heads or teacher_hidden % heads:
        raise ValueError(
            f"kd.loss.relation_heads={heads} must divide both hidden sizes ({student_hidden}, {teacher_hidden})"
        )
    return heads


def distillation_loss(student_out: dict, teacher_out: dict, projection: dict, batch: dict, cfg: LossConfig, heads: int):
    """Weighted sum of the enabled losses; returns (total, {part: value})."""
    parts = {}
    if cfg.hidden_weight > 0:
        parts["hidden_mse"] = hidden_mse(
            student_out["hidden_states"], teacher_out["hidden_states"], projection, batch["attention_mask"]
        )
    if cfg.attention_relation_weight > 0:
        parts["attention_relation"] = attention_relation_kl(
            student_out["qkv"][-1], teacher_out["qkv"][-1], batch["attention_mask"], heads
        )
    if cfg.logit_weight > 0:
        parts["logit_kl"] = logit_kl(student_out["logits"], teacher_out["logits"], batch["mlm_mask"], cfg.temperature)
    if cfg.sentence_weight > 0:
        parts["sentence_cosine"] = sentence_cosine(
            student_out["hidden_states"][-1], teacher_out["hidden_states"][-1], projection, batch["attention_mask"]
        )
    weights = {
        "hidden_mse": cfg.hidden_weight,
        "attention_relation": cfg.attention_relation_weight,
        "logit_kl": cfg.logit_weight,
        "sentence_cosine": cfg.sentence_weight,
    }
    total = sum(weights[k] * v for k, v in parts.items())
    return total, parts
