"""Ctrl-C, SIGTERM and a full or read-only disk end a run with one line that says where it stopped and what to do."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
from collections.abc import Iterator

from kdjax.errors import KdjaxError

# errno values that mean "this path cannot be written", whatever the stage was doing.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_DISK_TEXT = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied")


class Interrupted(KdjaxError):
    """The run was stopped by a signal; `step` is the last step reached, `checkpoint` the step a resume starts at."""

    def __init__(self, what: str = "", *, step: int | None = None, checkpoint: int | None = None):
        super().__init__(what)
        self.what, self.step, self.checkpoint = what, step, checkpoint


def _not_an_interrupt(record: logging.LogRecord) -> bool:
    """Logging filter: drop a library's report (with traceback) of a KeyboardInterrupt it re-raises; the run reports
    the interrupt itself in one line."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


# Orbax (through absl) logs a save wait cut short by Ctrl-C; Optuna logs a trial cut short as failed.
for _name in ("absl", "optuna.study._optimize"):
    logging.getLogger(_name).addFilter(_not_an_interrupt)

_received: list[str] = []  # names of the signals other than Ctrl-C that interrupted the run
_defer_depth = [0]  # nesting depth of `deferred()` sections
_pending: list[int] = []  # a signal that arrived inside one
_signalled = [False]  # a signal already arrived in this run


def _stop_now(signum: int) -> None:
    """A second signal: the first one's KeyboardInterrupt may have been swallowed where Python ignores exceptions (a
    garbage-collector or __del__ callback, such as JAX's), leaving the run going. Stop at once; checkpoints are
    written atomically, so what is on disk is either a whole step or invisible."""
    name = signal.Signals(signum).name
    os.write(2, f"kdjax: error: stopped by a second {name}; run the same command to resume\n".encode())
    os._exit(128 + signum)


def _interrupt(signum: int) -> None:
    if signum != signal.SIGINT:
        _received.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


def _on_signal(signum, frame) -> None:
    if _signalled[0]:
        _stop_now(signum)
    _signalled[0] = True
    if _defer_depth[0]:
        _pending[:] = [signum]  # raised when the protected section ends
        return
    _interrupt(signum)


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM (what `kill`, schedulers and containers send) unwind as KeyboardInterrupt, so `finally`
    blocks run, except inside `deferred()` sections, which they interrupt only once the section is over. A second
    signal ends the process at once with one error line (`_stop_now`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    _signalled[0] = False
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section a signal must not cut in two (starting a checkpoint save): the interrupt is raised after it."""
    _defer_depth[0] += 1
    try:
        yield
    finally:
        _defer_depth[0] -= 1
    if not _defer_depth[0] and _pending:
        _interrupt(_pending.pop())


def interrupted_message(stage: str, e: BaseException, *, forced: bool) -> str:
    """'<stage> interrupted after step N (...); run the same command to resume' for an interrupt."""
    by = f" by {_received[-1]}" if _received else ""
    if isinstance(e, Interrupted) and e.step is not None:
        where = f"{e.what or stage} interrupted{by} after step {e.step}"
        where += f" (resumes from its checkpoint at step {e.checkpoint})" if e.checkpoint else " (no checkpoint yet)"
    else:
        where = f"{stage} stage interrupted{by}"
    again = "run the same command without --config.force=true to resume" if forced else "run the same command to resume"
    return f"{where}; {again}"


def disk_error(e: BaseException) -> OSError | BaseException | None:
    """The first error in `e`'s chain that says a path cannot be written (disk full, read-only, no permission)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_ERRNOS:
            return seen
        if any(t in str(seen) for t in _DISK_TEXT):
            return seen  # TensorStore and Orbax report write failures as ValueError text
        seen = seen.__cause__ or seen.__context__
    return None


def disk_error_message(stage: str, err: BaseException, workdir: str) -> str:
    if isinstance(err, OSError) and err.strerror:
        path = err.filename or workdir
        reason = err.strerror
    else:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        path, reason = workdir, next((t for t in _DISK_TEXT if t in text), text)[:200]
    full = "space" in reason or "quota" in reason
    verb = "write" if full or "Read-only" in reason else "access"
    hint = "free some space" if full else "make it writable"
    return f"{stage}: cannot {verb} {path}: {reason}; {hint}, then run the same command to resume"
