"""Orbax checkpointing (the only module that imports orbax): one `Checkpointer` per stage.

Each checkpoint holds a pytree `state` (what changes: student, projection, optimizer, step; or controller and
baseline) and a JSON `meta` (data position, history length, anything a resume needs). Orbax decides which steps are
saved (every `interval_steps` and the final step), writes them in a background thread, and renames a step's temporary
folder when it is complete, so a kill during a save never leaves a step that looks finished. A step whose files are
damaged anyway is skipped with a warning naming it, and the previous good step is restored.

`settings.json` beside the steps records what the checkpoints were made with (architecture, optimiser and schedule,
corpus, seed); a run with other settings stops instead of resuming from them. A setting added after a record was
written is missing from it; the caller's `defaults` say what such a record was made with (the field's default: the
behaviour before the field existed), so old checkpoints still resume while the new setting keeps its default.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import json
import logging
import os
import shutil
import sys
import time
from typing import Any

import orbax.checkpoint as ocp

from kdjax.errors import KdjaxError
from kdjax.interrupts import deferred

log = logging.getLogger(__name__)

TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointError(KdjaxError, RuntimeError):
    """No checkpoint could be restored although some exist."""


class SettingsMismatchError(KdjaxError):
    """The checkpoints on disk were made with other settings than this run's."""


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with keep-N, interval, and fallback to older steps on restore."""

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 3,
        interval_steps: int = 1,
        final_step: int | None = None,
        settings: dict | None = None,
        defaults: dict | None = None,
        async_save: bool = True,
    ):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        # Orbax's default policy also saves the very first step of a fresh run; spelled out, only the interval and
        # the final step are saved (a step-1 save would also flush a metrics row the log interval did not ask for).
        policies: list = [ocp.checkpoint_managers.FixedIntervalPolicy(max(1, int(interval_steps)))]
        if final_step:
            policies.append(ocp.checkpoint_managers.SpecificStepsPolicy(frozenset({int(final_step)})))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=max(1, int(interval_steps)),
            save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        # Settings first: Orbax's manager starts background threads (temporary-folder clean-up) that would print
        # tracebacks at exit if a refused or failed start (other settings, disk full) ended the process under them.
        if settings is not None:
            self._check_settings(settings, defaults or {})
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        # The newest step the caller has reached (asked `should_save` about or saved): where an interrupt stopped it.
        self.reached: int | None = None
        self._closed = False
        self._final_steps: list[int] = []

    def _check_settings(self, settings: dict, defaults: dict) -> None:
        """Record `settings` beside fresh checkpoints; refuse to resume checkpoints made with other settings.

        A key missing from the record counts as `defaults[key]` (when given): the record predates the setting.
        """
        path = os.path.join(self.directory, "settings.json")
        current = json.loads(json.dumps(settings))
        defaults = json.loads(json.dumps(defaults))  # compared as JSON, like the record (tuples become lists)
        old = None
        if saved_steps(self.directory) and os.path.exists(path):
            try:
                with open(path) as f:
                    old = json.load(f)
            except (OSError, ValueError):
                log.warning("%s is unreadable; assuming its checkpoints match this run's settings", path)
        if isinstance(old, dict):
            diffs = []
            for key in old.keys() | current.keys():
                recorded = key in old or key not in defaults
                was = old.get(key) if recorded else defaults[key]
                if was != current.get(key):
                    shown = _show(was) if recorded else f"{_show(was)} (not recorded: the default)"
                    diffs.append(f"{key} = {shown} (this run: {_show(current.get(key))})")
            if diffs:
                raise SettingsMismatchError(
                    f"the checkpoints in {self.directory} were made with other settings: {'; '.join(sorted(diffs))}; "
                    "run with --config.force=true to start again from scratch, or use another --workdir"
                )
            return
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(current, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)

    def steps(self) -> list[int]:
        if self._closed:
            return list(self._final_steps)
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        """Whether Orbax's policy saves `step` (the caller prepares `meta` only then); also records progress."""
        self.reached = step
        return bool(self._manager.should_save(step))

    def save(self, step: int, state: Any, meta: dict | None = None) -> bool:
        """Save `state` (pytree) and `meta` (JSON) at `step` if the policy says so; returns whether it saves.

        The write goes on in the background: Orbax waits for it before the next save, and `close` waits at the end.
        Orbax copies the arrays to host memory in the blocking part of the save, so `state` may be donated next.
        """
        self.reached = step
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
        # Ctrl-C or SIGTERM in the middle of starting a save would leave a temporary folder that a background thread
        # still writes to; they take effect once the save is handed to that thread (`close` then waits for it).
        with deferred():
            return bool(self._manager.save(step, args=args))

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
        """Restore (step, state, meta) from `step` or the newest good step; None when there is no checkpoint.

        `abstract_state` is a pytree of arrays or `jax.ShapeDtypeStruct`s (with shardings) giving the target layout.
        """
        self._manager.wait_until_finished()  # a save of this manager still being written is read complete
        candidates = [step] if step is not None else list(reversed(self.steps()))
        if not candidates:
            return None
        # (step, exception type, first line of its message): not the exception itself, whose traceback holds the
        # sibling reads the failed attempt abandoned, so they are freed below and not whenever the error is dropped.
        failures: list[tuple[int, str, str]] = []
        result = None
        logging.getLogger("asyncio").addFilter(_quiet_abandoned_futures)
        _quiet_abandoned_reads()  # before the first attempt: its abandoned reads may report during the next one
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
                    # TensorStore errors span dozens of lines; one line names the step and the first line of the cause.
                    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                    failures.append((s, type(e).__name__, reason))
            if failures:
                # Abandoned reads may still be finishing (later under load): from now on their tracebacks are
                # filtered out of stderr for the rest of the process instead of muting it for a guessed time.
                _filter_event_loop_tracebacks()
                time.sleep(0.2)
                gc.collect()  # the abandoned reads already finished, freed now rather than in some later gc pass
        for s, _, reason in failures:
            log.warning("checkpoint step %d in %s is unreadable (%s); trying an older one", s, self.directory, reason)
        if result is None:
            detail = "; ".join(f"step {s}: {kind}" for s, kind, _ in failures)
            raise CheckpointError(f"no readable checkpoint in {self.directory} ({detail})")
        for s, _, _ in failures:
            if s > result[0]:
                # The run goes on from an older step and re-reaches this one; Orbax saves only steps past the newest.
                log.warning("removing unreadable checkpoint step %d (resuming from step %d)", s, result[0])
                self._manager.delete(s)
        return result

    def close(self) -> None:
        """Wait for a save still being written, then drop temporary folders a save cut short left behind."""
        if self._closed:
            return
        self._closed = True
        try:
            with deferred():
                self._manager.wait_until_finished()
            self._manager.reload()  # a save an interrupt cut into may have landed without the manager listing it
            self._final_steps = sorted(self._manager.all_steps())
            self._manager.close()
        finally:
            for tmp in glob.glob(os.path.join(self.directory, f"*{TMP_MARK}*")):
                shutil.rmtree(tmp, ignore_errors=True)


def saved_steps(directory: str) -> list[int]:
    """The finished checkpoint steps in `directory`, ascending, read from its listing without Orbax: a finished
    step's folder is named by the bare step number (temporary folders carry a suffix)."""
    if not os.path.isdir(directory):
        return []
    names = os.listdir(directory)
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


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


_DROP = b"RuntimeError: Event loop is closed"
_HEAD = b"Traceback (most recent call last):"
_relay: list = []


def _filter_event_loop_tracebacks() -> None:
    """Relay file descriptor 2 through a pipe that drops 'Event loop is closed' tracebacks, until the process ends.

    Everything else (log lines, progress bars, the final error line) passes through unchanged; traceback blocks are
    held until their last line shows which exception they report. An `atexit` hook drains the pipe, so nothing
    written before exit is lost.
    """
    if _relay:
        return
    import atexit
    import threading

    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending, block = b"", b""
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b""
            for line in lines:
                if block:
                    block += line + b"\n"
                    if line[:1] not in (b" ", b"\t"):  # the exception line ends the block
                        out += b"" if line.startswith(_DROP) else block
                        block = b""
                elif line.startswith(_HEAD):
                    block = line + b"\n"
                else:
                    out += line + b"\n"
            if pending and not block and not _HEAD.startswith(pending[: len(_HEAD)]):
                out, pending = out + pending, b""  # progress bars redraw without a newline: pass them on now
            if out:
                os.write(real, out)
        os.write(real, block + pending)
        os.close(read_end)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the pump reads to the end and stops
        thread.join(timeout=5)

    atexit.register(drain)
    _relay.append(thread)


def _quiet_abandoned_reads() -> None:
    """Keep the sibling array reads a failed restore abandons from printing tracebacks, for the rest of the process:
    they finish in TensorStore's threads whenever they do (during a later attempt, or later still under load), each
    reporting through `sys.unraisablehook` that the event loop it would resume is closed, and its coroutine raising
    when it is then closed. Those reports are logged at debug level; any other goes on to the hook found here."""
    if not isinstance(sys.unraisablehook, _QuietAbandonedReads):
        sys.unraisablehook = _QuietAbandonedReads(sys.unraisablehook)


class _QuietAbandonedReads:
    """`sys.unraisablehook` that logs the reports of abandoned checkpoint reads and passes on all others."""

    def __init__(self, previous: Any):
        self.previous = previous

    def __call__(self, args: Any) -> None:
        if _abandoned_read(args):
            log.debug("abandoned checkpoint read: %s", args.exc_value)
        else:
            self.previous(args)


def _abandoned_read(args: Any) -> bool:
    """Whether an unraisable exception comes from a checkpoint read abandoned by a failed restore."""
    code = getattr(args.object, "cr_code", None)  # a coroutine of Orbax's, closed while awaiting its read
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
        return True
    return isinstance(args.exc_value, RuntimeError) and str(args.exc_value) == "Event loop is closed"
