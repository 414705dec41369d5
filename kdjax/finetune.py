"""GLUE fine-tuning and evaluation of any BERT-family checkpoint: pure jitted, data-parallel train and eval steps.

`train_step(state, batch, key)` is compiled once per (head, optimizer, mesh, bucketed length); the batch is sharded
over the mesh's 'data' axis, state and key are replicated, and the state is donated. Dropout draws from
`fold_in(key, step)`, data order from `default_rng([seed, epoch])`, so a run is reproducible from the recipe alone.
STS-B is regression (one output, MSE); every other task is softmax cross-entropy.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from kdjax import glue_data
from kdjax.errors import KdjaxError
from kdjax.metrics import task_score, task_scores
from kdjax.models import SequenceClassifier
from kdjax.optim import OptimConfig, TrainState
from kdjax.sharding import make_mesh, replicate, shard_batch, shardings
from kdjax.spec import ArchSpec

log = logging.getLogger(__name__)


class FinetuneError(KdjaxError, RuntimeError):
    """Fine-tuning diverged (non-finite loss)."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides a GLUE score besides the model; recorded next to every score."""

    learning_rate: float = 2e-5
    per_device_batch_size: int = 32
    num_epochs: int = 3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_seq_len: int = 128
    # 0 = the whole training set; otherwise a seeded random subset of this size.
    max_train_examples: int = 0
    dropout_rate: float = 0.1
    grad_clip_norm: float = 1.0
    # Batches are padded to a multiple of this many tokens (capped at max_seq_len).
    bucket: int = 32
    compute_dtype: str = "float32"
    seed: int = 0
    # Regression (STS-B): start the head's bias at the mean training label, so the few fine-tuning steps at a
    # BERT-sized learning rate go into the correlation rather than into moving the output from 0 to ~2.7.
    regression_bias_to_label_mean: bool = True

    @classmethod
    def from_config(cls, glue_cfg, seed: int, compute_dtype: str = "float32") -> Recipe:
        return cls(
            learning_rate=float(glue_cfg.learning_rate),
            per_device_batch_size=int(glue_cfg.per_device_batch_size),
            num_epochs=int(glue_cfg.num_epochs),
            warmup_fraction=float(glue_cfg.warmup_fraction),
            weight_decay=float(glue_cfg.weight_decay),
            max_seq_len=int(glue_cfg.max_seq_len),
            max_train_examples=int(glue_cfg.max_train_examples),
            dropout_rate=float(glue_cfg.get("dropout_rate", 0.1)),
            compute_dtype=compute_dtype,
            seed=int(seed),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Head:
    """Static description of the fine-tuned network (a hashable argument of the jitted steps)."""

    spec: ArchSpec
    num_labels: int
    dtype_name: str = "float32"
    dropout_rate: float = 0.1

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def module(self) -> SequenceClassifier:
        return SequenceClassifier(self.spec, self.num_labels, jnp.dtype(self.dtype_name), self.dropout_rate)


def init_params(rng: jax.Array, head: Head, pretrained: dict) -> dict:
    """A fresh classifier whose encoder (and pooler, when the checkpoint has one) are the pretrained weights."""
    ids = jnp.zeros((1, 8), jnp.int32)
    params = dict(head.module().init(rng, ids, jnp.ones_like(ids))["params"])
    fresh = jax.tree.structure(params["bert"])
    # jaxlib's PyTreeDef type stub declares no comparison, though PyTreeDefs compare by structure.
    if jax.tree.structure(pretrained["encoder"]) != fresh:  # type: ignore[operator]
        raise FinetuneError("pretrained encoder parameters do not match the architecture spec")
    # Copies: the train step donates its state, which must never free the caller's pretrained arrays.
    params["bert"] = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), pretrained["encoder"])
    if "pooler" in pretrained:
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
    state: TrainState, batch: dict, key: jax.Array, *, head: Head, opt: OptimConfig
) -> tuple[TrainState, dict]:
    """One AdamW step with dropout keyed by fold_in(key, step)."""
    rng = jax.random.fold_in(key, state.step)
    model = head.module()

    def loss_fn(params):
        logits = cast(
            jax.Array,
            model.apply(
                {"params": params},
                batch["input_ids"],
                batch["attention_mask"],
                batch["token_type_ids"],
                deterministic=False,
                rngs={"dropout": rng},
            ),
        )
        return weighted_loss(logits, batch["labels"], batch["weights"], head.regression)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    new_state = state.apply_gradients(grads, opt)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": opt.schedule_fn()(state.step)}
    return new_state, metrics


def predict_step(params: dict, batch: dict, *, head: Head) -> jax.Array:
    """Class index (classification) or score (regression) per row."""
    logits = cast(
        jax.Array,
        head.module().apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
    )
    return logits[:, 0] if head.regression else jnp.argmax(logits, axis=-1)


@functools.lru_cache(maxsize=32)
def jitted_train_step(head: Head, opt: OptimConfig, mesh: Mesh):
    data, rep = shardings(mesh)
    fn = functools.partial(train_step, head=head, opt=opt)
    return jax.jit(fn, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=(0,))


@functools.lru_cache(maxsize=32)
def jitted_predict_step(head: Head, mesh: Mesh):
    data, rep = shardings(mesh)
    return jax.jit(functools.partial(predict_step, head=head), in_shardings=(rep, data), out_shardings=data)


def subsample(split: glue_data.Split, n: int, seed: int) -> glue_data.Split:
    """A seeded random subset of `n` training examples (training files are often sorted)."""
    if n <= 0 or n >= len(split):
        return split
    idx = np.sort(np.random.default_rng([seed, 1]).permutation(len(split))[:n])
    return glue_data.Split(tuple([t[i] for i in idx] for t in split.texts), split.labels[idx])


def evaluate(params, head: Head, data: glue_data.Encoded, batch_size: int, pad_id: int, recipe: Recipe, mesh: Mesh):
    """Predictions for every example of `data`, in the original order."""
    fn = jitted_predict_step(head, mesh)
    out = np.zeros(len(data), np.float32 if head.regression else np.int32)
    for idx, batch in glue_data.eval_batches(data, batch_size, pad_id, recipe.bucket, recipe.max_seq_len):
        pred = np.asarray(jax.device_get(fn(params, shard_batch(batch, mesh))))
        out[idx] = pred[: len(idx)]
    return out


def finetune(
    *,
    spec: ArchSpec,
    pretrained: dict,
    tokenizer,
    task_data: glue_data.TaskData,
    recipe: Recipe,
    mesh: Mesh | None = None,
    progress: bool = True,
    desc: str = "glue",
    log_every: int = 10,
) -> dict:
    """Fine-tune a fresh head on the task's training split, then score every full dev split.

    Returns a dict with `scores` (metric -> value), `score` (the task's single GLUE number), example counts, the
    per-epoch mean training loss, steps and wall seconds.
    """
    from tqdm.auto import tqdm

    mesh = mesh or make_mesh()
    t_start = time.perf_counter()
    task = task_data.task
    head = Head(spec, task.num_labels, recipe.compute_dtype, recipe.dropout_rate)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else spec.pad_token_id
    batch_size = recipe.per_device_batch_size * mesh.size
    train = glue_data.encode(
        tokenizer, subsample(task_data.train, recipe.max_train_examples, recipe.seed), recipe.max_seq_len
    )
    dev = {s: glue_data.encode(tokenizer, split, recipe.max_seq_len) for s, split in task_data.dev.items()}
    per_epoch = glue_data.steps_per_epoch(len(train), batch_size)
    total = per_epoch * recipe.num_epochs
    opt = OptimConfig(
        learning_rate=recipe.learning_rate,
        total_steps=total,
        warmup_steps=int(recipe.warmup_fraction * total),
        schedule="linear",
        weight_decay=recipe.weight_decay,
        grad_clip_norm=recipe.grad_clip_norm,
    )
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(recipe.seed))
    params = init_params(init_key, head, pretrained)
    if head.regression and recipe.regression_bias_to_label_mean:
        params["classifier"]["bias"] = jnp.full_like(params["classifier"]["bias"], float(np.mean(train.labels)))
    state = replicate(TrainState.create(params, opt), mesh)
    key = replicate(dropout_key, mesh)
    step_fn = jitted_train_step(head, opt, mesh)

    epoch_losses, tokens = [], 0
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for epoch in range(recipe.num_epochs):
            pending = []
            for batch in glue_data.train_batches(
                train, batch_size, epoch, recipe.seed, pad_id, recipe.bucket, recipe.max_seq_len
            ):
                tokens += int(batch["attention_mask"].sum())
                state, metrics = step_fn(state, shard_batch(batch, mesh), key)
                pending.append(metrics["loss"])
                if len(pending) >= 2:
                    # At most two steps in flight (as in kdjax.train.distill): bounded memory, an honest progress bar.
                    pending[-2].block_until_ready()
                bar.update(1)
                if len(pending) % log_every == 0:
                    bar.set_postfix(loss=f"{float(pending[-1]):.4f}")
            losses = np.asarray(jax.device_get(pending), np.float64)
            if not np.all(np.isfinite(losses)):
                raise FinetuneError(f"{desc}: non-finite training loss in epoch {epoch + 1}; lower glue.learning_rate")
            epoch_losses.append(float(losses.mean()))
            bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
    finally:
        bar.close()
    train_s = time.perf_counter() - t_start
    preds = {s: evaluate(state.params, head, d, batch_size, pad_id, recipe, mesh) for s, d in dev.items()}
    labels = {s: d.labels for s, d in dev.items()}
    scores = task_scores(task.name, preds, labels)
    return {
        "scores": scores,
        "score": task_score(scores),
        "num_train_examples": len(train),
        "num_train_examples_available": len(task_data.train),
        "num_dev_examples": {s: len(d) for s, d in dev.items()},
        "num_labels": task.num_labels,
        "train_loss_per_epoch": epoch_losses,
        "steps": total,
        "global_batch_size": batch_size,
        "train_tokens": tokens,
        "train_s": round(train_s, 3),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "final_train_loss": epoch_losses[-1] if epoch_losses else math.nan,
    }
