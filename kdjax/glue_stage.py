"""The `glue` stage: fine-tune and score the chosen models on the chosen GLUE tasks, resumably.

`glue.models` is a comma list of:
  teacher                      the run's teacher;
  best                         the search's best architecture: `nas-<arch>` (mini-KD winner, W/nas/candidates/<arch>/hf,
                               "without PDT"), `kd-<arch>` (full KD, W/kd/<arch>/hf) and `pdt-<arch>`
                               (W/kd/<arch>-pdt/hf), whichever exist;
  top_k                        the same for every architecture in W/nas/top_k.json;
  random                       glue.num_random_baselines random architectures of the search space, distilled with
                               the kd.* budget into W/kd/random-<i>-<arch>/ (once) and scored;
  <arch id>                    e.g. 6L-768H-12A-3072F-gelu (DistilBERT shape): its full-KD export W/kd/<arch>/hf,
                               distilled with the kd.* budget if missing (also when the search exported a mini-KD
                               version of it: name `best`/`top_k` for those);
  <folder> or <hub id>         any BERT/RoBERTa/ALBERT checkpoint.
Every (model, task) is trained once per learning rate of glue.learning_rates and keeps the best dev score
(kdjax.finetune). Students of this run (nas/kd/pdt/random rows) are task-distilled from the fine-tuned teacher
(kdjax.task_distill) and, with glue.distill.baseline, also fine-tuned only as '<model>-ft'. The teacher's picked
classifier is saved as W/glue/teacher/<task>.msgpack and reused. Each score goes to W/glue/<model>/<task>.json with
its recipe and method; a file with the same recipe, method and source is not recomputed, so an interrupted stage
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable

import flax.serialization
import jax.numpy as jnp
import numpy as np

from kdjax import glue_data, plan
from kdjax.augment import for_teacher
from kdjax.config.settings import SpaceSettings
from kdjax.context import RunContext
from kdjax.errors import KdjaxError
from kdjax.finetune import Recipe, finetune
from kdjax.nas.topk import read_top_k
from kdjax.search_space import SearchSpace
from kdjax.sharding import compute_dtype
from kdjax.spec import ArchSpec, is_arch_id
from kdjax.task_distill import DistillConfig, DistillData, prepare
from kdjax.workdir import read_json, write_json

log = logging.getLogger(__name__)


# Rows that are students of this run's teacher (same tokenizer): task-distilled by default.
STUDENT_KINDS = ("nas", "kd", "pdt", "random")


class GlueStageError(KdjaxError, ValueError):
    """A model named in glue.models cannot be found or loaded."""


@dataclasses.dataclass
class ModelRef:
    """One row of the GLUE tables."""

    name: str  # folder under W/glue
    kind: str  # teacher | nas | kd | pdt | random | folder | hub
    source: str  # checkpoint folder or hub id ('teacher' for the run's teacher)
    arch_id: str | None = None
    # Builds the checkpoint when it does not exist yet (random baselines, hand-picked arch ids).
    prepare: Callable[[], None] | None = None

    def to_dict(self) -> dict:
        return {"model": self.name, "kind": self.kind, "source": self.source, "arch_id": self.arch_id}


def variants(ctx: RunContext, arch_id: str) -> list[ModelRef]:
    """The exports of one architecture that exist: mini-KD winner, full KD, and PDT."""
    w = ctx.workdir
    found = [
        ("nas", w.path("nas", "candidates", arch_id, "hf")),
        ("kd", w.path("kd", arch_id, "hf")),
        ("pdt", w.path("kd", f"{arch_id}-pdt", "hf")),
    ]
    return [ModelRef(f"{k}-{arch_id}", k, p, arch_id) for k, p in found if os.path.isdir(p)]


def _distilled(ctx: RunContext, name: str, kind: str, arch_id: str, out_dir: str) -> ModelRef:
    """A ref to out_dir/hf that distills `arch_id` with the kd.* budget first if the export is missing."""
    from kdjax.kd_stage import distill_arch, kd_inputs

    def prepare() -> None:
        if not os.path.exists(os.path.join(out_dir, "hf", "config.json")):
            print(f"glue: distilling {name} with the kd.* budget into {out_dir}")
            distill_arch(kd_inputs(ctx), ctx.student_spec(arch_id), out_dir=out_dir, desc=name)

    return ModelRef(name, kind, os.path.join(out_dir, "hf"), arch_id, prepare)


def random_specs(teacher: ArchSpec, space: SpaceSettings, seed: int, n: int) -> list[ArchSpec]:
    """`n` distinct architectures drawn reproducibly (from `seed`) from the search space of `teacher` and `space`."""
    pool = SearchSpace.from_teacher(teacher, space).all_specs()
    pool = sorted(set(pool), key=lambda s: s.arch_id)
    pick = np.random.default_rng([seed, 104729]).permutation(len(pool))[:n]
    return [pool[i] for i in pick]


def _best(ctx: RunContext) -> list[ModelRef]:
    from kdjax.kd_stage import chosen_arch

    arch_id = ctx.student_spec(chosen_arch(ctx)[0]).arch_id
    refs = variants(ctx, arch_id)
    if not refs:
        print(f"glue: 'best' ({arch_id}) has no export yet (run the nas/kd stages); skipping it")
    return refs


def _top_k(ctx: RunContext) -> list[ModelRef]:
    path = ctx.workdir.path("nas", "top_k.json")
    if not os.path.exists(path):
        print("glue: 'top_k' needs nas/top_k.json (run the nas stage); skipping it")
        return []
    refs = []
    for entry in read_top_k(ctx.workdir.path("nas"), ctx.settings.nas):
        refs += variants(ctx, entry["arch_id"])
    return refs


def _random(ctx: RunContext) -> list[ModelRef]:
    refs = []
    s = ctx.settings
    for i, spec in enumerate(random_specs(ctx.teacher.spec, s.nas.space, s.seed, s.glue.num_random_baselines)):
        name = f"random-{i}-{spec.arch_id}"
        refs.append(_distilled(ctx, name, "random", spec.arch_id, ctx.workdir.path("kd", name)))
    return refs


def _teacher(ctx: RunContext) -> list[ModelRef]:
    return [ModelRef("teacher", "teacher", ctx.settings.teacher.name, ctx.teacher.spec.arch_id)]


# Explicit registry: keyword of glue.models -> the refs it stands for.
KEYWORDS: dict[str, Callable[[RunContext], list[ModelRef]]] = {
    "teacher": _teacher,
    "best": _best,
    "top_k": _top_k,
    "random": _random,
}


_VARIANT_RE = re.compile(r"^(nas|kd|pdt)-\d+L-\d+H-\d+A-\d+F(-[a-z_]+)?$")


def _named_variant(ctx: RunContext, kind: str, arch_id: str) -> list[ModelRef]:
    found = [r for r in variants(ctx, arch_id) if r.kind == kind]
    if not found:
        made_by = {"nas": "the nas stage", "kd": "the kd stage", "pdt": "the kd stage with kd.pdt_steps > 0"}[kind]
        raise GlueStageError(f"glue.models: {kind}-{arch_id} has no export yet (made by {made_by})")
    return found


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text.strip("/")) or "model"


def resolve_models(ctx: RunContext, models: list[str]) -> list[ModelRef]:
    """Expand glue.models into distinct refs, in order."""
    refs: list[ModelRef] = []
    for item in models:
        if item in KEYWORDS:
            refs += KEYWORDS[item](ctx)
        elif _VARIANT_RE.match(item):
            # One export of an architecture by its row name: nas-<arch> (mini-KD), kd-<arch>, pdt-<arch> (PDT).
            kind, arch_id = item.split("-", 1)
            arch_id = ctx.student_spec(arch_id).arch_id
            refs += _named_variant(ctx, kind, arch_id)
        elif is_arch_id(item):
            # Its full-KD export, even when the search left a mini-KD one (that is what `best`/`top_k` add).
            arch_id = ctx.student_spec(item).arch_id
            refs.append(_distilled(ctx, f"kd-{arch_id}", "kd", arch_id, ctx.workdir.path("kd", arch_id)))
        elif os.path.isdir(os.path.expanduser(item)):
            folder = os.path.abspath(os.path.expanduser(item))
            base = os.path.basename(folder)
            if base == "hf":
                base = os.path.basename(os.path.dirname(folder))
            refs.append(ModelRef(safe_name(base), "folder", folder))
        elif item.startswith((".", "/", "~")):
            raise GlueStageError(f"glue.models: folder {item} does not exist")
        else:
            refs.append(ModelRef(safe_name(item), "hub", item))
    unique: dict[str, ModelRef] = {}
    for r in refs:
        unique.setdefault(r.name, r)
    return list(unique.values())


def load_model(ctx: RunContext, ref: ModelRef):
    """(spec, params, tokenizer) of a ref; failures end in one GlueStageError line."""
    if ref.kind == "teacher":
        t = ctx.teacher
        return t.spec, t.params, t.tokenizer
    from kdjax.teacher import load_teacher

    if ref.prepare is not None:
        ref.prepare()
    try:
        m = load_teacher(ref.source, allow_pickle=ctx.settings.teacher.allow_pickle)
    except KdjaxError as e:
        raise GlueStageError(f"glue.models: cannot load {ref.name} ({ref.source}): {e}") from e
    return m.spec, m.params, m.tokenizer


def recipe_of(ctx: RunContext) -> Recipe:
    """The configured recipe with its compute dtype resolved on this machine ('auto': bfloat16 on GPU/TPU)."""
    recipe = ctx.settings.glue.recipe
    return dataclasses.replace(recipe, compute_dtype=jnp.dtype(compute_dtype(recipe.compute_dtype)).name)


def distill_of(ctx: RunContext, recipe: Recipe) -> DistillConfig:
    """The configured task distillation against this run's teacher, in the recipe's compute dtype."""
    cfg = ctx.settings.glue.distill.loss
    return dataclasses.replace(cfg, teacher=ctx.teacher.spec, teacher_dtype=recipe.compute_dtype)


def result_path(ctx: RunContext, model: str, task: str) -> str:
    return ctx.workdir.path("glue", model, f"{task}.json")


def weights_path(ctx: RunContext, task: str) -> str:
    """The fine-tuned teacher's classifier (the picked grid point), reused by later runs and task distillation."""
    return ctx.workdir.path("glue", "teacher", f"{task}.msgpack")


def is_current(path: str, ref: ModelRef, recipe: Recipe, data_source: str, method: dict | None = None) -> bool:
    """True when `path` holds a score of the same model source, recipe, data and method (fine-tune or distill)."""
    if not os.path.exists(path):
        return False
    try:
        old = read_json(path)
    except ValueError:
        return False
    same = old.get("recipe") == recipe.to_dict() and old.get("source") == ref.source and old.get("data") == data_source
    return same and old.get("distill") == (method or {}).get("distill")


def glue_root(ctx: RunContext) -> str:
    """`data.glue_dir` as a folder; 'synthetic' is generated once into W/cache/glue-synthetic; '' means the hub."""
    glue_dir = ctx.settings.data.glue_dir
    if glue_dir != "synthetic":
        return glue_dir
    root = ctx.workdir.path("cache", "glue-synthetic")
    if not os.path.exists(os.path.join(root, "WNLI", "dev.tsv")):
        from kdjax.data.synthetic_glue import write_glue_dir

        write_glue_dir(root, n_train=64, n_dev=32, seed=ctx.settings.seed)
    return root


def data_source(ctx: RunContext, task: str) -> str:
    glue_dir = glue_root(ctx)
    if not glue_dir:
        return "hub:nyu-mll/glue"
    return os.path.join(os.path.abspath(os.path.expanduser(glue_dir)), glue_data.TASKS[task].folder)


class _Stage:
    """One run of the stage: cached task data and fine-tuned teachers, and the rows it writes."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.recipe = recipe_of(ctx)
        self.distill = distill_of(ctx, self.recipe)
        self.tasks: dict[str, glue_data.TaskData] = {}
        self.teachers: dict[str, dict] = {}
        self.done: list[str] = []

    def task(self, name: str) -> glue_data.TaskData:
        if name not in self.tasks:
            self.tasks[name] = glue_data.load_task(name, glue_root(self.ctx))
        return self.tasks[name]

    def methods(self, ref: ModelRef) -> list[tuple[str, dict | None]]:
        """(row name, distill record) per row this ref makes: distilled students, plus their fine-tune-only twin."""
        d = self.ctx.settings.glue.distill
        if ref.kind not in STUDENT_KINDS or not d.enabled:
            return [(ref.name, None)]
        rows = [(ref.name, {"distill": self.distill.to_dict()})]
        return rows + ([(f"{ref.name}-ft", None)] if d.baseline else [])

    def teacher_current(self, task: str) -> bool:
        ref = _teacher(self.ctx)[0]
        path = result_path(self.ctx, "teacher", task)
        return is_current(path, ref, self.recipe, data_source(self.ctx, task)) and os.path.exists(
            weights_path(self.ctx, task)
        )

    def fine_tuned_teacher(self, task: str) -> dict:
        """The teacher's picked classifier for `task`: from disk when its recipe matches, else fine-tuned now."""
        if task not in self.teachers:
            if not self.teacher_current(task):
                self.score(_teacher(self.ctx)[0], task, "teacher", None)
            with open(weights_path(self.ctx, task), "rb") as f:
                self.teachers[task] = flax.serialization.msgpack_restore(f.read())
        return self.teachers[task]

    def distill_data(self, task: str) -> DistillData:
        """A student's training set (subsampled as the recipe says, maybe augmented) with the teacher's logits."""
        from kdjax.finetune import predict_logits, subsample
        from kdjax.finetune_steps import Head

        ctx, recipe, cfg = self.ctx, self.recipe, self.distill
        data, teacher = self.task(task), ctx.teacher
        classifier = self.fine_tuned_teacher(task)
        head = Head(teacher.spec, data.task.num_labels, recipe.compute_dtype, recipe.dropout_rate)
        split = subsample(data.train, recipe.max_train_examples, recipe.seed)
        train = glue_data.encode(teacher.tokenizer, split, recipe.max_seq_len)
        batch = 4 * recipe.per_device_batch_size * ctx.mesh.size
        pad = teacher.tokenizer.pad_token_id or 0

        def logits(enc: glue_data.Encoded) -> np.ndarray:
            return predict_logits(classifier, head, enc, batch, pad, recipe, ctx.mesh)

        out = prepare(cfg, train, logits, for_teacher(teacher, cfg, recipe.seed))
        if cfg.needs_states:
            out.teacher_encoder = classifier["bert"]
        return out

    def score(self, ref: ModelRef, task: str, name: str, method: dict | None, model=None) -> None:
        ctx, recipe = self.ctx, self.recipe
        spec, params, tokenizer = model or load_model(ctx, ref)
        distill = self.distill_data(task) if method else None
        keep = ref.kind == "teacher"
        label = "task-distilled" if method else "fine-tuned"
        out = finetune(
            spec=spec,
            pretrained=params,
            tokenizer=tokenizer,
            task_data=self.task(task),
            recipe=recipe,
            mesh=ctx.mesh,
            desc=f"glue {name} {task}",
            distill=distill,
            keep_params=keep,
        )
        if keep:
            _write_bytes(weights_path(ctx, task), flax.serialization.msgpack_serialize(out.pop("params")))
        record = {
            **ref.to_dict(),
            "model": name,
            "method": "distill" if method else "finetune",
            "task": task,
            **out,
            "params": spec.num_params,
            "spec": spec.to_dict(),
            "recipe": recipe.to_dict(),
            "data": data_source(ctx, task),
            **(method or {}),
        }
        if method:
            record["distill_teacher"] = weights_path(ctx, task)
        if name != ref.name:
            record["twin"] = ref.name  # the distilled row this fine-tune-only baseline belongs to
        write_json(result_path(ctx, name, task), record)
        grid = ", ".join(f"{p['learning_rate']:g}:{_pct(p['score'])}" for p in out["grid"])
        shown = ", ".join(f"{k}={100 * v:.2f}" for k, v in out["scores"].items())
        print(
            f"glue: {name} {task} ({label}): {shown} at lr {out['picked_lr']:g} [grid {grid}] "
            f"({out['wall_s']:.1f} s, {out['num_train_examples']} train)"
        )
        self.done.append(f"{name}/{task}")
        plan.glue_scored(task, float(out.get("wall_s", 0.0)))


def _pct(x) -> str:
    return "diverged" if x is None else f"{100 * x:.2f}"


def _write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def run(ctx: RunContext) -> dict:
    tasks = list(ctx.settings.glue.tasks)
    refs = resolve_models(ctx, list(ctx.settings.glue.models))
    stage = _Stage(ctx)
    recipe, skipped = stage.recipe, 0
    for ref in refs:
        rows = stage.methods(ref)
        todo = []
        for task in tasks:
            for name, method in rows:
                current = is_current(result_path(ctx, name, task), ref, recipe, data_source(ctx, task), method)
                if ref.kind == "teacher":
                    current = stage.teacher_current(task)
                if current:
                    skipped += 1
                else:
                    todo.append((task, name, method))
        if not todo:
            print(f"glue: {ref.name}: all {len(tasks)} task(s) already scored with this recipe")
            continue
        model = load_model(ctx, ref)
        for task, name, method in todo:
            stage.score(ref, task, name, method, model)
    return {"models": [r.name for r in refs], "tasks": tasks, "scored": len(stage.done), "skipped": skipped}
