"""A model's latency, measured once, when the model is made (kd stage) or scored (glue stage), for the report to read.

The record (at `Workdir.latency_path`) holds the XLA latency under the search's timing protocol (through the
machine-level cache of kdjax.latency, so an architecture timed before is not timed again) and, when torch is
installed, the batch-1 PyTorch latency of the model's transformers folder: for a student, timed side by side with the
teacher's folder in one session (`torch_pair`, kdjax.torch_latency.measure_pair), whose ratio is the record's
`torch_speedup`. A record made under another protocol, on another machine, or by a kdjax that recorded less
(`RECORD_VERSION`) is measured again; the report never times anything.
"""

from __future__ import annotations

import logging
import os

from kdjax.latency import LatencyCache, LatencyConfig, MachineCache, digest
from kdjax.spec import ArchSpec
from kdjax.workdir import read_json, write_json

log = logging.getLogger(__name__)

# Bump when a record holds something new: older records are measured again. 2: the PyTorch speed-up is a paired timing.
RECORD_VERSION = 2


def protocol_key(cfg: LatencyConfig, machine: MachineCache) -> str:
    """What a latency depends on besides the model: the timing protocol, the machine, and what a record holds."""
    return f"{cfg.key}|{digest(machine.machine)}|r{RECORD_VERSION}"


def read(path: str) -> dict | None:
    """The record at `path`, or None when there is none (a damaged one is measured again)."""
    if not os.path.exists(path):
        return None
    try:
        rec = read_json(path)
    except (OSError, ValueError):
        log.warning("%s is damaged; the latency is measured again", path)
        return None
    return rec if isinstance(rec, dict) else None


def is_current(path: str, cfg: LatencyConfig) -> bool:
    """Whether `path` holds a record made under this protocol on this machine."""
    old = read(path)
    return old is not None and old.get("key") == protocol_key(cfg, MachineCache(cfg))


def record(
    path: str,
    spec: ArchSpec,
    cfg: LatencyConfig,
    hf_dir: str | None = None,
    xla: dict | None = None,
    teacher_dir: str | None = None,
) -> dict:
    """Measure `spec` (and `hf_dir` under PyTorch) unless `path` already holds this protocol's record; write it.

    `xla` is a latency already measured under `cfg` (the teacher's, from teacher/latency.json). With `teacher_dir`
    (the teacher's transformers folder), `hf_dir` is timed beside it and the record holds the pair and its ratio;
    without it (the teacher's own record) `hf_dir` is timed alone and there is no PyTorch speed-up."""
    cache = LatencyCache(cfg)
    key = protocol_key(cfg, cache.machine)
    old = read(path)
    if old is not None and old.get("key") == key:
        return old
    xla = xla or cache.measure(spec)[0]
    from kdjax.torch_latency import measure_folder, measure_pair

    pair = measure_pair(hf_dir, teacher_dir, cfg, cache.machine) if hf_dir and teacher_dir else None
    # A student whose teacher cannot be built under PyTorch still gets its own time, just no ratio.
    torch = pair["student"] if pair else measure_folder(hf_dir, cfg, cache.machine) if hf_dir else None
    rec = {
        "key": key,
        "arch_id": spec.arch_id,
        "latency_ms": float(xla["latency_ms"]),
        "xla": xla,
        "torch_ms": float(torch["latency_ms"]) if torch else None,
        "torch": torch,
        "torch_pair": pair,
        "torch_teacher_dir": teacher_dir if pair else None,
        "torch_speedup": pair["speedup"] if pair else None,
    }
    write_json(path, rec)
    return rec
