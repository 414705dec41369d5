"""Layout of one run's workdir and the markers that let a finished stage be skipped on re-run."""

from __future__ import annotations

import json
import os
import time

from kdjax.errors import KdjaxError


class Workdir:
    """`teacher/`, `nas/`, `kd/<arch-id>/`, `glue/<model>/<task>.json`, `report/`, plus `cache/` and stage markers."""

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        try:
            os.makedirs(self.root, exist_ok=True)
            probe = os.path.join(self.root, ".write-test")
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

    def _marker(self, stage: str) -> str:
        return self.path(".stages", f"{stage}.json")

    def is_done(self, stage: str) -> bool:
        return os.path.exists(self._marker(stage))

    def mark_done(self, stage: str, info: dict | None = None) -> None:
        write_json(
            self._marker(stage), {"stage": stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {})}
        )

    def clear(self, stage: str) -> None:
        if self.is_done(stage):
            os.remove(self._marker(stage))


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
