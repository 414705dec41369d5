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
import threading
import time

import jax

from kdjax.errors import KdjaxError
from kdjax.hooks import Hook, Report

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StagePlan:
    name: str
    what: str  # one line: candidates, models, tasks
    steps: int  # optimizer steps (all models of the stage)
    examples: int  # training examples (rows or sentences) seen
    flops: float  # estimated compute (FLOPs); 0 = negligible
    # glue: progress by unit (kdjax.glue_plan.unit: role/task): the cost of one run (a rate and seed) of a row of the
    # unit, and how many runs it has left.
    units: dict[str, float] = dataclasses.field(default_factory=dict)
    unit_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    # Steps an earlier run of the stage already trained (or scored): `steps`, `examples` and `flops` are what is left.
    done_steps: int = 0


def _kd_step_flops(student, teacher, batch: int, seq: int, teacher_runs: bool = True) -> float:
    """One KD step: student forward+backward (3x) and, unless cached, the teacher forward."""
    f = 3 * student.flops_per_token(seq) + (teacher.flops_per_token(seq) if teacher_runs else 0)
    return float(f) * batch * seq


def build(ctx, stages: list[str]) -> list[StagePlan]:
    """The plan of `stages` (packs the corpus when nas or kd is among them: they need it anyway)."""
    from kdjax.glue_models import chosen_spec

    s, teacher = ctx.settings, ctx.teacher.spec
    seq, batch = s.data.max_seq_len, ctx.global_batch
    plans: list[StagePlan] = []
    rows = len(ctx.rows) if {"nas", "kd"} & set(stages) else 0
    kd_spec = chosen_spec(ctx)
    if "teacher" in stages:
        plans.append(StagePlan("teacher", f"load {s.teacher.name}, time its latency", 0, 0, 0.0))
    if "nas" in stages:
        nas = s.nas
        budget = nas.budget
        proxy = rows if nas.proxy_fraction >= 1 else max(1, round(rows * nas.proxy_fraction))  # proxy_subset
        per_epoch = max(1, proxy // batch)
        if nas.mini_kd_steps_per_epoch:
            per_epoch = min(per_epoch, nas.mini_kd_steps_per_epoch)
        steps = nas.mini_kd_epochs * per_epoch
        # With the teacher cache the teacher runs once per step for the whole search, not once per candidate.
        cached = nas.teacher_cache_mb > 0
        flops = budget * steps * _kd_step_flops(kd_spec, teacher, batch, seq, teacher_runs=not cached)
        if cached:
            flops += steps * float(teacher.flops_per_token(seq)) * batch * seq
        what = f"{nas.strategy}, {budget} candidates x mini-KD {steps} steps on {proxy} proxy rows"
        plans.append(StagePlan("nas", what, budget * steps, budget * steps * batch, flops))
    if "kd" in stages:
        plans.append(_kd_plan(ctx, stages, kd_spec, rows))
    if "glue" in stages:
        plans.append(_glue_plan(ctx, stages, kd_spec))
    if "report" in stages:
        plans.append(StagePlan("report", "tables and figures", 0, 0, 0.0))
    return plans


def _done(steps: int, done: int) -> str:
    """What a part of a stage has done already: nothing to say, all of it, or some."""
    return "" if not done else " (done)" if done >= steps else f" ({done:,} done)"


def _kd_plan(ctx, stages: list[str], kd_spec, rows: int) -> StagePlan:
    """The kd line: full KD of the chosen student, PDT of the winners, then KD of the models glue.models names, each
    counted as kdjax.kd_stage.distillations says what is left of it."""
    from kdjax.kd_stage import Distillation, distillations

    s, teacher = ctx.settings, ctx.teacher.spec
    seq, batch = s.data.max_seq_len, ctx.global_batch
    steps, pdt_steps = s.kd.num_steps(max(1, rows // batch)), s.kd.pdt_steps
    work = distillations(ctx, steps)
    if "nas" in stages:
        # The search picks the student and the winners: KD of its best and PDT of every top-k winner, all to do.
        searched = [Distillation("kd", kd_spec, "", steps, 0)]
        searched += [Distillation("pdt", kd_spec, "", pdt_steps, 0)] * (s.nas.top_k if pdt_steps else 0)
        work = searched + [d for d in work if d.kind == "target"]
    parts = {kind: [d for d in work if d.kind == kind] for kind in ("kd", "pdt", "target")}

    def done(kind: str) -> str:
        return _done(sum(d.steps for d in parts[kind]), sum(d.done for d in parts[kind]))

    what = f"{kd_spec.arch_id} {steps} steps x batch {batch} ({rows} corpus rows of {seq} tokens)" + done("kd")
    if "nas" in stages:
        what = "the search's best (estimated as " + what + ")"
    if parts["pdt"]:
        what += f"; PDT of {len(parts['pdt'])} winner(s) x {pdt_steps} steps" + done("pdt")
    if parts["target"]:
        what += f"; KD of {len(parts['target'])} model(s) glue.models names x {steps} steps" + done("target")
    left = sum(d.steps - d.done for d in work)
    flops = sum(_kd_step_flops(d.spec, teacher, batch, seq) * (d.steps - d.done) for d in work)
    return StagePlan("kd", what, left, left * batch, flops, done_steps=sum(d.done for d in work))


def _glue_plan(ctx, stages: list[str], kd_spec) -> StagePlan:
    from kdjax import glue_plan

    planned = glue_plan.work(ctx, stages, kd_spec)
    units = planned.units.values()
    return StagePlan(
        "glue",
        glue_plan.describe(ctx, planned),
        sum(w.steps for w in units),
        sum(w.examples for w in units),
        sum(w.flops for w in units),
        {k: w.flops / w.runs for k, w in planned.units.items() if w.runs},
        {k: w.runs for k, w in planned.units.items() if w.runs},
        planned.done.steps,
    )


def format_plan(plans: list[StagePlan]) -> str:
    lines = ["plan (FLOPs = estimated matmul compute; seconds follow once the first steps are timed):"]
    for p in plans:
        cost = f"{p.steps:,} steps, {p.examples:,} examples, {p.flops:.2e} FLOPs" if p.flops else "no training"
        if p.done_steps and p.steps:  # a resumed stage, or one run again for what is new: only what is left counts
            cost = f"{p.steps:,} steps left ({p.done_steps:,} done), {p.examples:,} examples, {p.flops:.2e} FLOPs"
        elif p.done_steps:
            cost = f"nothing left to train ({p.done_steps:,} steps done)"
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
        self._units: dict[str, list[float]] = {}  # stage -> [fraction done, seconds spent]

    def timed(
        self, stage: str, done: float, work: float, elapsed_s: float, compute_s: float | None = None
    ) -> str | None:
        """`work` (a fraction of `stage`'s planned work) took `elapsed_s`; `done` of it is finished in all.
        `compute_s` (default `elapsed_s`) is the part spent computing, not compiling: the FLOP rate other stages are
        extrapolated with. Prints (and returns) the ETA line at most every `min_interval_s`, and at the first timing."""
        plan = self.plans.get(stage)
        if plan is None or elapsed_s <= 0 or work <= 0:
            return None
        first = stage not in self.left
        self.left[stage] = max(0.0, 1.0 - done) * elapsed_s / work
        if plan.flops > 0:
            self.rates[stage] = plan.flops * work / max(compute_s or elapsed_s, 1e-9)
        now = time.monotonic()
        if not first and now - self._last_print < self.min_interval_s:
            return None
        self._last_print = now
        line = self.line(stage)
        print(line, flush=True)
        return line

    def unit_done(self, stage: str, unit: str, wall_s: float, count: int = 1, compile_s: float = 0.0) -> str | None:
        """Progress by finished units (glue: `count` runs of a row on one task), weighted by their planned cost.
        `compile_s` of `wall_s` went to compiling programs that later units reuse: it is not extrapolated."""
        plan = self.plans.get(stage)
        if plan is None or not plan.units or unit not in plan.units or count <= 0:
            return None
        total = sum(cost * plan.unit_counts.get(u, 1) for u, cost in plan.units.items())
        got = self._units.setdefault(stage, [0.0, 0.0])
        got[0] += count * plan.units[unit] / total
        got[1] += max(0.0, wall_s - compile_s)
        return self.timed(stage, got[0], got[0], got[1])

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


def start(ctx, stages: list[str]) -> Eta | None:
    """Print the plan of `stages` (the ones this run will not skip) and track their ETA."""
    global current
    current = None
    if not set(stages) - {"report"}:  # nothing to plan: no teacher needs loading for it
        return None
    try:
        plans = build(ctx, stages)
    except KdjaxError:
        raise  # a user error (missing corpus, bad teacher) is reported now rather than after a stage
    except (OSError, ValueError, KeyError) as e:
        # A damaged intermediate file (e.g. nas/top_k.json) is for the stage that reads it to report.
        log.warning("no plan: %s", e)
        return None
    print(format_plan(plans), flush=True)
    current = Eta(plans)
    return current


def timed(stage: str, done: float, work: float, elapsed_s: float, compute_s: float | None = None) -> None:
    if current is not None:
        current.timed(stage, done, work, elapsed_s, compute_s)


def glue_scored(unit: str, wall_s: float, runs: int, compile_s: float = 0.0) -> None:
    """One row of the glue stage was scored on one task (`kdjax.glue_plan.unit`), training `runs` runs (rate x
    seed; an earlier score's are read) in `wall_s` seconds, `compile_s` of them compiling (`compile_seconds`)."""
    if current is not None:
        current.unit_done("glue", unit, wall_s, runs, compile_s)


# Lowering and XLA compilation, as jax reports them (a persistent-cache hit reports its retrieval). Tracing is left
# out: its event nests (a jitted function called while tracing another reports inside the outer one's span).
_COMPILE_EVENTS = frozenset(
    {"/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration"}
)


class _CompileClock:
    """The process's lowering and XLA-compile seconds (all threads), summed from jax's duration events once read."""

    def __init__(self) -> None:
        self._seconds = 0.0
        self._listening = False
        self._lock = threading.Lock()

    def _on_duration(self, event: str, duration_secs: float, **_: str | int) -> None:
        if event in _COMPILE_EVENTS:
            with self._lock:
                self._seconds += duration_secs

    def read(self) -> float:
        with self._lock:
            if not self._listening:  # one listener per process, registered on the first read
                jax.monitoring.register_event_duration_secs_listener(self._on_duration)
                self._listening = True
            return self._seconds


_compile_clock = _CompileClock()


def compile_seconds() -> float:
    """Seconds this process has spent lowering and compiling XLA programs since the first call (all threads).

    The glue stage's first row of a model shape on a task compiles its programs and the later rows reuse them, so
    its ETA subtracts what this counter moved during a row, as the KD ETA skips its first report."""
    return _compile_clock.read()


def stage_done(stage: str) -> None:
    if current is not None:
        current.done(stage)


@dataclasses.dataclass
class EtaHook(Hook):
    """Reports a `distill` run's progress to the tracker at each of its reports.

    The stage has `stage_steps` steps left in all when the run starts (e.g. KD, then PDT of each winner: what the plan
    counts); this distillation's step 0 is `steps_before` steps into them (kdjax.kd_stage.eta_positions). Timing
    starts at the first report, so compilation is not extrapolated.
    """

    stage: str
    steps_before: int
    stage_steps: int
    t0: float | None = None
    first: int = 0

    def __call__(self, report: Report) -> None:
        now = time.perf_counter()
        if self.t0 is None:
            self.t0, self.first = now, report.step
            return
        total = max(1, self.stage_steps)
        timed(self.stage, (self.steps_before + report.step) / total, (report.step - self.first) / total, now - self.t0)
