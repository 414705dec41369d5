"""Orbax checkpointing (the only module that imports orbax): one `Checkpointer` per stage.

Each checkpoint holds a pytree `state` (what changes: student, projection, optimizer, step; or controller and
baseline) and a JSON `meta` (data position, history length, anything a resume needs). Orbax writes into a temporary
folder and renames it when complete, so a kill during a save never leaves a step that looks finished. A step whose
files are damaged anyway is skipped with a warning naming it, and the previous good step is restored.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from typing import Any

import orbax.checkpoint as ocp

from kdjax.errors import KdjaxError

log = logging.getLogger(__name__)


class CheckpointError(KdjaxError, RuntimeError):
    """No checkpoint could be restored although some exist."""


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with keep-N, interval, and fallback to older steps on restore."""

    def __init__(self, directory: str, *, keep: int = 3, interval_steps: int = 1, async_save: bool = False):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=interval_steps,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict | None = None, *, force: bool = False) -> bool:
        """Save `state` (pytree) and `meta` (JSON) at `step`; returns whether a checkpoint was written."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
        if step in self._manager.all_steps():
            # Only after a fallback past a damaged step: the run re-reaches it and replaces it.
            log.warning("replacing checkpoint step %d in %s", step, self.directory)
            self._manager.delete(step)
        saved = self._manager.save(step, args=args, force=force)
        self._manager.wait_until_finished()
        return bool(saved)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
        """Restore (step, state, meta) from `step` or the newest good step; None when there is no checkpoint.

        `abstract_state` is a pytree of arrays or `jax.ShapeDtypeStruct`s (with shardings) giving the target layout.
        """
        candidates = [step] if step is not None else list(reversed(self.steps()))
        if not candidates:
            return None
        failures: list[tuple[int, Exception]] = []
        result = None
        logging.getLogger("asyncio").addFilter(_quiet_abandoned_futures)
        # stderr stays muted across every attempt and until the reads a failed attempt abandoned have settled;
        # the warnings are logged afterwards, so nothing the user should see is swallowed.
        with _stderr_muted():
            for s in candidates:
                try:
                    restored = self._manager.restore(
                        s,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                        ),
                    )
                    result = (s, restored["state"], dict(restored["meta"] or {}))
                    break
                except Exception as e:
                    failures.append((s, e))
            if failures:
                time.sleep(1.0)
                _drop_orphaned_read_errors()
        for s, err in failures:
            # TensorStore errors span dozens of lines; one line names the step and the first line of the cause.
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            log.warning("checkpoint step %d in %s is unreadable (%s); trying an older one", s, self.directory, reason)
        if result is None:
            detail = "; ".join(f"step {s}: {type(e).__name__}" for s, e in failures)
            raise CheckpointError(f"no readable checkpoint in {self.directory} ({detail})")
        return result

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _quiet_abandoned_futures(record: logging.LogRecord) -> bool:
    """asyncio logging filter: drop 'exception was never retrieved' reports of reads abandoned by a failed restore."""
    return "exception was never retrieved" not in str(record.msg)


@contextlib.contextmanager
def _stderr_muted():
    """Silence file descriptor 2 (C++ threads included) while a checkpoint that may be damaged is read.

    When one array of a damaged checkpoint fails, Orbax closes its event loop while TensorStore still finishes the
    sibling reads; their callbacks print 'Event loop is closed' tracebacks from C++ (PyErr_Print), which no Python
    hook intercepts. The restore error itself is reported by `restore` after stderr is back.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _drop_orphaned_read_errors() -> None:
    """Collect the sibling array reads a failed restore abandoned, without their 'Exception ignored' tracebacks."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda args: log.debug("abandoned checkpoint read: %s", args.exc_value)
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
