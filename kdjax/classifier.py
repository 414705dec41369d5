"""The GLUE classification head over a BERT-family encoder, and which sentence vector (`glue.pooling`) it reads.

BERT's head reads its pooler (dense + tanh) on the first token. A sentence-transformers model such as
all-MiniLM-L6-v2 is trained on the mean of its last hidden states over the real tokens instead: its checkpoint still
holds a BERT pooler, but one left from the model it started from and never trained for its objective (its output
barely varies between sentences; docs/results.md). The head is therefore a choice:

  pooler        the checkpoint's pooler on the first token (a fresh one when the checkpoint has none): BERT's head;
  fresh_pooler  the same shape, its dense freshly initialised even when the checkpoint has one;
  mean          the mean of the last hidden states over non-pad tokens (as sentence-transformers pools), no pooler;
  cls           the first token's last hidden state as it is, no pooler or other dense (the sentence vector of a
                sentence-transformers model pooling by its CLS token; DistilBERT's own head adds a dense + ReLU);
  auto          `mean` when the run's teacher folder is a sentence-transformers model that mean-pools, else `pooler`.

`auto` is resolved once per run from the teacher (`resolve_pooling`), so every row of a table -- the teacher and
the students distilled from it -- trains the same head, and the resolved name is part of the recorded recipe.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax.numpy as jnp

from kdjax.models import INIT_STD, Dtype, Encoder
from kdjax.spec import ArchSpec

# Heads a fine-tuning run can train; 'auto' (config only) resolves to one of them.
POOLINGS = ("pooler", "fresh_pooler", "mean", "cls")
# A bi-encoder's score is this times the cosine: STS-B's labels run from 0 to 5.
BI_SCALE = 5.0


class SequenceClassifier(nn.Module):
    """Encoder + sentence vector (`pooling`) + dropout + linear head, for GLUE fine-tuning.

    `num_labels` == 1 is regression (STS-B). `return_encoder` also returns the encoder's outputs (task distillation
    matches hidden states and attention relations). 'pooler' and 'fresh_pooler' are the same network; they differ
    only in how kdjax.finetune_steps.init_params starts the pooler.

    `bi_encoder` (regression only): the rows come in pairs (a0, b0, a1, b1, ...: kdjax.glue_data.make_batch of a
    bi-encoded task), each sentence encoded alone, and the score is BI_SCALE x the cosine of the pair's sentence
    vectors, with no classifier: sentence-transformers' CosineSimilarityLoss (MSE between the cosine and the label
    / 5) up to the constant factor, so the score is in the labels' units. At init it is the embedding probe's cosine
    (kdjax.embedding_probe) for the `mean` head.
    """

    spec: ArchSpec
    num_labels: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.1
    pooling: str = "pooler"
    bi_encoder: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        *,
        deterministic: bool = True,
        return_encoder: bool = False,
        return_qkv: bool = False,
    ):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        out = Encoder(self.spec, self.dtype, self.dropout_rate, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, return_qkv=return_qkv
        )
        last = out["hidden_states"][-1]
        if self.pooling == "mean":
            pooled = masked_mean(last, attention_mask).astype(self.dtype)
        elif self.pooling == "cls":
            pooled = last[:, 0]
        else:
            dense = nn.Dense(
                self.spec.hidden_size, dtype=self.dtype, kernel_init=nn.initializers.normal(INIT_STD), name="pooler"
            )
            pooled = jnp.tanh(dense(last[:, 0]))
        if self.bi_encoder:
            if self.num_labels != 1:
                raise ValueError("a bi-encoder head is built for regression (one output) only")
            u, v = pooled[0::2].astype(jnp.float32), pooled[1::2].astype(jnp.float32)
            scores = BI_SCALE * cosine(u, v)[:, None]
            return (scores, out) if return_encoder else scores
        pooled = nn.Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
        classifier = nn.Dense(
            self.num_labels, dtype=jnp.float32, kernel_init=nn.initializers.normal(INIT_STD), name="classifier"
        )
        logits = classifier(pooled).astype(jnp.float32)
        return (logits, out) if return_encoder else logits


def cosine(u, v):
    """Row-wise cosine with finite gradients everywhere: a zero vector (a filler pair's all-pad rows) scores 0, and
    the norms are floored inside the square root, since the gradient of `jnp.linalg.norm` at 0 is NaN, which a
    zero loss weight does not cancel (0 x NaN)."""
    norm_u = jnp.sqrt(jnp.maximum(jnp.sum(u * u, axis=-1), 1e-12))
    norm_v = jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1), 1e-12))
    return jnp.sum(u * v, axis=-1) / (norm_u * norm_v)


def masked_mean(hidden, attention_mask):
    """Mean over the tokens `attention_mask` marks real ([B, T, H] -> [B, H], in fp32); pad positions add nothing.

    The count is floored at 1 so an all-pad filler row of a batch gives zeros, not NaN (it carries no loss weight).
    """
    mask = attention_mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def sentence_transformers_pooling(folder: str) -> str | None:
    """How the sentence-transformers model in `folder` pools ('mean', 'cls', 'max', ...), or None when `folder` is
    not one: it has no `modules.json` naming a Pooling module whose `config.json` sets a `pooling_mode_*` flag.

    Those are the files sentence-transformers repos ship (sentence-transformers/all-MiniLM-L6-v2: `modules.json`,
    `1_Pooling/config.json` with `"pooling_mode_mean_tokens": true`); unreadable files count as "not one".
    """
    try:
        with open(os.path.join(folder, "modules.json")) as f:
            modules = json.load(f)
        paths = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Pooling")]
        if not paths:
            return None
        with open(os.path.join(folder, paths[0], "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if not isinstance(cfg, dict):
        return None
    modes = [k.removeprefix("pooling_mode_") for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
    if not modes:
        return None
    # 'mean_tokens' -> 'mean'; several flags (concatenated vectors) are reported joined.
    return "+".join(m.removesuffix("_tokens") for m in modes)


def resolve_pooling(configured: str, teacher_folder: str) -> tuple[str, str]:
    """(head, why) for `glue.pooling`: a head name stays as it is; 'auto' is 'mean' when the teacher folder is a
    sentence-transformers model that mean-pools, else 'pooler' (BERT's head)."""
    if configured != "auto":
        return configured, "glue.pooling"
    st = sentence_transformers_pooling(teacher_folder) if teacher_folder else None
    if st == "mean":
        return "mean", "auto: the teacher is a sentence-transformers model trained with mean pooling"
    if st is not None:
        return "pooler", f"auto: the teacher is a sentence-transformers model pooling by {st}, not mean"
    return "pooler", "auto: the teacher is not a sentence-transformers model"


def resolve_bi_encoder_tasks(configured: tuple[str, ...], teacher_folder: str) -> tuple[tuple[str, ...], str]:
    """(tasks, why) for `glue.bi_encoder_tasks`: a list stays as it is; 'auto' is STS-B when the teacher folder is a
    sentence-transformers model, a bi-encoder trained on the cosine of its sentence vectors (all-MiniLM-L6-v2: its
    STS-B at the `:cpu` budget is 89.1 bi-encoded against 81.6 as a cross-encoder, its student's 82.9 against 52.8;
    docs/results.md), else none: GLUE's cross-encoder, as BERTs are scored."""
    if configured != ("auto",):
        return configured, "glue.bi_encoder_tasks"
    st = sentence_transformers_pooling(teacher_folder) if teacher_folder else None
    if st is not None:
        return ("stsb",), "auto: the teacher is a sentence-transformers model, a bi-encoder"
    return (), "auto: the teacher is not a sentence-transformers model"


def recorded_recipe(recipe: dict | None) -> dict:
    """A recipe as a score recorded it, with the head filled in for rows written before glue.pooling existed (they
    trained BERT's head, 'pooler') and the pair encoding for rows written before glue.bi_encoder_tasks ('cross').
    The glue stage (is a score current?) and the report (one recipe?) compare these."""
    return {"pooling": "pooler", "pair_encoding": "cross", **(recipe or {})}


# How the report and logs name each head.
DESCRIPTIONS = {
    "pooler": "the checkpoint's pooler (dense+tanh; fresh if it has none) on [CLS] -> dropout -> linear",
    "fresh_pooler": "fresh pooler (dense+tanh) on [CLS] -> dropout -> linear",
    "mean": "mean of the last hidden states over real tokens -> dropout -> linear",
    "cls": "[CLS] last hidden state (no pooler) -> dropout -> linear",
}
# How the report and logs name the bi-encoder (glue.bi_encoder_tasks).
BI_ENCODER = (
    f"each sentence encoded alone, the head's sentence vector of each, score = {BI_SCALE:g} x their cosine, "
    "no classifier"
)
