"""Layout of one run's workdir, its one-writer lock, and the markers that let a finished stage be skipped on re-run."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time

from kdjax.errors import KdjaxError

log = logging.getLogger(__name__)


class Workdir:
    """`teacher/`, `nas/`, `kd/<arch-id>/`, `glue/<model>/<task>.json`, `report/`, plus `cache/` and stage markers.

    Every stage, the report and docs/results_tables.py find a model's folders through the layout methods below
    (`kd_dir`, `pdt_dir`, `random_dir`, `candidate_dir`, `export_dir`, `latency_path`, `glue_result`, `histories`),
    so the layout is written down once.
    """

    def __init__(self, root: str, *, create: bool = True):
        """`create=False` only reads an existing workdir (the report's siblings, docs/results_tables.py)."""
        self.root = os.path.abspath(os.path.expanduser(root))
        if not create:
            return
        try:
            os.makedirs(self.root, exist_ok=True)
            probe = os.path.join(self.root, f".write-test-{os.getpid()}")  # two runs may start together
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise KdjaxError(f"workdir {root} is not writable: {e.strerror}") from e

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def subdir(self, *parts: str) -> str:
        p = self.path(*parts)
        os.makedirs(p, exist_ok=True)
        return p

    @property
    def cache(self) -> str:
        return self.subdir("cache")

    # Layout of the models a run makes. GLUE rows are named `<kind>-<arch>` (nas, kd, pdt) or `random-<i>-<arch>`.
    def kd_dir(self, arch_id: str) -> str:
        """The full KD of `arch_id` (kd stage): checkpoints/, metrics.jsonl, result.json, latency.json, hf/."""
        return self.path("kd", arch_id)

    def pdt_dir(self, arch_id: str) -> str:
        """PDT of the search winner `arch_id` (kd stage), laid out like `kd_dir`."""
        return self.path("kd", f"{arch_id}-pdt")

    @staticmethod
    def random_name(index: int, arch_id: str) -> str:
        return f"random-{index}-{arch_id}"

    def random_dir(self, name: str) -> str:
        """A random baseline `random-<i>-<arch>` distilled by the kd stage, laid out like `kd_dir`."""
        return self.path("kd", name)

    def random_names(self) -> list[str]:
        """The random baselines distilled so far (`kd/random-*`)."""
        kd = self.path("kd")
        return sorted(n for n in os.listdir(kd) if n.startswith("random-")) if os.path.isdir(kd) else []

    def candidate_dir(self, arch_id: str) -> str:
        """A mini-KD candidate of the search: hf/ export and minikd.npz (student and projection, for PDT)."""
        return self.path("nas", "candidates", arch_id)

    def model_dir(self, kind: str, arch_id: str | None, name: str) -> str | None:
        """The folder that made the GLUE row `name` of `kind` (None for the teacher, folders and hub models)."""
        if kind == "nas" and arch_id:
            return self.candidate_dir(arch_id)
        if kind == "kd" and arch_id:
            return self.kd_dir(arch_id)
        if kind == "pdt" and arch_id:
            return self.pdt_dir(arch_id)
        if kind == "random":
            return self.random_dir(name)
        return None

    def export_dir(self, kind: str, arch_id: str | None, name: str) -> str | None:
        """The transformers folder of a row this run made (None for the teacher, folders and hub models)."""
        made = self.model_dir(kind, arch_id, name)
        return os.path.join(made, "hf") if made else None

    def latency_path(self, kind: str, arch_id: str | None, name: str) -> str:
        """Where a row's latency is recorded, once: beside a distilled model's result.json when the kd stage made
        it (kd, pdt, random), else beside its GLUE scores (`glue/<model>/latency.json`, written when scored)."""
        made = self.model_dir(kind, arch_id, name) if kind in ("kd", "pdt", "random") else None
        return os.path.join(made, "latency.json") if made else self.path("glue", name, "latency.json")

    def glue_result(self, model: str, task: str) -> str:
        return self.path("glue", model, f"{task}.json")

    def glue_models(self) -> list[str]:
        """Rows with a GLUE folder (`glue/<model>/`)."""
        glue = self.path("glue")
        if not os.path.isdir(glue):
            return []
        return sorted(n for n in os.listdir(glue) if os.path.isdir(os.path.join(glue, n)))

    def histories(self) -> list[str]:
        """The search histories: `nas/history.jsonl`, then one per subfolder (`nas/*/history.jsonl`, e.g. workers)."""
        nas = self.path("nas")
        paths = [os.path.join(nas, "history.jsonl")]
        if os.path.isdir(nas):
            paths += sorted(os.path.join(nas, d, "history.jsonl") for d in os.listdir(nas))
        return [p for p in paths if os.path.isfile(p)]

    def _marker(self, stage: str) -> str:
        return self.path(".stages", f"{stage}.json")

    def is_done(self, stage: str) -> bool:
        return os.path.exists(self._marker(stage))

    def finished_at(self, stage: str) -> float | None:
        """When `stage` last finished (its marker's modification time), or None when it is unfinished."""
        try:
            return os.path.getmtime(self._marker(stage))
        except OSError:
            return None

    def mark_done(self, stage: str, info: dict | None = None) -> None:
        write_json(
            self._marker(stage), {"stage": stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {})}
        )

    def stage_info(self, stage: str) -> dict:
        """What a finished stage recorded in its marker ({} when it is unfinished or the marker is unreadable)."""
        try:
            info = read_json(self._marker(stage)) if self.is_done(stage) else {}
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in info.items() if k not in ("stage", "finished")} if isinstance(info, dict) else {}

    def clear(self, stage: str) -> None:
        if self.is_done(stage):
            os.remove(self._marker(stage))

    def set_aside(self, stage: str, path: str) -> None:
        """Move a forced stage's earlier outputs at `path` to W/.previous/<stage>/ (replacing an older copy there).

        A forced re-run must not resume from them, but an interrupted forced re-run should not have destroyed the
        last finished results either: they are deleted only once the stage finishes (`drop_previous`).
        """
        if not os.path.lexists(path):
            return
        rel = os.path.relpath(path, self.root)
        if rel.startswith(os.pardir) or os.path.isabs(rel):
            raise ValueError(f"{path} is outside the workdir {self.root}")
        dest = self.path(".previous", stage, rel)
        if os.path.lexists(dest):
            # An earlier forced re-run never finished: `dest` still holds the last finished outputs; keep those and
            # drop what the unfinished re-run left.
            _remove(path)
            log.info("%s: outputs of an unfinished forced re-run removed; %s still holds the earlier ones", stage, dest)
            return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(path, dest)
        log.info("%s: earlier outputs moved to %s (deleted when the stage finishes)", stage, dest)

    def drop_previous(self, stage: str) -> None:
        shutil.rmtree(self.path(".previous", stage), ignore_errors=True)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


class WorkdirBusyError(KdjaxError):
    """Another process holds the workdir's lock."""


class WorkdirLock:
    """One writer per workdir: an exclusive `flock` on W/.lock, which holds the owner's pid and host.

    The kernel drops a `flock` when its process dies (even by SIGKILL), so a lock left by a dead run is simply taken
    over; the file is emptied on a clean release, so leftover content means the previous holder did not end cleanly.
    Locks on network file systems are only as reliable as the file system's `flock`.
    """

    def __init__(self, root: str, *, wait: bool = False):
        self.path = os.path.join(root, ".lock")
        self.wait = wait
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                info = json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return ""
        if not isinstance(info, dict) or "pid" not in info:
            return ""
        return f"pid {info.get('pid')} on host {info.get('host', '?')} (since {info.get('since', '?')})"

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = self._holder() or "another process"
                if not self.wait:
                    raise WorkdirBusyError(
                        f"workdir {os.path.dirname(self.path)} is in use by {holder}; wait for it to end, pass "
                        "--config.wait_for_lock=true to wait, or use another --workdir"
                    ) from None
                print(f"waiting for {holder} to release {self.path}", flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            stale = self._holder()
            if stale:
                log.warning("workdir lock of %s was left by a run that did not end cleanly; taking it over", stale)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # a clean end: the next holder finds no stale owner
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def write_json(path: str, obj) -> None:
    """Write JSON atomically (tmp + rename) so a kill never leaves half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)
