"""Metrics to JSONL (always) and TensorBoard event files (when tensorboardX is installed)."""

from __future__ import annotations

import json
import os
import time

from kdjax.interrupts import deferred


class MetricWriter:
    """Appends one JSON object per `write` to `<dir>/metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, directory: str, tensorboard: bool = True):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "metrics.jsonl")
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(directory, "tb"))
            except ImportError:
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (a resumed run re-logs them, so the file matches an unbroken run)."""
        if not os.path.exists(self.path):
            return
        keep = []
        with open(self.path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:  # half a line from a killed run
                    continue
                if row.get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def write(self, step: int, scalars: dict) -> None:
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: (float(v) if not isinstance(v, str) else v) for k, v in scalars.items()})
        # Ctrl-C or SIGTERM take effect after the write: tensorboardX hands events to its writer thread through a
        # multiprocessing queue whose condition variable is not safe against an exception raised inside `notify`
        # (the waiter is woken but not forgotten), after which the writer thread misses `close`'s stop signal and
        # `close` waits for it forever.
        with deferred():
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self._tb is not None:
                for k, v in scalars.items():
                    if not isinstance(v, str):
                        self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        if self._tb is not None:
            with deferred():  # see `write`
                self._tb.close()
