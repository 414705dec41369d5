"""What the glue stage will train, counted as kdjax.glue_stage and kdjax.finetune run it (the plan's glue line).

Per task, every row trains once per learning rate of glue.learning_rates and per seed (glue.seeds, for tasks with at
most glue.small_task_examples training examples), each time glue.num_epochs epochs in which a partial last batch is a
step. Students of this run (nas/kd/pdt/random rows) with glue.distill.enabled are trained twice: task-distilled
(`<model>`) and, with glue.distill.baseline, fine-tuned only (`<model>-ft`). A distilled row trains on its examples
plus glue.distill.augment_factor augmented copies of each (made with the teacher's masked-LM head when it has one),
against the fine-tuned teacher's logits; the copies and logits are made once per task and shared by every student of
it; intermediate losses also run the teacher inside every student step. Task distillation needs the fine-tuned
teacher, so the teacher is fine-tuned on a task a student distils on even when glue.models does not name it. Only
what is left is counted: a row the stage would skip (its score is current, kdjax.glue_status.scored) is counted as
done, unless a stage of the same run makes its model again.
"""

from __future__ import annotations

import dataclasses
import os

from kdjax.glue_data import TASKS
from kdjax.spec import ArchSpec

# GLUE train / dev sizes (the standard release, as the hub serves them) and typical tokens per example (WordPiece,
# with specials; rough). A local data.glue_dir is counted instead.
GLUE_TRAIN = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846, "mnli": 392702,
              "qnli": 104743, "rte": 2490, "wnli": 635}  # fmt: skip
GLUE_DEV = {"cola": 1043, "sst2": 872, "mrpc": 408, "stsb": 1500, "qqp": 40430, "mnli": 19647, "qnli": 5463,
            "rte": 277, "wnli": 71}  # fmt: skip
GLUE_TOKENS = {"cola": 12, "sst2": 25, "mrpc": 53, "stsb": 31, "qqp": 30, "mnli": 40, "qnli": 50, "rte": 70,
               "wnli": 40}  # fmt: skip
# Examples of a local task tokenised to measure its padded shapes (`shape`): a step computes its padded [rows, length]
# batch, not the real tokens, and at glue.bucket=32 that is 2.5-2.9x the real tokens of SST-2, CoLA and STS-B.
LENGTH_SAMPLE = 2048
# data.glue_dir=synthetic: what kdjax.glue_stage generates per task (train, and each dev split).
SYNTHETIC_TRAIN, SYNTHETIC_DEV = 64, 32

# Student rows (kdjax.glue_models.STUDENT_KINDS) are task-distilled; the teacher and other checkpoints fine-tuned.
ROLES = ("teacher", "distill", "finetune")


def unit(role: str, task: str) -> str:
    """The ETA unit of one scored row: its role and task (kdjax.plan.glue_scored)."""
    return f"{role}/{task}"


@dataclasses.dataclass
class Row:
    """A row the glue stage will score; `spec` is the search's estimate when the search has not run yet."""

    name: str
    kind: str
    spec: ArchSpec


@dataclasses.dataclass
class Work:
    """What the rows of one unit (role, task) train, summed over those rows."""

    trainings: int = 0  # rows of this role trained on this task (one `finetune` call each)
    runs: int = 0  # their runs (rate x seed) left to train: an earlier score's are read (kdjax.glue_runs)
    steps: int = 0  # optimizer steps, every rate and seed included
    examples: int = 0  # training examples seen (originals and augmented copies, every epoch, rate and seed)
    augmented: int = 0  # augmented copies made (distilled rows)
    teacher_logit_examples: int = 0  # examples the fine-tuned teacher labels before a row distils
    teacher_step_examples: int = 0  # examples the teacher encodes inside student steps (intermediate losses)
    flops: float = 0.0


def _count_rows(path: str, header: bool) -> int | None:
    """Examples in one GLUE TSV as kdjax.glue_data reads it (a row per non-empty line); None when unreadable."""
    try:
        with open(path, "rb") as f:
            n = sum(1 for line in f if line.strip(b"\r\n"))
    except OSError:
        return None
    return max(0, n - int(header))


def task_size(glue_dir: str, workdir, task: str) -> tuple[int, int]:
    """(training examples, dev examples over its dev splits) of `task` as the glue stage will load it."""
    spec = TASKS[task]
    if glue_dir == "synthetic":
        root = workdir.path("cache", "glue-synthetic")
        default = (SYNTHETIC_TRAIN, SYNTHETIC_DEV * len(spec.dev_splits))
    elif glue_dir:
        root, default = os.path.expanduser(glue_dir), (GLUE_TRAIN[task], GLUE_DEV[task])
    else:
        return GLUE_TRAIN[task], GLUE_DEV[task]
    folder = os.path.join(root, spec.folder)
    train = _count_rows(os.path.join(folder, "train.tsv"), spec.header)
    devs = [_count_rows(os.path.join(folder, f), spec.header) for _, f, _ in spec.dev_splits]
    if train is None or any(d is None for d in devs):  # generated later (synthetic), or the stage will say so
        return default
    return train, sum(d or 0 for d in devs)


@dataclasses.dataclass(frozen=True)
class Shape:
    """One task's examples as the glue stage pads them (kdjax.glue_data.make_batch): token rows computed per example
    (a bi-encoded pair is two rows; filler rows of a short last batch count) and the mean padded length, which
    attention's cost grows with. `train`: length-grouped training batches; `sorted`: batches sorted by length, as the
    teacher labels the training set and every model scores the dev splits (taken to be shaped like the training set)."""

    train_tokens: float
    train_len: float
    sorted_tokens: float
    sorted_len: float

    def forward_flops(self, spec: ArchSpec, sorted_batches: bool = False) -> float:
        """One forward pass of `spec` over one example."""
        if sorted_batches:
            tokens, length = self.sorted_tokens, self.sorted_len
        else:
            tokens, length = self.train_tokens, self.train_len
        return float(spec.flops_per_token(max(1, round(length)))) * tokens


def _padded(lengths, batches, batch_size: int, rows: int, recipe) -> tuple[float, float]:
    """(token rows per example, mean padded length) of `batches` (example indices) over examples of `lengths`."""
    from kdjax.glue_data import padded_lengths

    padded = padded_lengths(lengths, batches, recipe.bucket, recipe.max_seq_len)
    return rows * batch_size * sum(padded) / max(1, len(lengths)), sum(padded) / max(1, len(padded))


def shape(ctx, task: str, batch_size: int) -> Shape:
    """`task`'s padded shapes, measured on up to LENGTH_SAMPLE of the training examples the recipe keeps, tokenised
    with the teacher's tokenizer and batched as kdjax.finetune batches them; where the data is not in a local folder
    (the hub's, or synthetic tasks not generated yet), GLUE_TOKENS rounded up to glue.bucket."""
    from kdjax import glue_data
    from kdjax.classifier import resolve_bi_encoder_tasks
    from kdjax.finetune import epoch_order, subsample

    s = ctx.settings
    recipe = s.glue.recipe
    bi = task in resolve_bi_encoder_tasks(s.glue.bi_encoder_tasks, ctx.teacher.folder)[0]
    folder = ctx.workdir.path("cache", "glue-synthetic") if s.data.glue_dir == "synthetic" else s.data.glue_dir
    if not folder or not os.path.exists(os.path.join(os.path.expanduser(folder), TASKS[task].folder, "train.tsv")):
        rows = 2 if bi else 1
        length = glue_data.bucket_length((GLUE_TOKENS[task] + 2 * bi) // rows, recipe.bucket, recipe.max_seq_len)
        return Shape(rows * length, length, rows * length, length)
    train = subsample(glue_data.load_task(task, folder).train, recipe.max_train_examples, recipe.seed)
    train = subsample(train, LENGTH_SAMPLE, recipe.seed)
    lengths = glue_data.encode(ctx.teacher.tokenizer, train, recipe.max_seq_len, bi).lengths
    rows = 2 if bi else 1
    grouped = epoch_order(lengths, batch_size, 0, recipe.seed, recipe.length_window)
    big = 4 * batch_size  # kdjax.finetune scores and labels in batches 4x the training batch
    by_length = glue_data.eval_order(lengths, big)
    return Shape(*_padded(lengths, grouped, batch_size, rows, recipe), *_padded(lengths, by_length, big, rows, recipe))


def _variants(ctx, stages: list[str], arch_id: str | None, index: int, kd_spec: ArchSpec) -> list[Row]:
    """The exports of the search winner `arch_id` (None: not searched yet; `index` = its rank) that the glue stage
    will find: those that exist and those this run's nas and kd stages will make (kdjax.glue_models.variants)."""
    from kdjax.pdt import ready_winners

    kd = "kd" in stages
    pdt = kd and ctx.settings.kd.pdt_steps > 0
    if arch_id is None:  # the nas stage of this run exports it; the kd stage distils the best and PDTs each winner
        made = ["nas"] + ["kd"] * (kd and index == 0) + ["pdt"] * pdt
        return [Row(f"{kind}-#{index}", kind, kd_spec) for kind in made]
    spec = ctx.student_spec(arch_id)
    wd = ctx.workdir
    exists = {
        "nas": os.path.isdir(wd.export_dir("nas", arch_id, "")),
        "kd": os.path.isdir(wd.export_dir("kd", arch_id, "")) or (kd and index == 0),
        "pdt": os.path.isdir(wd.export_dir("pdt", arch_id, "")) or (pdt and arch_id in ready_winners(ctx)),
    }
    return [Row(f"{kind}-{spec.arch_id}", kind, spec) for kind, ok in exists.items() if ok]


def rows(ctx, stages: list[str], kd_spec: ArchSpec) -> list[Row]:
    """The rows of glue.models the glue stage will score, in order (kdjax.glue_models.resolve_models, where the
    exports the nas and kd stages of this run will make are counted before they exist)."""
    from kdjax.glue_models import chosen_arch, is_variant_name, resolve_models
    from kdjax.nas.topk import read_top_k

    searched = "nas" in stages
    out: list[Row] = []
    for item in ctx.settings.glue.models:
        if item == "best":
            out += _variants(ctx, stages, None if searched else chosen_arch(ctx)[0], 0, kd_spec)
        elif item == "top_k":
            top = read_top_k(ctx.workdir.path("nas"), ctx.settings.nas)
            archs = [None] * ctx.settings.nas.top_k if searched else [e["arch_id"] for e in top]
            out += [r for i, a in enumerate(archs) for r in _variants(ctx, stages, a, i, kd_spec)]
        elif is_variant_name(item):
            kind, arch_id = item.split("-", 1)
            spec = ctx.student_spec(arch_id)
            out.append(Row(f"{kind}-{spec.arch_id}", kind, spec))
        else:  # teacher, random baselines, arch ids, folders and hub ids: known before any stage runs
            for ref in resolve_models(ctx, [item]):
                if ref.kind == "teacher":
                    spec = ctx.teacher.spec
                elif ref.arch_id:
                    spec = ctx.student_spec(ref.arch_id)
                else:  # a folder's config says its size; a hub id's is not known offline: the kd student stands in
                    spec = _folder_spec(ref.source) if ref.kind == "folder" else None
                    spec = spec or kd_spec
                out.append(Row(ref.name, ref.kind, spec))
    unique: dict[str, Row] = {}
    for r in out:
        unique.setdefault(r.name, r)
    return list(unique.values())


def _folder_spec(folder: str) -> ArchSpec | None:
    """The architecture in `folder`'s config.json; None when unreadable (the glue stage reports that itself)."""
    from kdjax.errors import KdjaxError
    from kdjax.teacher import load_config_dict, spec_from_hf_config

    try:
        return spec_from_hf_config(load_config_dict(folder))
    except (KdjaxError, OSError, ValueError, KeyError):
        return None


def roles(ctx, row: Row) -> list[str]:
    """The trainings of one row per task, as the glue stage makes them (kdjax.glue_models.row_names)."""
    from kdjax.glue_models import distils

    if row.kind == "teacher":
        return ["teacher"]
    if distils(ctx, row.kind):
        return ["distill"] + ["finetune"] * ctx.settings.glue.distill.baseline
    return ["finetune"]


def trainings(ctx, row: Row) -> list[tuple[str, str]]:
    """(row name, role) of each training of one row per task: `roles` under the names the stage writes them."""
    from kdjax.glue_models import ModelRef, row_names

    return list(zip(row_names(ctx, ModelRef(row.name, row.kind, "")), roles(ctx, row)))


# The stage that makes each student kind's models: forced in the same run, it makes them again, so their scores are
# not done however current they are now.
MADE_BY = {"nas": "nas", "kd": "kd", "pdt": "kd", "random": "kd"}


def _remade(ctx, stages: list[str], planned: list[Row]) -> set[str]:
    """Rows whose model a forced stage of this run makes again: nothing scored of them counts."""
    return {n for r in planned if ctx.settings.force and MADE_BY.get(r.kind) in stages for n, _ in trainings(ctx, r)}


def _done(ctx, stages: list[str], planned: list[Row]) -> set[tuple[str, str]]:
    """(row, task) pairs the glue stage of this run will not train: scored and current (kdjax.glue_status.scored), of
    a model no stage of the run makes again."""
    from kdjax.glue_status import scored  # not at the top: glue_status imports glue_stage, which imports this

    remade = _remade(ctx, stages, planned)
    return {(name, task) for name, task in scored(ctx) if name not in remade}


def _reusable(ctx, stages: list[str], planned: list[Row]) -> dict[tuple[str, str], set[tuple[float, int]]]:
    """(row, task) -> runs of its earlier score the stage reads (kdjax.glue_status.reusable), for rows no stage of the
    run makes again."""
    from kdjax.glue_status import reusable

    remade = _remade(ctx, stages, planned)
    return {key: runs for key, runs in reusable(ctx).items() if key[0] not in remade}


@dataclasses.dataclass
class GluePlan:
    rows: list[Row]  # glue.models' rows, plus the teacher when students distil from it and glue.models omits it
    units: dict[str, Work]  # unit(role, task) -> what its rows have left to train
    seeds: dict[str, int]  # task -> seeds per grid point
    done: Work = dataclasses.field(default_factory=Work)  # the trainings already scored, and their steps
    total: int = 0  # trainings of the stage, done or not


def _train_examples(ctx, task: str) -> tuple[int, int]:
    """(training examples after glue.max_train_examples, dev examples) of `task`."""
    s = ctx.settings
    n_all, n_dev = task_size(s.data.glue_dir, ctx.workdir, task)
    cap = s.glue.recipe.max_train_examples
    return (min(n_all, cap) if cap else n_all), n_dev


def work(ctx, stages: list[str], kd_spec: ArchSpec) -> GluePlan:
    """What the glue stage of a run of `stages` has left to train, per unit (role, task), and what it has done."""
    s = ctx.settings
    recipe, cfg = s.glue.recipe, s.glue.distill.loss
    teacher = ctx.teacher
    planned = rows(ctx, stages, kd_spec)
    named_teacher = any(r.kind == "teacher" for r in planned)
    if any("distill" in roles(ctx, r) for r in planned) and not named_teacher:
        planned.insert(0, Row("teacher", "teacher", teacher.spec))
    done = _done(ctx, stages, planned)
    reusable = _reusable(ctx, stages, planned)
    batch = max(1, recipe.per_device_batch_size * ctx.mesh.size)
    factor = max(0, cfg.augment_factor)
    # The augmenter's masked-LM head: transform (e x h) and the tied decoder over the vocabulary, per token.
    t_spec = teacher.spec
    mlm = 2 * t_spec.embed_dim * (t_spec.hidden_size + t_spec.vocab_size) if teacher.has_mlm_head else 0
    out = GluePlan(planned, {}, {})
    for task in s.glue.tasks:
        n, n_dev = _train_examples(ctx, task)
        seeds = recipe.seeds_for(n)
        out.seeds[task] = len(seeds)
        wanted = {(float(lr), seed) for lr in recipe.learning_rates for seed in seeds}
        padded = shape(ctx, task, batch)
        t_flops = padded.forward_flops(t_spec, sorted_batches=True)  # the teacher labels one example
        todo = [(row, role) for row in planned for name, role in trainings(ctx, row) if (name, task) not in done]
        distilled = any(role == "distill" for _, role in todo)
        for row in planned:
            for name, role in trainings(ctx, row):
                out.total += 1
                size = n * (1 + factor) if role == "distill" else n
                per_run = -(-size // batch) * recipe.num_epochs  # steps of one rate and seed
                if (name, task) in done:
                    out.done.trainings += 1
                    out.done.steps += per_run * len(wanted)
                    continue
                if role == "teacher" and not named_teacher and not distilled:
                    continue  # fine-tuned only for a student that distils on this task
                read = len(wanted & reusable.get((name, task), set()))  # runs an earlier score made
                runs = len(wanted) - read
                out.done.steps += per_run * read
                steps = per_run * runs
                w = out.units.setdefault(unit(role, task), Work())
                seen = size * recipe.num_epochs * runs
                w.trainings += 1
                w.runs += runs
                w.steps += steps
                w.examples += seen
                # Training is 3x a forward; every rate and seed is scored on the full dev splits.
                w.flops += 3 * seen * padded.forward_flops(row.spec)
                w.flops += n_dev * runs * padded.forward_flops(row.spec, sorted_batches=True)
                if role == "distill" and cfg.needs_states:
                    w.teacher_step_examples += seen
                    w.flops += seen * padded.forward_flops(t_spec)
        if distilled:  # the teacher's logits (and the augmented copies) for every student of the task, made once
            w = out.units[unit("distill", task)]
            w.augmented += n * factor
            w.teacher_logit_examples += n * (1 + factor)
            w.flops += n * (1 + factor) * t_flops
            if mlm:  # embedding neighbours (no MLM head) cost next to nothing
                w.flops += n * factor * (t_flops + mlm * padded.sorted_tokens)
    return out


def describe(ctx, plan: GluePlan) -> str:
    """The plan's glue line: the trainings per task and what multiplies them, and how many are scored already."""
    g, recipe = ctx.settings.glue, ctx.settings.glue.recipe
    if not plan.rows:
        return f"no model of glue.models ({','.join(g.models)}) to score yet"
    by_role = {r: sum(1 for row in plan.rows if r in roles(ctx, row)) for r in ROLES}
    parts = []
    if by_role["teacher"]:
        parts.append("teacher" if "teacher" in g.models else "teacher, fine-tuned for task distillation")
    if by_role["distill"]:
        twin = " and fine-tuned only" if g.distill.baseline else ""
        parts.append(f"{by_role['distill']} student(s) task-distilled{twin}")
    plain = by_role["finetune"] - (by_role["distill"] if g.distill.baseline else 0)
    if plain:
        parts.append(f"{plain} model(s) fine-tuned")
    tasks = g.tasks
    what = (
        f"{sum(by_role.values())} training(s) per task ({'; '.join(parts)}) x {len(tasks)} task(s) "
        f"({','.join(tasks)}) x {recipe.num_epochs} epochs"
    )
    if len(recipe.learning_rates) > 1:
        what += f" x {len(recipe.learning_rates)} learning rates"
    seeded = [t for t in tasks if plan.seeds[t] > 1]
    if seeded:
        what += f" x {recipe.seeds} seeds on {','.join(seeded)}"
    factor = g.distill.loss.augment_factor
    if by_role["distill"] and factor > 0:
        what += f"; distilled rows on {1 + factor}x examples (augmented)"
    if plan.done.trainings:
        what += f"; {plan.done.trainings} of the {plan.total} (model, task) trainings scored already"
    return what
