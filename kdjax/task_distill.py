"""Task-specific distillation (TinyBERT's second stage): a student learns a GLUE task from the fine-tuned teacher.

Classification: temperature-scaled KL(teacher || student) on the logits, times T^2 (the soft cross-entropy of Hinton
et al.; KL has the same gradient and is 0 when the student matches the teacher). STS-B: MSE to the teacher's score.
`alpha` mixes in the hard-label loss on the original (non-augmented) examples. Optional intermediate losses reuse
the KD stage's: hidden-state MSE (Uniform+Last mapping through a trained Linear(Hs, 2*Ht)) and MiniLMv2 attention
relations of the last layer. The teacher's logits are computed once per training example (augmented ones included)
before training (kdjax.glue_stage does it once per task for all its students), so an epoch costs the student's steps
only unless an intermediate loss needs the teacher's states.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import glue_data
from kdjax.losses import LossConfig, attention_relation_kl, hidden_mse, relation_heads
from kdjax.models import Encoder
from kdjax.spec import ArchSpec


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Hashable loss settings (a static argument of the jitted step); `teacher` is set when states are matched."""

    temperature: float = 1.0
    alpha: float = 0.0
    hidden_weight: float = 0.0
    attention_relation_weight: float = 0.0
    relation_heads: int = 0
    augment_factor: int = 0
    augment_prob: float = 0.4
    augment_top_k: int = 15
    teacher: ArchSpec | None = None
    teacher_dtype: str = "float32"

    @property
    def needs_states(self) -> bool:
        return self.hidden_weight > 0 or self.attention_relation_weight > 0

    def to_dict(self) -> dict:
        """What decides the distilled score (recorded next to it; the teacher is recorded as its source)."""
        d = dataclasses.asdict(self)
        d.pop("teacher")
        d.pop("teacher_dtype")
        return d


@dataclasses.dataclass
class DistillData:
    """The training set a student distils on: originals then augmented copies, with the teacher's logits."""

    cfg: DistillConfig
    train: glue_data.Encoded
    # 1 for original examples (they carry a gold label), 0 for augmented copies.
    hard: np.ndarray
    teacher_logits: np.ndarray  # [N, num_labels] float32
    # The fine-tuned teacher's encoder params, only when an intermediate loss needs its states.
    teacher_encoder: dict | None = None
    num_original: int = 0


def _wmean(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def prediction_loss(
    logits: jax.Array, batch: dict, cfg: DistillConfig, regression: bool
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(1 - alpha) * soft loss to the teacher + alpha * hard-label loss on the originals; returns (total, parts)."""
    w, t = batch["weights"], batch["teacher_logits"].astype(jnp.float32)
    hard_w = w * batch["hard"]
    if regression:
        soft = _wmean(jnp.square(logits[:, 0] - t[:, 0]), w)
        hard = _wmean(jnp.square(logits[:, 0] - batch["labels"].astype(jnp.float32)), hard_w)
    else:
        temp = cfg.temperature
        log_ps = jax.nn.log_softmax(logits / temp, axis=-1)
        log_pt = jax.nn.log_softmax(t / temp, axis=-1)
        soft = _wmean(jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1), w) * temp**2
        hard = _wmean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]), hard_w)
    total = (1.0 - cfg.alpha) * soft + cfg.alpha * hard
    return total, {"soft": soft, "hard": hard}


def intermediate_loss(
    student_out: dict,
    teacher_encoder: dict,
    projection: dict | None,
    batch: dict,
    cfg: DistillConfig,
    student: ArchSpec,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Hidden-state MSE and last-layer attention relations against the fine-tuned teacher's encoder (no gradient)."""
    teacher = cfg.teacher
    assert teacher is not None
    t_out = cast(
        dict,
        Encoder(teacher, jnp.dtype(cfg.teacher_dtype)).apply(
            {"params": teacher_encoder},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            return_qkv=cfg.attention_relation_weight > 0,
        ),
    )
    t_out = jax.lax.stop_gradient(t_out)
    mask, total, parts = batch["attention_mask"], jnp.zeros((), jnp.float32), {}
    if cfg.hidden_weight > 0:
        assert projection is not None
        parts["hidden_mse"] = hidden_mse(student_out["hidden_states"], t_out["hidden_states"], projection, mask)
        total = total + cfg.hidden_weight * parts["hidden_mse"]
    if cfg.attention_relation_weight > 0:
        heads = relation_heads(
            LossConfig(relation_heads=cfg.relation_heads),
            student.hidden_size,
            teacher.hidden_size,
            student.num_heads,
            teacher.num_heads,
        )
        parts["attention_relation"] = attention_relation_kl(student_out["qkv"][-1], t_out["qkv"][-1], mask, heads)
        total = total + cfg.attention_relation_weight * parts["attention_relation"]
    return total, parts


def kl_to_teacher(student_logits: np.ndarray, teacher_logits: np.ndarray, temperature: float = 1.0) -> float:
    """Mean KL(teacher || student) of softmax(logits / T) (classification) or MSE (one output), on the host."""
    s, t = np.asarray(student_logits, np.float64), np.asarray(teacher_logits, np.float64)
    if s.shape[-1] == 1:
        return float(np.mean((s - t) ** 2))

    def log_softmax(x):
        x = x / temperature
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lt, ls = log_softmax(t), log_softmax(s)
    return float(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=-1)))


def prepare(
    cfg: DistillConfig,
    train: glue_data.Encoded,
    teacher_logits_fn: Callable[[glue_data.Encoded], np.ndarray],
    augmenter: Callable[[glue_data.Encoded], glue_data.Encoded] | None = None,
) -> DistillData:
    """Originals, then the augmented copies `augmenter` makes of them, with the teacher's logits on all of them.

    `teacher_logits_fn(Encoded) -> [N, C]` runs the fine-tuned teacher; `augmenter` (kdjax.augment) is only used
    when cfg.augment_factor > 0.
    """
    n = len(train)
    data = train
    if cfg.augment_factor > 0 and augmenter is not None:
        extra = augmenter(train)
        pair = None if train.pair_ids is None or extra.pair_ids is None else train.pair_ids + extra.pair_ids
        data = glue_data.Encoded(
            train.input_ids + extra.input_ids,
            train.token_type_ids + extra.token_type_ids,
            np.concatenate([train.labels, extra.labels]),
            pair,
        )
    hard = np.zeros(len(data), np.float32)
    hard[:n] = 1.0
    logits = np.asarray(teacher_logits_fn(data), np.float32)
    return DistillData(cfg, data, hard, logits, num_original=n)
