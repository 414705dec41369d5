"""`nas/history.jsonl`: one JSON line per evaluated candidate, and the cache of evaluated specs rebuilt from it.

The file is the search's memory: a resumed or repeated search (or another worker sharing the workdir) looks a spec
up here before training it, so no spec is ever trained twice and a resumed run sees the very rewards it saw before.
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)


class History:
    """Append-only JSONL of candidate records, keyed by `arch_id`."""

    def __init__(self, path: str):
        self.path = path
        self.rows: list[dict] = []
        self.by_arch: dict[str, dict] = {}
        self._offset = 0
        self.refresh()

    def refresh(self) -> None:
        """Read lines appended since the last read (by this or another process)."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        # A kill during a write can leave a last line without its newline: ignore it until it is complete.
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("skipping an unreadable line in %s", self.path)
                continue
            self._add(row)
        self._offset += end

    def _add(self, row: dict) -> None:
        self.rows.append(row)
        self.by_arch.setdefault(row["arch_id"], row)

    def get(self, arch_id: str) -> dict | None:
        return self.by_arch.get(arch_id)

    def append(self, row: dict) -> None:
        self.refresh()
        line = json.dumps(row, sort_keys=False) + "\n"
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line  # close a line cut by a kill so ours stays readable
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.refresh()

    def __len__(self) -> int:
        return len(self.rows)
