"""Candidate evaluation: mini-KD on the proxy set, latency, reward, one history row; cached by spec.

`CandidateEvaluator(spec, **where) -> record` is the only thing a search strategy sees, so strategies can be tested
with a synthetic `evaluate`; a strategy that knows its next candidate also calls `prepare(spec)`, which compiles that
candidate's programs on a thread while the current one trains. Every candidate uses the same `OptimConfig` (same
total steps), so the jitted train step compiled for one shape is reused by every later candidate of equal shapes
(`kdjax.steps.compile_programs`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from kdjax.data.batches import Batches, MaskingSpec
from kdjax.data.corpus import proxy_subset
from kdjax.errors import KdjaxError
from kdjax.export import export_hf
from kdjax.hooks import Prune
from kdjax.nas.history import History
from kdjax.pdt import STATE_FILE, save_minikd_state
from kdjax.reward import reward, select_loss
from kdjax.spec import ArchSpec
from kdjax.steps import TeacherOutputCache
from kdjax.student_init import initial_params, initial_projection
from kdjax.train import DistillSettings, NonFiniteLossError, Student, distill, precompile

if TYPE_CHECKING:
    from kdjax.config.settings import KdSettings, NasSettings
    from kdjax.search_latency import SearchLatency
    from kdjax.teacher import Teacher

log = logging.getLogger(__name__)

# on_epoch(epoch, loss) -> True to stop (prune) the candidate after that epoch.
EpochHook = Callable[[int, float], bool]


class StopSearch(KdjaxError, RuntimeError):
    """The search stopped on purpose (nas.stop_after_evaluations); the same command resumes it."""


class CappedBatches(Batches):
    """`Batches` whose epochs are the first `steps_per_epoch` batches of each shuffled epoch (mini-KD step cap)."""

    def __init__(self, rows: np.ndarray, global_batch: int, masking: MaskingSpec, seed: int, max_steps: int = 0):
        super().__init__(rows, global_batch, masking, seed)
        if max_steps:
            self.steps_per_epoch = min(self.steps_per_epoch, max_steps)


def proxy_batches(
    rows: np.ndarray, global_batch: int, masking: MaskingSpec, seed: int, nas: NasSettings
) -> CappedBatches:
    """The batches every candidate's mini-KD sees: `nas.proxy_fraction` of the packed corpus, capped per epoch."""
    proxy = proxy_subset(rows, nas.proxy_fraction, seed)
    return CappedBatches(proxy, global_batch, masking, seed, nas.mini_kd_steps_per_epoch)


class CandidateEvaluator:
    """Mini-KD + latency + reward of one spec; every new result appended to `history` (which is also the cache).

    Its inputs are explicit: the teacher, the proxy `batches`, the reward's `latency` (a fitted model or side-by-side
    timing), the search settings `nas`, the KD settings `kd` (init, loss, optimiser) with the run's `seed`, compute
    `dtype`, `mesh` and corpus `seq_len`, and the `teacher_cache` of teacher outputs shared by candidates (or None)."""

    def __init__(
        self,
        teacher: Teacher,
        batches: CappedBatches,
        latency: SearchLatency,
        *,
        nas: NasSettings,
        kd: KdSettings,
        seed: int,
        dtype,
        mesh,
        seq_len: int,
        teacher_cache: TeacherOutputCache | None,
        strategy: str,
        history: History,
        export_root: str,
        progress: bool = True,
    ):
        self.teacher, self.batches, self.init, self.seq_len = teacher, batches, kd.init, seq_len
        self.strategy, self.history, self.export_root = strategy, history, export_root
        self.reward_cfg, self.loss_source, self.stop_after = nas.reward, nas.loss_source, nas.stop_after_evaluations
        self.progress = progress
        self.new_evaluations = 0
        # Reward latencies: a fitted model (or side-by-side timing), so load on the machine cannot change decisions.
        self.latency = latency
        self.teacher_latency_ms = self.latency.teacher_ms
        self.epochs = nas.mini_kd_epochs
        self.num_steps = self.epochs * self.batches.steps_per_epoch
        # One optimizer (hence one schedule length) for every candidate: compiled steps are shared by equal shapes.
        self.settings = DistillSettings(
            loss=kd.loss,
            opt=kd.optim(self.num_steps),
            num_steps=self.num_steps,
            seed=seed,
            dtype=dtype,
            mesh=mesh,
            scan_layers=nas.scan_layers,
        )
        self.teacher_cache = teacher_cache
        # One compile thread: candidates announced by `prepare`, by arch id, with their compile seconds to come.
        self._ahead = concurrent.futures.ThreadPoolExecutor(1, "compile-ahead") if nas.compile_ahead else None
        self._prepared: dict[str, concurrent.futures.Future] = {}

    def _student(self, spec: ArchSpec) -> Student:
        teacher = self.teacher
        return Student(
            spec,
            initial_params(self.init, teacher.params, teacher.spec, spec),
            initial_projection(self.init, teacher.params, teacher.spec, spec),
        )

    def prepare(self, spec: ArchSpec) -> None:
        """Start compiling `spec`'s mini-KD programs on the compile thread (nothing when it was evaluated before,
        is being prepared already, or `nas.compile_ahead` is off). Compiling is all it does: `distill` finds the
        programs in kdjax.steps' cache, so the candidate's numbers are the same either way."""
        if self._ahead is None or spec.arch_id in self._prepared or self.history.get(spec.arch_id) is not None:
            return
        self._prepared[spec.arch_id] = self._ahead.submit(
            lambda: precompile(self.teacher, self._student(spec), self.batches, self.settings)
        )

    def close(self) -> None:
        """Drop compiles not yet started and wait for the one running: no thread is left compiling once the stage
        has ended, whether the search finished, failed or was interrupted."""
        if self._ahead is not None:
            self._ahead.shutdown(wait=True, cancel_futures=True)

    def _wait_prepared(self, spec: ArchSpec) -> tuple[float, float | None]:
        """(seconds waited for `spec`'s compile on the thread, seconds the thread spent compiling; None if none)."""
        future = self._prepared.pop(spec.arch_id, None)
        if future is None:
            return 0.0, None
        t0 = time.perf_counter()
        try:
            ahead_s = future.result()
        except Exception as e:  # the candidate's own `distill` compiles it, and raises what is really wrong
            log.warning("compiling %s ahead failed (%s: %s); compiling it now", spec.arch_id, type(e).__name__, e)
            ahead_s = None
        return time.perf_counter() - t0, ahead_s

    def _reward(self, loss: float, latency_ms: float) -> float:
        return reward(loss, latency_ms, self.teacher_latency_ms, self.reward_cfg)

    def __call__(self, spec: ArchSpec, on_epoch: EpochHook | None = None, **where) -> dict:
        self.history.refresh()  # another worker may have evaluated it meanwhile
        cached = self.history.get(spec.arch_id)
        if cached is not None:
            # The recorded losses and latency are reused; the reward is recomputed so a changed alpha/beta applies.
            rec = dict(cached)
            if rec.get("loss") is not None:
                rec["loss"] = select_loss(rec["epoch_losses"], self.loss_source)
            rec["reward"] = self._reward(_num(rec.get("loss")), rec["latency_ms"])
            rec["cached"] = True
            return rec
        return self._evaluate(spec, on_epoch, where)

    def _evaluate(self, spec: ArchSpec, on_epoch: EpochHook | None, where: dict) -> dict:
        teacher = self.teacher
        t0 = time.perf_counter()
        waited_s, ahead_s = self._wait_prepared(spec)
        pruned = diverged = False
        epoch_losses: list[float] = []
        params: dict | None = None  # None when pruned or diverged: no model to time or export
        try:
            result = distill(
                teacher,
                self._student(spec),
                self.batches,
                self.settings,
                hooks=[Prune(self.batches.steps_per_epoch, on_epoch)] if on_epoch is not None else [],
                report_every=self.batches.steps_per_epoch,
                teacher_cache=self.teacher_cache,
                desc=f"mini-kd {spec.arch_id}",
                progress=self.progress,
            )
            # The wait for the compile thread is part of this candidate's wall and compile time.
            epoch_losses, train_s, compile_s, params = (
                result.epoch_losses,
                result.wall_s + waited_s,
                result.compile_s + waited_s,
                result.params,
            )
            if result.stopped is not None:  # pruned: losses of the epochs it ran, and no model to time or export
                pruned, train_s, compile_s, params = True, time.perf_counter() - t0, math.nan, None
        except NonFiniteLossError as e:
            log.warning("%s diverged: %s", spec.arch_id, e)
            diverged, train_s, compile_s, params = True, time.perf_counter() - t0, math.nan, None
        loss = select_loss(epoch_losses, self.loss_source) if epoch_losses and not diverged else math.nan
        t_lat = time.perf_counter()
        lat = self.latency.student(spec)
        latency_s = time.perf_counter() - t_lat
        hf, export_s = None, 0.0
        if params is not None:
            t_exp = time.perf_counter()
            hf = os.path.join(self.export_root, spec.arch_id, "hf")
            info = {"mini_kd_steps": self.num_steps, "mini_kd_loss": round(loss, 6), "strategy": self.strategy}
            export_hf(
                hf,
                spec,
                params["student"],
                teacher.hf_config,
                teacher.tokenizer,
                teacher_source=teacher.source,
                info=info,
            )
            # Student and projection together, so PDT continues this candidate exactly (kdjax/pdt.py).
            save_minikd_state(os.path.join(self.export_root, spec.arch_id, STATE_FILE), params)
            export_s = time.perf_counter() - t_exp
        rec = {
            "strategy": self.strategy,
            **where,
            "arch_id": spec.arch_id,
            "spec": spec.searchable(),
            "params": spec.num_params,
            "flops_per_token": spec.flops_per_token(self.seq_len),
            **lat,
            "teacher_latency_ms": self.teacher_latency_ms,
            "speedup": self.teacher_latency_ms / lat["latency_ms"],
            "epoch_losses": epoch_losses,
            "loss_source": self.loss_source,
            "loss": None if math.isnan(loss) else loss,
            "reward": self._reward(loss, lat["latency_ms"]),
            "pruned": pruned,
            "diverged": diverged,
            "mini_kd_steps": self.num_steps,
            "wall_s": train_s,
            # Compile time the candidate waited for (its own, or the end of the compile thread's); the thread's
            # compile, overlapped with the previous candidate's training, is `compile_ahead_s`.
            "compile_s": None if math.isnan(compile_s) else compile_s,
            "compile_ahead_s": ahead_s,
            "latency_s": latency_s,
            "export_s": export_s,
            "eval_s": time.perf_counter() - t0,
            "hf": hf,
        }
        self.history.append(rec)
        self.new_evaluations += 1
        rec = dict(rec, cached=False)
        if self.stop_after and self.new_evaluations >= self.stop_after:
            raise StopSearch(
                f"search stopped after {self.new_evaluations} new evaluations (nas.stop_after_evaluations); "
                "run the same command again to resume"
            )
        return rec


def _num(x) -> float:
    return math.nan if x is None else float(x)


def keep_only(export_root: str, keep: set[str]) -> list[str]:
    """Delete candidate exports whose arch id is not in `keep`; returns the deleted ids."""
    if not os.path.isdir(export_root):
        return []
    removed = []
    for name in sorted(os.listdir(export_root)):
        if name not in keep:
            shutil.rmtree(os.path.join(export_root, name), ignore_errors=True)
            removed.append(name)
    return removed
