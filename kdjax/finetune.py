"""GLUE fine-tuning (and task distillation) of any BERT-family checkpoint over a learning-rate grid.

`finetune` trains a fresh head once per learning rate of `Recipe.learning_rates` (and per seed for small tasks),
scores every full dev split after each run, and keeps the grid point with the best mean dev score, as the compact
BERTs' recipe does (Turc et al. 2019: lr from {3e-4, 1e-4, 5e-5, 3e-5}, 4 epochs). Every grid point runs the same
compiled steps (kdjax.finetune_steps: the peak rate is an array in the train state). Data order is drawn from
`default_rng([seed, epoch])` and dropout from `fold_in(key, step)`, so a run is reproducible from the recipe alone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from kdjax import glue_data
from kdjax.classifier import POOLINGS
from kdjax.finetune_steps import FinetuneError, Head, init_params, jitted_logits_step, jitted_train_step
from kdjax.losses import init_projection
from kdjax.metrics import task_score, task_scores
from kdjax.optim import OptimConfig, TrainState
from kdjax.sharding import make_mesh, replicate, shard_batch
from kdjax.spec import ArchSpec
from kdjax.task_distill import DistillData

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides a GLUE score besides the model; recorded next to every score."""

    learning_rates: tuple[float, ...] = (3e-4, 1e-4, 5e-5, 3e-5)
    per_device_batch_size: int = 32
    num_epochs: int = 4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_seq_len: int = 128
    # 0 = the whole training set; otherwise a seeded random subset of this size.
    max_train_examples: int = 0
    dropout_rate: float = 0.1
    grad_clip_norm: float = 1.0
    # Batches are padded to a multiple of this many tokens (capped at max_seq_len): each length is one more compiled
    # program, each padded token is computed. 16 measured 1.4x faster than 32 at 1,000 examples (docs/performance.md).
    bucket: int = 16
    compute_dtype: str = "float32"
    seed: int = 0
    # Seeds per grid point (seed, seed+1, ...) for tasks with at most `small_task_examples` training examples.
    seeds: int = 1
    small_task_examples: int = 10000
    # Each epoch's shuffled order is sorted by length within windows of this many batches (0 = off), and the
    # batches are shuffled again: batches of similar lengths pad far less.
    length_window: int = 32
    # Regression (STS-B): start the head's bias at the mean training label, so the first steps go into the
    # correlation rather than into moving the output from 0 to ~2.7.
    regression_bias_to_label_mean: bool = True
    # The classifier's sentence vector (kdjax.classifier.POOLINGS). The config's 'auto' is resolved from the run's
    # teacher before a recipe is used (kdjax.glue_stage.recipe_of), so the recorded recipe names the head trained.
    pooling: str = "pooler"
    # 'cross': a pair is one sequence, [CLS] a [SEP] b [SEP] (GLUE's usual); 'bi': each sentence is encoded alone
    # and the score is the cosine of their sentence vectors (regression tasks; glue.bi_encoder_tasks).
    pair_encoding: str = "cross"

    @property
    def bi_encoded(self) -> bool:
        return self.pair_encoding == "bi"

    def seeds_for(self, num_train: int) -> list[int]:
        n = self.seeds if num_train <= self.small_task_examples else 1
        return [self.seed + i for i in range(max(1, n))]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["learning_rates"] = list(self.learning_rates)  # as JSON reads it back, so recipes compare equal
        return d


# Recipe fields that change how fast a score is made, not what is computed: padding to another bucket adds masked
# positions only, so scores differ by rounding at most, as on another machine (the teacher's SST-2 and CoLA were
# identical at 8, 16 and 32, its RTE at 16 and 32; an augmented student's RTE moved by one dev example). A score or a
# fine-tuned teacher made at another value is current, and rows made at different values are one recipe in the report.
SPEED_ONLY = ("bucket",)


def recipe_identity(recipe: dict) -> dict:
    """A recorded recipe (Recipe.to_dict) without its SPEED_ONLY fields: what two scores must share to compare."""
    return {k: v for k, v in recipe.items() if k not in SPEED_ONLY}


def head_of(spec: ArchSpec, num_labels: int, recipe: Recipe) -> Head:
    """The classifier `recipe` trains on `spec`: its dtype, dropout, pooling and pair encoding."""
    return Head(spec, num_labels, recipe.compute_dtype, recipe.dropout_rate, recipe.pooling, recipe.bi_encoded)


def subsample(split: glue_data.Split, n: int, seed: int) -> glue_data.Split:
    """A seeded random subset of `n` training examples (training files are often sorted)."""
    if n <= 0 or n >= len(split):
        return split
    idx = np.sort(np.random.default_rng([seed, 1]).permutation(len(split))[:n])
    return glue_data.Split(tuple([t[i] for i in idx] for t in split.texts), split.labels[idx])


def predict_logits(params, head: Head, data: glue_data.Encoded, batch_size: int, pad_id: int, recipe: Recipe, mesh):
    """[N, num_labels] logits for every example of `data`, in the original order (length-sorted batches)."""
    fn = jitted_logits_step(head, mesh)
    out = np.zeros((len(data), head.num_labels), np.float32)
    for idx, batch in glue_data.eval_batches(data, batch_size, pad_id, recipe.bucket, recipe.max_seq_len):
        out[idx] = np.asarray(jax.device_get(fn(params, shard_batch(batch, mesh))))[: len(idx)]
    return out


def evaluate(params, head: Head, data: glue_data.Encoded, batch_size: int, pad_id: int, recipe: Recipe, mesh: Mesh):
    """Predictions for every example of `data`, in the original order: class index, or score (regression)."""
    logits = predict_logits(params, head, data, batch_size, pad_id, recipe, mesh)
    return logits[:, 0] if head.regression else np.argmax(logits, axis=-1).astype(np.int32)


def epoch_order(lengths: np.ndarray, batch_size: int, epoch: int, seed: int, window: int) -> list[np.ndarray]:
    """The batches (example indices) of one epoch, drawn from (seed, epoch); length-grouped within windows."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if window <= 0:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    span = batch_size * window
    batches = []
    for s in range(0, len(order), span):
        chunk = order[s : s + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _batch(data: glue_data.Encoded, idx, batch_size: int, pad_id: int, recipe: Recipe, distill: DistillData | None):
    batch = glue_data.make_batch(data, idx, batch_size, pad_id, recipe.bucket, recipe.max_seq_len)
    if distill is not None:
        n = len(idx)
        t = np.zeros((batch_size, distill.teacher_logits.shape[1]), np.float32)
        hard = np.zeros((batch_size,), np.float32)
        t[:n], hard[:n] = distill.teacher_logits[idx], distill.hard[idx]
        batch |= {"teacher_logits": t, "hard": hard}
    return batch


def _train_one(ctx: dict, lr: float, seed: int, bar) -> tuple[Any, list[float], int]:
    """One grid point: a fresh head from `seed`, trained at peak `lr`; returns (params, epoch losses, tokens)."""
    recipe, head, mesh, distill = ctx["recipe"], ctx["head"], ctx["mesh"], ctx["distill"]
    train, batch_size = ctx["train"], ctx["batch_size"]
    init_key, dropout_key, proj_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {"model": init_params(init_key, head, ctx["pretrained"])}
    if head.regression and recipe.regression_bias_to_label_mean and not head.bi_encoder:  # a cosine has no bias
        bias = params["model"]["classifier"]["bias"]
        params["model"]["classifier"]["bias"] = jnp.full_like(bias, float(np.mean(ctx["label_mean_source"])))
    cfg = distill.cfg if distill is not None else None
    if cfg is not None and cfg.hidden_weight > 0:
        params["projection"] = init_projection(proj_key, head.spec.hidden_size, cfg.teacher.hidden_size)
    opt = ctx["opt"]
    state = TrainState.create(params, opt, lr=jnp.asarray(lr, jnp.float32))
    state = replicate(state, mesh)
    key = replicate(dropout_key, mesh)
    teacher = replicate(distill.teacher_encoder, mesh) if cfg is not None and cfg.needs_states else None
    step_fn = jitted_train_step(head, opt, cfg, mesh)
    epoch_losses: list[float] = []
    tokens, lengths = 0, train.lengths
    for epoch in range(recipe.num_epochs):
        pending = []
        for idx in epoch_order(lengths, batch_size, epoch, seed, recipe.length_window):
            batch = _batch(train, idx, batch_size, ctx["pad_id"], recipe, distill)
            tokens += int(batch["attention_mask"].sum())
            state, metrics = step_fn(state, shard_batch(batch, mesh), key, teacher)
            pending.append(metrics["loss"])
            if len(pending) >= 2:
                # At most two steps in flight (as in kdjax.train.distill): bounded memory, an honest progress bar.
                pending[-2].block_until_ready()
            bar.update(1)
        losses = np.asarray(jax.device_get(pending), np.float64)
        if not np.all(np.isfinite(losses)):
            return None, [*epoch_losses, math.nan], tokens
        epoch_losses.append(float(losses.mean()))
        bar.set_postfix(lr=f"{lr:g}", loss=f"{epoch_losses[-1]:.4f}")
    return state.params, epoch_losses, tokens


def _mean_scores(runs: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


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
    distill: DistillData | None = None,
    keep_params: bool = False,
    earlier: dict[tuple[float, int], dict] | None = None,
) -> dict:
    """Train a fresh head per grid point (learning rate x seeds), score the full dev splits, keep the best.

    Returns a dict with `scores` (metric -> value, mean over seeds) and `score` of the picked learning rate,
    `picked_lr`, `grid` (one entry per learning rate: its scores, per-seed scores, training losses), example counts,
    steps and wall seconds; with `keep_params`, `params` holds the picked run's classifier weights (host arrays), or
    None when that run was one of `earlier`'s. With `distill`, the student trains on `distill.train` against the
    teacher's logits (kdjax.task_distill). `earlier` maps (learning rate, seed) to a run an earlier score made with
    this recipe otherwise (kdjax.glue_runs): those are read, not trained again; `reused_runs` counts them.
    """
    from tqdm.auto import tqdm

    mesh = mesh or make_mesh()
    t_start = time.perf_counter()
    task = task_data.task
    if recipe.pooling not in POOLINGS:
        raise FinetuneError(f"recipe pooling {recipe.pooling!r} is not one of {', '.join(POOLINGS)} (resolve 'auto')")
    bi = recipe.bi_encoded
    if recipe.pair_encoding not in ("cross", "bi"):
        raise FinetuneError(f"recipe pair_encoding {recipe.pair_encoding!r} is not 'cross' or 'bi'")
    if bi and (not task.is_regression or len(task.text_columns) < 2):
        raise FinetuneError(f"{task.name} is not a sentence-pair regression task: it cannot be bi-encoded")
    head = head_of(spec, task.num_labels, recipe)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else spec.pad_token_id
    batch_size = recipe.per_device_batch_size * mesh.size
    if distill is not None:
        train, originals = distill.train, distill.num_original
        if distill.cfg.needs_states and distill.cfg.teacher is None:
            raise FinetuneError("task distillation with intermediate losses needs the teacher's spec")
    else:
        split = subsample(task_data.train, recipe.max_train_examples, recipe.seed)
        train = glue_data.encode(tokenizer, split, recipe.max_seq_len, bi)
        originals = len(train)
    dev = {s: glue_data.encode(tokenizer, split, recipe.max_seq_len, bi) for s, split in task_data.dev.items()}
    per_epoch = glue_data.steps_per_epoch(len(train), batch_size)
    total = per_epoch * recipe.num_epochs
    # Unit peak: the grid point's rate is TrainState.lr, so this (hashable) config and the compiled step are shared.
    opt = OptimConfig(
        learning_rate=1.0,
        total_steps=total,
        warmup_steps=int(recipe.warmup_fraction * total),
        schedule="linear",
        weight_decay=recipe.weight_decay,
        grad_clip_norm=recipe.grad_clip_norm,
    )
    seeds = recipe.seeds_for(originals)
    ctx = dict(
        recipe=recipe,
        head=head,
        mesh=mesh,
        distill=distill,
        train=train,
        batch_size=batch_size,
        pad_id=pad_id,
        pretrained=pretrained,
        opt=opt,
        # Regression bias starts at the mean target: the labels, or what the teacher predicts when distilling.
        label_mean_source=train.labels[:originals] if distill is None else distill.teacher_logits[:, 0],
    )
    eval_batch = 4 * batch_size  # no gradients: larger batches, fewer dispatches
    labels = {s: d.labels for s, d in dev.items()}
    grid: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_params, first_params, tokens = None, None, 0
    earlier = earlier or {}
    reused = [(lr, seed) for lr in recipe.learning_rates for seed in seeds if (float(lr), seed) in earlier]
    left = len(recipe.learning_rates) * len(seeds) - len(reused)
    bar = tqdm(total=total * left, desc=desc, disable=not progress, leave=False)
    try:
        for lr in recipe.learning_rates:
            runs: list[dict[str, float]] = []
            losses: list[list[float]] = []
            for seed in seeds:
                done = earlier.get((float(lr), seed))
                if done is not None:
                    runs.append(done["scores"])
                    losses.append(done["train_loss_per_epoch"])
                    if keep_params and seed == seeds[0]:
                        first_params = None
                    continue
                params, epoch_losses, n_tok = _train_one(ctx, lr, seed, bar)
                tokens += n_tok
                losses.append(epoch_losses)
                if params is None:
                    log.warning("%s: lr %g seed %d diverged (non-finite training loss)", desc, lr, seed)
                    runs = []
                    break
                preds = {
                    s: evaluate(params["model"], head, d, eval_batch, pad_id, recipe, mesh) for s, d in dev.items()
                }
                runs.append(task_scores(task.name, preds, labels))
                if keep_params and seed == seeds[0]:
                    first_params = jax.device_get(params["model"])
            point = {"learning_rate": lr, "train_loss_per_epoch": losses}
            if runs:
                scores = _mean_scores(runs)
                point |= {"scores": scores, "score": task_score(scores), "seed_scores": runs}
                if len(runs) > 1:
                    point["score_std"] = float(np.std([task_score(r) for r in runs]))
                if best is None or point["score"] > best["score"]:
                    best = point
                    best_params = first_params if keep_params else None
            else:
                point |= {"diverged": True, "score": None}
            grid.append(point)
    finally:
        bar.close()
    if best is None:
        raise FinetuneError(f"{desc}: every learning rate diverged (non-finite loss); lower glue.learning_rates")
    out = {
        "scores": best["scores"],
        "score": best["score"],
        "picked_lr": best["learning_rate"],
        "seeds": seeds,
        "grid": grid,
        "num_train_examples": originals,
        "num_train_examples_available": len(task_data.train),
        "num_dev_examples": {s: len(d) for s, d in dev.items()},
        "num_labels": task.num_labels,
        "train_loss_per_epoch": best["train_loss_per_epoch"][0],
        "steps": total,
        "global_batch_size": batch_size,
        "train_tokens": tokens,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "reused_runs": len(reused),
        "final_train_loss": best["train_loss_per_epoch"][0][-1],
    }
    if "score_std" in best:
        out["score_std"] = best["score_std"]
    if distill is not None:
        out["num_augmented_examples"] = len(train) - originals
    if keep_params:
        out["params"] = best_params
    return out
