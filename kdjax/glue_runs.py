"""Whether a GLUE score on disk is current, and which of its runs (learning rate, seed) a new request reuses.

A score is current (`is_current`: the glue stage skips it) when it was made from the same model (its source, and
for a model in a folder a fingerprint of its weights), data, method and recipe.

A score (kdjax.finetune) is the best of several runs, one per learning rate of the grid and per seed, and each run is
a pure function of the model, the data, the rest of the recipe, its rate and its seed (data order and dropout are
drawn from the seed). So asking for more seeds or another grid needs only the runs not made yet: going from one
seed to three on RTE trains seeds 1 and 2, and `:cpu`'s single rate 1e-4 is one of the default grid's four. The
runs of a score are reused when it was made from the same model (kdjax.glue_models.ModelRef.same_source and the
weights fingerprint), data, method and recipe but for the fields below; a distilled row's runs also need the same
fine-tuned teacher (its classifier's fingerprint), as the teacher's logits are what the student learned from.
"""

from __future__ import annotations

import os

from kdjax.classifier import recorded_recipe
from kdjax.finetune import Recipe, recipe_identity
from kdjax.glue_models import ModelRef, fingerprint
from kdjax.workdir import read_json

# Recipe fields that choose which runs make a score, not how one run goes.
GRID_FIELDS = ("learning_rates", "seeds", "small_task_examples")

Run = dict  # {"scores": {metric: value}, "train_loss_per_epoch": [...]}, as a score's grid records it


def run_identity(recipe: dict) -> dict:
    """A recorded recipe without the fields that pick the runs (or only set their speed): what two runs share when
    one can stand for the other."""
    return {k: v for k, v in recipe_identity(recorded_recipe(recipe)).items() if k not in GRID_FIELDS}


def runs_of(record: dict) -> dict[tuple[float, int], Run]:
    """(learning rate, seed) -> run, for every finished run a score records (a diverged grid point keeps none)."""
    seeds = record.get("seeds") or []
    out: dict[tuple[float, int], Run] = {}
    for point in record.get("grid") or []:
        scores, losses = point.get("seed_scores"), point.get("train_loss_per_epoch")
        if not scores or not losses or len(scores) != len(losses) or len(scores) > len(seeds):
            continue  # diverged, or written by an older kdjax without per-seed records
        for seed, sc, loss in zip(seeds, scores, losses, strict=False):
            out[(float(point["learning_rate"]), int(seed))] = {"scores": sc, "train_loss_per_epoch": loss}
    return out


def teacher_fingerprint(path: str) -> str | None:
    """The fine-tuned teacher's classifier file as a distilled score records it (None when there is none)."""
    return fingerprint(path) if os.path.isfile(path) else None


def _read(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        return read_json(path)
    except ValueError:  # damaged: scored again
        return None


def _same_making(path: str, old: dict, ref: ModelRef, data_source: str, method: dict | None) -> bool:
    """`old` (read from `path`) was made from `ref`'s model and weights, on `data_source`, by `method`."""
    same = ref.same_source(old) and old.get("data") == data_source
    return same and old.get("distill") == (method or {}).get("distill") and same_weights(path, old, ref)


def is_current(path: str, ref: ModelRef, recipe: Recipe, data_source: str, method: dict | None = None) -> bool:
    """True when `path` holds a score of the same model (source and weights), recipe, data and method (fine-tune or
    distill)."""
    old = _read(path)
    if old is None:
        return False
    same_recipe = recipe_identity(recorded_recipe(old.get("recipe"))) == recipe_identity(recipe.to_dict())
    return same_recipe and _same_making(path, old, ref, data_source, method)


def earlier_runs(
    path: str,
    ref: ModelRef,
    recipe: Recipe,
    data_source: str,
    method: dict | None = None,
    teacher: str | None = None,
) -> dict[tuple[float, int], Run]:
    """The runs of the score at `path` that a score of `recipe` reuses ({} when none can be); `teacher` is the
    fine-tuned teacher's classifier file a distilled row (`method`) learns from now."""
    old = _read(path)
    if old is None or not _same_making(path, old, ref, data_source, method):
        return {}
    if run_identity(old.get("recipe") or {}) != run_identity(recipe.to_dict()):
        return {}
    if method and not (teacher and saved_with(path, old, teacher, "distill_teacher_weights")):
        return {}
    return runs_of(old)


def saved_with(path: str, old: dict, classifier: str, field: str) -> bool:
    """Whether the teacher's classifier file `classifier` is the one the score `old` (read from `path`) recorded in
    `field`. A score written before scores recorded it counts when the file was not written after the score."""
    if not os.path.isfile(classifier):
        return False
    if field in old:
        return old[field] == fingerprint(classifier)
    return os.path.getmtime(classifier) <= os.path.getmtime(path)


def same_weights(path: str, old: dict, ref: ModelRef) -> bool:
    """Whether the score `old` (read from `path`) was made from the weights `ref`'s folder holds now. A score written
    before scores recorded their weights counts as made from them unless the weights file changed after it."""
    weights = ref.weights_file()
    if weights is None:  # the teacher, a hub id: nothing on disk to compare
        return True
    if "weights" in old:
        return old["weights"] == ref.weights()
    return os.path.getmtime(weights) <= os.path.getmtime(path)
