"""The pure, jitted steps of GLUE fine-tuning and task distillation: a classifier head over a BERT-family encoder.

`train_step` is one AdamW step on a learning-rate-scaled `optim.TrainState` (the schedule peaks at 1 and the grid
point's peak rate is an array in the state), so one compiled step per (head, bucketed length) serves every grid point
of kdjax.finetune. The batch is sharded over the mesh's 'data' axis, state and key are replicated, and the state is
donated. Dropout draws from `fold_in(key, step)`. STS-B is regression (one output, MSE); every other task is softmax
cross-entropy; with `distill` the loss is kdjax.task_distill's instead.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, cast

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from kdjax.classifier import SequenceClassifier
from kdjax.errors import KdjaxError
from kdjax.optim import OptimConfig, TrainState
from kdjax.sharding import shardings
from kdjax.spec import ArchSpec
from kdjax.task_distill import DistillConfig, intermediate_loss, prediction_loss


class FinetuneError(KdjaxError, RuntimeError):
    """Fine-tuning diverged (non-finite loss) or its inputs do not fit the architecture."""


@dataclasses.dataclass(frozen=True)
class Head:
    """Static description of the fine-tuned network (a hashable argument of the jitted steps)."""

    spec: ArchSpec
    num_labels: int
    dtype_name: str = "float32"
    dropout_rate: float = 0.1
    # The sentence vector the classifier reads (kdjax.classifier.POOLINGS; 'auto' is resolved before this).
    pooling: str = "pooler"
    # Pairs encoded sentence by sentence and scored by the cosine (kdjax.classifier.SequenceClassifier).
    bi_encoder: bool = False

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def module(self) -> SequenceClassifier:
        return SequenceClassifier(
            self.spec, self.num_labels, jnp.dtype(self.dtype_name), self.dropout_rate, self.pooling, self.bi_encoder
        )


def init_params(rng: jax.Array, head: Head, pretrained: dict) -> dict:
    """A fresh classifier whose encoder is the pretrained weights; its pooler is the checkpoint's only with
    pooling 'pooler' and a checkpoint that has one ('fresh_pooler' keeps the fresh draw; 'mean' and 'cls' have no
    pooler)."""
    ids = jnp.zeros((2 if head.bi_encoder else 1, 8), jnp.int32)  # a bi-encoder reads a pair's two rows
    params = dict(head.module().init(rng, ids, jnp.ones_like(ids))["params"])
    fresh = jax.tree.structure(params["bert"])
    # jaxlib's PyTreeDef type stub declares no comparison, though PyTreeDefs compare by structure.
    if jax.tree.structure(pretrained["encoder"]) != fresh:  # type: ignore[operator]
        raise FinetuneError("pretrained encoder parameters do not match the architecture spec")
    # Copies: the train step donates its state, which must never free the caller's pretrained arrays.
    params["bert"] = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), pretrained["encoder"])
    if head.pooling == "pooler" and "pooler" in pretrained:
        params["pooler"] = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), dict(pretrained["pooler"]))
    return params


def weighted_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array, regression: bool) -> jax.Array:
    """Mean MSE (regression) or cross-entropy over the real rows of a batch (filler rows have weight 0)."""
    if regression:
        per = jnp.square(logits[:, 0] - labels.astype(jnp.float32))
    else:
        per = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(per * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    teacher_encoder: dict | None,
    *,
    head: Head,
    opt: OptimConfig,
    distill: DistillConfig | None,
) -> tuple[TrainState, dict]:
    """One AdamW step (schedule peaking at 1, scaled by the grid point's `state.lr`); dropout: fold_in(key, step)."""
    rng = jax.random.fold_in(key, state.step)
    states = distill is not None and distill.needs_states
    relations = distill is not None and distill.attention_relation_weight > 0

    def loss_fn(params: dict) -> tuple[jax.Array, dict]:
        out: Any = head.module().apply(
            {"params": params["model"]},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=False,
            return_encoder=states,
            return_qkv=states and relations,
            rngs={"dropout": rng},
        )
        logits, enc = out if states else (out, None)
        if distill is None:
            return weighted_loss(logits, batch["labels"], batch["weights"], head.regression), {}
        loss, parts = prediction_loss(logits, batch, distill, head.regression)
        if states:
            assert enc is not None and teacher_encoder is not None
            extra, more = intermediate_loss(enc, teacher_encoder, params.get("projection"), batch, distill, head.spec)
            loss, parts = loss + extra, {**parts, **more}
        return loss, parts

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": state.learning_rate(opt), **parts}
    return state.apply_gradients(grads, opt), metrics


def logits_step(params: dict, batch: dict, *, head: Head) -> jax.Array:
    out = head.module().apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return cast(jax.Array, out)


@functools.lru_cache(maxsize=32)
def jitted_train_step(head: Head, opt: OptimConfig, distill: DistillConfig | None, mesh: Mesh):
    data, rep = shardings(mesh)
    fn = functools.partial(train_step, head=head, opt=opt, distill=distill)
    return jax.jit(fn, in_shardings=(rep, data, rep, rep), out_shardings=(rep, rep), donate_argnums=(0,))


@functools.lru_cache(maxsize=32)
def jitted_logits_step(head: Head, mesh: Mesh):
    data, rep = shardings(mesh)
    return jax.jit(functools.partial(logits_step, head=head), in_shardings=(rep, data), out_shardings=data)
