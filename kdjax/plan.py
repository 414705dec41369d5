"""What a run will cost: the plan printed at start, and an ETA once the first steps of a stage are timed.

The plan counts work in steps and examples per stage and estimates each stage's compute in forward+backward matmul
FLOPs (`ArchSpec.flops_per_token`; training = 3x a forward). Nothing is guessed in seconds until something has been
timed: the first timing gives a FLOP rate, each stage's own timing then replaces it for that stage, and every ETA
line says which stages are extrapolated. Estimates, not measurements: compile time, latency runs, data preparation
and the report are not counted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

from kdjax.config import split_list

log = logging.getLogger(__name__)

# GLUE train / dev sizes (the standard release) and typical tokens per example (WordPiece, with specials; rough).
GLUE_TRAIN = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846, "mnli": 392702,
              "qnli": 104743, "rte": 2490, "wnli": 635}  # fmt: skip
GLUE_DEV = {"cola": 1043, "sst2": 872, "mrpc": 408, "stsb": 1500, "qqp": 40430, "mnli": 19647, "qnli": 5463,
            "rte": 277, "wnli": 71}  # fmt: skip
GLUE_TOKENS = {"cola": 12, "sst2": 25, "mrpc": 53, "stsb": 31, "qqp": 30, "mnli": 40, "qnli": 50, "rte": 70,
               "wnli": 40}  # fmt: skip


@dataclasses.dataclass
class StagePlan:
    name: str
    what: str  # one line: candidates, models, tasks
    steps: int  # optimizer steps (all models of the stage)
    examples: int  # training examples (rows or sentences) seen
    flops: float  # estimated compute (FLOPs); 0 = negligible


def _kd_step_flops(student, teacher, batch: int, seq: int, teacher_runs: bool = True) -> float:
    """One KD step: student forward+backward (3x) and, unless cached, the teacher forward."""
    f = 3 * student.flops_per_token(seq) + (teacher.flops_per_token(seq) if teacher_runs else 0)
    return float(f) * batch * seq


def build(ctx) -> list[StagePlan]:
    """The plan of the configured stages (packs the corpus when nas or kd is selected: they need it anyway)."""
    from kdjax.kd_stage import chosen_arch, num_steps

    c, teacher = ctx.config, ctx.teacher.spec
    seq, batch = int(c.data.max_seq_len), ctx.global_batch
    plans: list[StagePlan] = []
    rows = len(ctx.rows) if {"nas", "kd"} & set(ctx.stages) else 0
    kd_spec = ctx.student_spec(chosen_arch(ctx)[0])
    top_k = int(c.nas.top_k)
    if "teacher" in ctx.stages:
        plans.append(StagePlan("teacher", f"load {c.teacher.name}, time its latency", 0, 0, 0.0))
    if "nas" in ctx.stages:
        nas = c.nas
        budget = (
            int(nas.num_episodes) * int(nas.candidates_per_episode) if nas.strategy == "lstm" else int(nas.num_trials)
        )
        proxy = max(1, int(rows * float(nas.proxy_fraction)))
        per_epoch = max(1, proxy // batch)
        if int(nas.mini_kd_steps_per_epoch):
            per_epoch = min(per_epoch, int(nas.mini_kd_steps_per_epoch))
        steps = int(nas.mini_kd_epochs) * per_epoch
        # With the teacher cache the teacher runs once per step for the whole search, not once per candidate.
        cached = int(nas.teacher_cache_mb) > 0
        flops = budget * steps * _kd_step_flops(kd_spec, teacher, batch, seq, teacher_runs=not cached)
        if cached:
            flops += steps * float(teacher.flops_per_token(seq)) * batch * seq
        what = f"{nas.strategy}, {budget} candidates x mini-KD {steps} steps on {proxy} proxy rows"
        plans.append(StagePlan("nas", what, budget * steps, budget * steps * batch, flops))
    if "kd" in ctx.stages:
        steps = num_steps(c.kd, max(1, rows // batch))
        pdt = int(c.kd.pdt_steps)
        winners = top_k if pdt else 0
        total = steps + winners * pdt
        what = f"{kd_spec.arch_id} {steps} steps x batch {batch} ({rows} corpus rows of {seq} tokens)"
        if winners:
            what += f"; PDT of {winners} winner(s) x {pdt} steps"
        plans.append(StagePlan("kd", what, total, total * batch, _kd_step_flops(kd_spec, teacher, batch, seq) * total))
    if "glue" in ctx.stages:
        plans.append(_glue_plan(ctx, kd_spec, top_k))
    if "report" in ctx.stages:
        plans.append(StagePlan("report", "tables and figures", 0, 0, 0.0))
    return plans


def _glue_plan(ctx, kd_spec, top_k: int) -> StagePlan:
    g, c = ctx.config.glue, ctx.config
    variants = 1 + (1 if "kd" in ctx.stages or c.kd.num_train_steps else 0) + (1 if int(c.kd.pdt_steps) else 0)
    counts = {"teacher": 1, "best": variants, "top_k": top_k * variants, "random": int(g.num_random_baselines)}
    models = split_list(g.models)
    n_student = sum(counts.get(m, 1) for m in models if m != "teacher")
    has_teacher = "teacher" in models
    tasks = split_list(g.tasks)
    grid = len(split_list(str(g.get("learning_rates", "")))) or 1
    cap = int(g.max_train_examples)
    seq = int(g.max_seq_len)
    examples = flops = 0.0
    for t in tasks:
        n_train = min(GLUE_TRAIN[t], cap) if cap else GLUE_TRAIN[t]
        tok = min(GLUE_TOKENS[t], seq)
        seen = n_train * int(g.num_epochs) * grid
        examples += seen * (n_student + has_teacher)
        per_model = (3 * seen + GLUE_DEV[t] * grid) * tok
        flops += per_model * (
            n_student * kd_spec.flops_per_token(tok) + has_teacher * ctx.teacher.spec.flops_per_token(tok)
        )
    steps = int(examples // max(1, int(g.per_device_batch_size) * ctx.mesh.size))
    what = f"{n_student + has_teacher} model(s) x {len(tasks)} task(s) ({','.join(tasks)}) x {int(g.num_epochs)} epochs"
    if grid > 1:
        what += f" x {grid} learning rates"
    return StagePlan("glue", what, steps, int(examples), flops)


def format_plan(plans: list[StagePlan]) -> str:
    lines = ["plan (FLOPs = estimated matmul compute; seconds follow once the first steps are timed):"]
    for p in plans:
        cost = f"{p.steps:,} steps, {p.examples:,} examples, {p.flops:.2e} FLOPs" if p.flops else "no training"
        lines.append(f"  {p.name:<8} {p.what}; {cost}")
    return "\n".join(lines)


def _dur(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Eta:
    """Per-stage seconds: a stage's own measured rate once timed, else the FLOP rate of the latest timed stage."""

    def __init__(self, plans: list[StagePlan], min_interval_s: float = 30.0):
        self.plans = {p.name: p for p in plans}
        self.order = [p.name for p in plans]
        self.rates: dict[str, float] = {}  # stage -> FLOP/s measured in that stage
        self.left: dict[str, float] = {}  # stage -> seconds left, measured
        self.finished: set[str] = set()
        self.min_interval_s = min_interval_s
        self._last_print = -math.inf

    def timed(self, stage: str, done: float, work: float, elapsed_s: float) -> str | None:
        """`work` (a fraction of `stage`'s planned work) took `elapsed_s`; `done` of it is finished in all.
        Prints (and returns) the ETA line at most every `min_interval_s`, and always at the first timing."""
        plan = self.plans.get(stage)
        if plan is None or elapsed_s <= 0 or work <= 0:
            return None
        first = stage not in self.left
        self.left[stage] = max(0.0, 1.0 - done) * elapsed_s / work
        if plan.flops > 0:
            self.rates[stage] = plan.flops * work / elapsed_s
        now = time.monotonic()
        if not first and now - self._last_print < self.min_interval_s:
            return None
        self._last_print = now
        line = self.line(stage)
        print(line, flush=True)
        return line

    def done(self, stage: str) -> None:
        self.finished.add(stage)
        self.left.pop(stage, None)

    def estimate(self, stage: str) -> tuple[float, bool]:
        """(seconds left, measured?) for one stage."""
        if stage in self.finished:
            return 0.0, True
        if stage in self.left:
            return self.left[stage], True
        plan = self.plans[stage]
        if not plan.flops:
            return 0.0, False
        rate = next((self.rates[s] for s in reversed(self.order) if s in self.rates), None)
        return (plan.flops / rate if rate else math.nan), False

    def line(self, current: str) -> str:
        parts, total = [], 0.0
        for s in self.order:
            if s in self.finished:
                continue
            sec, measured = self.estimate(s)
            total += sec
            if self.plans[s].flops or s in self.left:
                parts.append(f"{s} {'' if measured else '~'}{_dur(sec)}")
        finish = time.strftime("%H:%M", time.localtime(time.time() + total)) if math.isfinite(total) else "?"
        return (
            f"eta ({current} timed): " + ", ".join(parts) + f"; overall {_dur(total)} left (about {finish}); "
            "~ = extrapolated from FLOPs at the measured rate"
        )


# The run's tracker, set by `start`; stages report through `timed` (a no-op when no plan was started, e.g. tests).
current: Eta | None = None


def start(ctx) -> Eta:
    global current
    plans = build(ctx)
    print(format_plan(plans), flush=True)
    current = Eta(plans)
    return current


def timed(stage: str, done: float, work: float, elapsed_s: float) -> None:
    if current is not None:
        current.timed(stage, done, work, elapsed_s)


def stage_done(stage: str) -> None:
    if current is not None:
        current.done(stage)


class EtaWriter:
    """A metric writer wrapper for `distill`: each flush reports the stage's progress to the tracker.

    The stage runs `stage_steps` steps in all (e.g. KD, then PDT of each winner); this run starts at `steps_before`.
    Timing starts at the first flush, so compilation is not extrapolated.
    """

    def __init__(self, inner, stage: str, steps_before: int, stage_steps: int):
        self.inner, self.stage = inner, stage
        self.steps_before, self.stage_steps = steps_before, max(1, stage_steps)
        self.t0: float | None = None
        self.first = 0

    def write(self, step: int, scalars: dict) -> None:
        if self.inner is not None:
            self.inner.write(step, scalars)
        now = time.perf_counter()
        if self.t0 is None:
            self.t0, self.first = now, step
            return
        work = (step - self.first) / self.stage_steps
        timed(self.stage, (self.steps_before + step) / self.stage_steps, work, now - self.t0)

    def truncate_after(self, step: int) -> None:
        if self.inner is not None:
            self.inner.truncate_after(step)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
