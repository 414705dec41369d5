"""The `glue` stage: fine-tune and score the models of `glue.models` (kdjax.glue_models) on the GLUE tasks, resumably.

It scores what the earlier stages made and never distils on its own: the random baselines and hand-picked arch ids
of glue.models are distilled by the kd stage, and a missing one stops the stage at once with one line saying so.
Every (model, task) is trained once per learning rate of glue.learning_rates and keeps the best dev score
(kdjax.finetune). Students of this run (nas/kd/pdt/random rows) are task-distilled from the fine-tuned teacher
(kdjax.task_distill) and, with glue.distill.baseline, also fine-tuned only as '<model>-ft'. The stage goes task by
task, scoring every row of a task before the next, so the teacher's pass over a task (its logits, the augmented
copies) is made once and shared by all the task's students. The teacher's picked classifier is saved as
W/glue/teacher/<task>.msgpack and reused. Each score goes to W/glue/<model>/<task>.json with
its recipe, method and (for a model in a folder) a fingerprint of its weights; a file with the same recipe, method,
source and weights is not recomputed, so an interrupted stage resumes where it stopped, and a model re-made at the same
folder (re-distilled with --config.force=true) is scored again. A score asked for with more seeds or rates reads the
runs its file holds and trains only the others (kdjax.glue_runs). A scored model's latency is recorded once
(kdjax.model_latency; the kd stage records those it distils), so the report only reads. What a finished stage has
left to do is read from these files by kdjax.glue_status.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import flax.serialization
import jax.numpy as jnp
import numpy as np

from kdjax import embedding_probe, glue_data, glue_plan, model_latency, plan
from kdjax.augment import for_teacher
from kdjax.classifier import BI_ENCODER, DESCRIPTIONS, resolve_bi_encoder_tasks, resolve_pooling
from kdjax.context import RunContext
from kdjax.finetune import Recipe, finetune
from kdjax.glue_models import (
    ModelRef,
    check_distilled,
    distils,
    load_model,
    resolve_models,
    row_names,
    teacher_ref,
)
from kdjax.glue_runs import earlier_runs, is_current, saved_with, teacher_fingerprint
from kdjax.sharding import compute_dtype
from kdjax.spec import ArchSpec
from kdjax.task_distill import DistillConfig, DistillData, prepare
from kdjax.workdir import read_json, write_json

log = logging.getLogger(__name__)


def recipe_of(ctx: RunContext) -> Recipe:
    """The configured recipe with its compute dtype resolved on this machine ('auto': bfloat16 on GPU/TPU) and its
    pooling resolved from the run's teacher ('auto': mean for a mean-pooling sentence-transformers teacher).

    The pooling is resolved once, from the teacher, for every row: students distilled from a mean-pooling teacher
    train the teacher's head, so a table compares models, not heads."""
    return resolved_recipe(ctx)[0]


def resolved_recipe(ctx: RunContext) -> tuple[Recipe, str]:
    """(recipe_of's recipe, why its pooling is what it is)."""
    recipe = ctx.settings.glue.recipe
    pooling, why = resolve_pooling(recipe.pooling, ctx.teacher.folder)
    dtype = jnp.dtype(compute_dtype(recipe.compute_dtype)).name
    return dataclasses.replace(recipe, compute_dtype=dtype, pooling=pooling), why


def distill_of(ctx: RunContext, recipe: Recipe) -> DistillConfig:
    """The configured task distillation against this run's teacher, in the recipe's compute dtype."""
    cfg = ctx.settings.glue.distill.loss
    return dataclasses.replace(cfg, teacher=ctx.teacher.spec, teacher_dtype=recipe.compute_dtype)


def result_path(ctx: RunContext, model: str, task: str) -> str:
    return ctx.workdir.glue_result(model, task)


def weights_path(ctx: RunContext, task: str) -> str:
    """The fine-tuned teacher's classifier (the picked grid point), reused by later runs and task distillation."""
    return ctx.workdir.path("glue", "teacher", f"{task}.msgpack")


def _glue_dir(ctx: RunContext) -> str:
    """`data.glue_dir` as a folder, without generating anything: 'synthetic' is W/cache/glue-synthetic."""
    glue_dir = ctx.settings.data.glue_dir
    return ctx.workdir.path("cache", "glue-synthetic") if glue_dir == "synthetic" else glue_dir


def glue_root(ctx: RunContext) -> str:
    """`data.glue_dir` as a folder; 'synthetic' is generated once into W/cache/glue-synthetic; '' means the hub."""
    root = _glue_dir(ctx)
    if ctx.settings.data.glue_dir == "synthetic" and not os.path.exists(os.path.join(root, "WNLI", "dev.tsv")):
        from kdjax.data.synthetic_glue import write_glue_dir

        write_glue_dir(root, n_train=glue_plan.SYNTHETIC_TRAIN, n_dev=glue_plan.SYNTHETIC_DEV, seed=ctx.settings.seed)
    return root


def data_source(ctx: RunContext, task: str) -> str:
    """Where `task`'s data comes from, as a score records it (nothing is generated: the plan asks too)."""
    glue_dir = _glue_dir(ctx)
    if not glue_dir:
        return "hub:nyu-mll/glue"
    return os.path.join(os.path.abspath(os.path.expanduser(glue_dir)), glue_data.TASKS[task].folder)


class Stage:
    """One run of the stage: the current task's data, fine-tuned teacher and distillation data, and the rows it
    writes."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.recipe, self.pooling_why = resolved_recipe(ctx)
        self.bi_tasks, self.bi_why = resolve_bi_encoder_tasks(ctx.settings.glue.bi_encoder_tasks, ctx.teacher.folder)
        self.distill = distill_of(ctx, self.recipe)
        self.tasks: dict[str, glue_data.TaskData] = {}
        self.teachers: dict[str, dict] = {}
        # The teacher's work for the students of one task (kdjax.task_distill.prepare), made once per task: `run`
        # scores a task's students together and `release`s the task before the next, so one task's is held at a time.
        self.distilled: dict[str, DistillData] = {}
        self.done: list[str] = []

    def recipe_for(self, task: str) -> Recipe:
        """The run's recipe as `task` trains it: bi-encoded when glue.bi_encoder_tasks names it."""
        bi = task in self.bi_tasks
        return dataclasses.replace(self.recipe, pair_encoding="bi" if bi else "cross")

    def task(self, name: str) -> glue_data.TaskData:
        if name not in self.tasks:
            self.tasks[name] = glue_data.load_task(name, glue_root(self.ctx))
        return self.tasks[name]

    def release(self, task: str) -> None:
        """Drop what was kept for `task` (its data, fine-tuned teacher and distillation data) once it is scored."""
        for kept in (self.tasks, self.teachers, self.distilled):
            kept.pop(task, None)

    def methods(self, ref: ModelRef) -> list[tuple[str, dict | None]]:
        """(row name, distill record) per row this ref makes: distilled students, plus their fine-tune-only twin."""
        names = row_names(self.ctx, ref)
        if not distils(self.ctx, ref.kind):
            return [(names[0], None)]
        return [(names[0], {"distill": self.distill.to_dict()})] + [(n, None) for n in names[1:]]

    def is_scored(self, ref: ModelRef, task: str, name: str, method: dict | None) -> bool:
        """Whether row `name` of `ref` is scored on `task` as this run would score it: the stage skips it."""
        if ref.kind == "teacher":
            return self.teacher_current(task)
        path, recipe = result_path(self.ctx, name, task), self.recipe_for(task)
        return is_current(path, ref, recipe, data_source(self.ctx, task), method)

    def teacher_current(self, task: str) -> bool:
        ref = teacher_ref(self.ctx)
        path = result_path(self.ctx, "teacher", task)
        return is_current(path, ref, self.recipe_for(task), data_source(self.ctx, task)) and os.path.exists(
            weights_path(self.ctx, task)
        )

    def fine_tuned_teacher(self, task: str) -> dict:
        """The teacher's picked classifier for `task`: from disk when its recipe matches, else fine-tuned now."""
        if task not in self.teachers:
            if not self.teacher_current(task):
                self.score(teacher_ref(self.ctx), task, "teacher", None)
            with open(weights_path(self.ctx, task), "rb") as f:
                self.teachers[task] = flax.serialization.msgpack_restore(f.read())
        return self.teachers[task]

    def distill_data(self, task: str) -> DistillData:
        """The students' training set of `task` with the teacher's logits, made on first use (`teacher_pass`)."""
        if task not in self.distilled:
            for other in list(self.distilled):  # at most one task's: with augmentation it can be large
                del self.distilled[other]
            self.distilled[task] = self.teacher_pass(task)
        return self.distilled[task]

    def teacher_pass(self, task: str) -> DistillData:
        """A student's training set (subsampled as the recipe says, maybe augmented) with the teacher's logits."""
        from kdjax.finetune import head_of, predict_logits, subsample

        ctx, recipe, cfg = self.ctx, self.recipe_for(task), self.distill
        data, teacher = self.task(task), ctx.teacher
        classifier = self.fine_tuned_teacher(task)
        # The head the teacher was fine-tuned with (the recipe's pooling), so its logits are the saved classifier's.
        head = head_of(teacher.spec, data.task.num_labels, recipe)
        split = subsample(data.train, recipe.max_train_examples, recipe.seed)
        train = glue_data.encode(teacher.tokenizer, split, recipe.max_seq_len, recipe.bi_encoded)
        batch = 4 * recipe.per_device_batch_size * ctx.mesh.size
        pad = teacher.tokenizer.pad_token_id or 0

        def logits(enc: glue_data.Encoded) -> np.ndarray:
            return predict_logits(classifier, head, enc, batch, pad, recipe, ctx.mesh)

        out = prepare(cfg, train, logits, for_teacher(teacher, cfg, recipe.seed))
        if cfg.needs_states:
            out.teacher_encoder = classifier["bert"]
        return out

    def score(self, ref: ModelRef, task: str, name: str, method: dict | None, model=None) -> None:
        ctx, recipe = self.ctx, self.recipe_for(task)
        spec, params, tokenizer = model or load_model(ctx, ref)
        distill = self.distill_data(task) if method else None
        keep = ref.kind == "teacher"
        label = "task-distilled" if method else "fine-tuned"
        earlier = self.earlier(ref, task, name, method)
        t0, c0 = time.perf_counter(), plan.compile_seconds()
        kwargs = dict(spec=spec, pretrained=params, tokenizer=tokenizer, task_data=self.task(task), mesh=ctx.mesh)
        desc = f"glue {name} {task}"
        out = finetune(**kwargs, recipe=recipe, desc=desc, distill=distill, keep_params=keep, earlier=earlier)
        if keep:
            classifier = out.pop("params")
            picked = (float(out["picked_lr"]), out["seeds"][0])
            if classifier is None and not self.holds_classifier(task, picked):
                # The picked run was read, not trained, and the saved classifier is another run's: train that run
                # alone again (runs are a pure function of the recipe, rate and seed) for its weights.
                again = dataclasses.replace(recipe, learning_rates=(picked[0],))
                redo = {k: v for k, v in earlier.items() if k != picked}
                classifier = finetune(**kwargs, recipe=again, desc=desc, keep_params=True, earlier=redo)["params"]
                out["reused_runs"] -= 1
            if classifier is not None:
                _write_bytes(weights_path(ctx, task), flax.serialization.msgpack_serialize(classifier))
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
        if method or keep:  # which classifier the teacher's logits came from, or which one it saved
            record["distill_teacher_weights" if method else "classifier"] = teacher_fingerprint(weights_path(ctx, task))
        weights = ref.weights()
        if weights:
            record["weights"] = weights  # what the score was made from (see same_weights)
        if name != ref.name:
            record["twin"] = ref.name  # the distilled row this fine-tune-only baseline belongs to
        write_json(result_path(ctx, name, task), record)
        grid = ", ".join(f"{p['learning_rate']:g}:{_pct(p['score'])}" for p in out["grid"])
        shown = ", ".join(f"{k}={100 * v:.2f}" for k, v in out["scores"].items())
        runs, read = len(out["grid"]) * len(out["seeds"]), out["reused_runs"]
        reused = f", {read} of its {runs} runs read from its earlier score" if read else ""
        print(
            f"glue: {name} {task} ({label}): {shown} at lr {out['picked_lr']:g} [grid {grid}] "
            f"({out['wall_s']:.1f} s, {out['num_train_examples']} train{reused})"
        )
        self.done.append(f"{name}/{task}")
        role = "teacher" if keep else "distill" if method else "finetune"
        trained = runs - read
        plan.glue_scored(glue_plan.unit(role, task), time.perf_counter() - t0, trained, plan.compile_seconds() - c0)

    def earlier(self, ref: ModelRef, task: str, name: str, method: dict | None) -> dict:
        """The runs of `name`'s score on `task` that this run's recipe reuses (kdjax.glue_runs)."""
        path, recipe = result_path(self.ctx, name, task), self.recipe_for(task)
        return earlier_runs(path, ref, recipe, data_source(self.ctx, task), method, weights_path(self.ctx, task))

    def holds_classifier(self, task: str, run: tuple[float, int]) -> bool:
        """Whether W/glue/teacher/<task>.msgpack holds the classifier of `run` (learning rate, seed), as the
        teacher's score on disk says (before this run's is written)."""
        path = result_path(self.ctx, "teacher", task)
        try:
            old = read_json(path) if os.path.exists(path) else {}
        except ValueError:
            return False
        picked = (old.get("picked_lr"), (old.get("seeds") or [None])[0])
        return picked == run and saved_with(path, old, weights_path(self.ctx, task), "classifier")

    def zero_shot(self, ref: ModelRef, model=None) -> None:
        """STS-B zero-shot of `ref`'s encoder (kdjax.embedding_probe), unless made before from the same weights."""
        ctx = self.ctx
        path = os.path.join(os.path.dirname(result_path(ctx, ref.name, "stsb")), embedding_probe.FILE)
        data, weights = data_source(ctx, "stsb"), ref.weights()
        if embedding_probe.is_current(path, weights, ref.same_source, data):
            return
        row = {**ref.to_dict(), "weights": weights, "data": data}
        dev = self.task("stsb").dev["dev"]  # STS-B has one dev split
        out = embedding_probe.record(path, row, model or load_model(ctx, ref), dev, self.recipe.max_seq_len)
        print(
            f"glue: {ref.name} stsb zero-shot (embedding cosine, no fine-tuning): "
            f"spearman={out['spearman']:.2f}, pearson={out['pearson']:.2f}"
        )


def _pct(x) -> str:
    return "diverged" if x is None else f"{100 * x:.2f}"


def _write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def record_latency(ctx: RunContext, ref: ModelRef, spec: ArchSpec | None, scored: str = "") -> None:
    """Time a scored model once: nothing to do when it is recorded under this protocol (by the kd stage, or by an
    earlier run of this stage). Without `spec`, the architecture is read from the score file `scored`."""
    path = ctx.workdir.latency_path(ref.kind, ref.arch_id, ref.name)
    if model_latency.is_current(path, ctx.settings.nas.latency):
        return
    spec = spec or ArchSpec.from_dict(read_json(scored)["spec"])
    if ref.kind == "teacher":
        # Timed by the teacher stage under its identity; only the PyTorch time of its folder is new here.
        model_latency.record(path, spec, ctx.settings.nas.latency, ctx.teacher.folder, xla=ctx.teacher_latency())
    else:
        # Under PyTorch beside the teacher's folder: the speed-up is a paired timing (kdjax.torch_latency).
        source = ref.source if os.path.isdir(ref.source) else None
        model_latency.record(path, spec, ctx.settings.nas.latency, source, teacher_dir=ctx.teacher.folder)


def run(ctx: RunContext) -> dict:
    tasks = list(ctx.settings.glue.tasks)
    refs = resolve_models(ctx, list(ctx.settings.glue.models))
    check_distilled(refs)
    stage = Stage(ctx)
    print(f"glue: head {stage.recipe.pooling}: {DESCRIPTIONS[stage.recipe.pooling]} ({stage.pooling_why})")
    bi = [t for t in tasks if t in stage.bi_tasks]
    if bi:
        print(f"glue: {', '.join(bi)} bi-encoded: {BI_ENCODER} ({stage.bi_why})")
    todo: dict[str, list[tuple[str, str, dict | None]]] = {}
    skipped = 0
    for ref in refs:
        rows = [(task, name, method) for task in tasks for name, method in stage.methods(ref)]
        todo[ref.name] = [row for row in rows if not stage.is_scored(ref, *row)]
        skipped += len(rows) - len(todo[ref.name])
        if not todo[ref.name]:
            print(f"glue: {ref.name}: all {len(tasks)} task(s) already scored with this recipe")
            record_latency(ctx, ref, None, result_path(ctx, ref.name, tasks[0]))
    # Tasks outside, models inside: every student of a task distils from the one DistillData made for the task (the
    # teacher's logits on its training set and augmented copies), released before the next task's is made. With
    # models outside, each task's would have to be kept until the last student (SST-2 with augment_factor 20 is 1.4M
    # examples) or made again per student. A model is loaded once per task it is scored on: seconds, not minutes.
    last = {name: left[-1][0] for name, left in todo.items() if left}
    # The teacher first: a student before it in glue.models would have it fine-tuned on demand, then again as a row.
    ordered = sorted(refs, key=lambda r: r.kind != "teacher")
    for task in tasks:
        for ref in ordered:
            here = [(name, method) for t, name, method in todo[ref.name] if t == task]
            model = load_model(ctx, ref) if here else None
            if model is not None:
                for name, method in here:
                    stage.score(ref, task, name, method, model)
                if last[ref.name] == task:
                    record_latency(ctx, ref, model[0])
            if task == "stsb":
                stage.zero_shot(ref, model)
        stage.release(task)
    return {"models": [r.name for r in refs], "tasks": tasks, "scored": len(stage.done), "skipped": skipped}
