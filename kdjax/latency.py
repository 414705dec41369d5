"""Inference latency of an encoder: a load-resistant timing protocol and a machine-level cache shared by workdirs.

Protocol: every program is compiled first (compile time is reported, never timed), warmed up, then the programs of
one call are timed round-robin (`timed_runs` rounds, one run of each program per round), so a burst of load hits all
of them alike. The reported latency is a low percentile of the runs (`percentile`, 10 by default): load only ever
adds time, so the low end is what the model costs; p50/p90 and their ratio (`spread`) are kept with every result.

Cache: one JSON file per machine (device kind, CPU model and count, jax/jaxlib versions, XLA thread flags) under
`cache_dir` (default `$KDJAX_CACHE_DIR/latency` or `~/.cache/kdjax/latency`), entries grouped by protocol key. Every
workdir on the machine reads and extends the same file, so a shape (and a teacher) is timed once per machine. A
damaged file is rebuilt with a warning; an unwritable folder only costs re-measurement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models import Encoder
from kdjax.spec import ArchSpec
from kdjax.workdir import read_json, write_json

log = logging.getLogger(__name__)

# Bump when the protocol or the result fields change meaning: old cache entries are then ignored, not misread.
PROTOCOL_VERSION = 2


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    device: str = "cpu"  # 'cpu' or 'accelerator'
    batch_size: int = 1
    seq_len: int = 128
    warmup_runs: int = 5
    timed_runs: int = 30
    percentile: float = 10.0
    # What the reward reads: 'model' (fitted latency model, reproducible) or 'measured' (this machine's timing).
    source: str = "model"
    # Machine-level cache folder ('' = default location); not part of the protocol.
    cache_dir: str = dataclasses.field(default="", compare=False)

    @property
    def key(self) -> str:
        """The protocol: every field that changes a measured number."""
        return (
            f"{self.device}-b{self.batch_size}-s{self.seq_len}-w{self.warmup_runs}-n{self.timed_runs}"
            f"-p{self.percentile:g}-v{PROTOCOL_VERSION}"
        )


def target_device(name: str) -> jax.Device:
    if name == "cpu":
        return jax.devices("cpu")[0]
    return jax.devices()[0]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(cfg: LatencyConfig) -> dict:
    """What makes a timing valid on this machine only: device, CPU, library versions, XLA's threading flags."""
    import jaxlib

    dev = target_device(cfg.device)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "thread" in f or "eigen" in f]
    return {
        "platform": dev.platform,
        "device_kind": str(dev.device_kind),
        "cpu": _cpu_model(),
        "cpus": cpus,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_thread_flags": " ".join(flags),
    }


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def spec_key(spec: ArchSpec) -> str:
    """Latency depends only on shapes: the full spec (vocabulary, family, sharing) is the key."""
    return f"spec:{spec.arch_id}:{digest(spec.to_dict())}"


def cache_root(cache_dir: str = "") -> str:
    if cache_dir:
        return os.path.abspath(os.path.expanduser(cache_dir))
    base = os.environ.get("KDJAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kdjax"
    )
    return os.path.join(base, "latency")


# ---- timing ----------------------------------------------------------------------------------------------------------
def _timed_run(run: Callable[[], object]) -> float:
    """Milliseconds of one blocking run (the one place a clock is read, so tests can inject load)."""
    t = time.perf_counter()
    jax.block_until_ready(run())
    return (time.perf_counter() - t) * 1e3


def compile_forward(spec: ArchSpec, cfg: LatencyConfig, params: dict | None = None, seed: int = 0):
    """(run, compile_s): a zero-argument callable running the encoder (hidden states only, fp32) once."""
    device = target_device(cfg.device)
    model = Encoder(spec)
    ids = jnp.ones((cfg.batch_size, cfg.seq_len), jnp.int32)
    mask = jnp.ones_like(ids)
    with jax.default_device(device):
        if params is None:
            # Random weights: latency depends on shapes, not values.
            params = jax.jit(model.init)(jax.random.PRNGKey(seed), ids, mask)["params"]
        params = jax.device_put(params, device)
        ids, mask = jax.device_put(ids, device), jax.device_put(mask, device)
        fwd = jax.jit(lambda p, i, m: cast(dict, model.apply({"params": p}, i, m))["hidden_states"][-1])
        t0 = time.perf_counter()
        compiled = fwd.lower(params, ids, mask).compile()
        compile_s = time.perf_counter() - t0
    return (lambda: compiled(params, ids, mask)), compile_s


def summarize(runs_ms: list[float], percentile: float) -> dict:
    """The protocol's latency (low percentile) and the spread of the runs around it."""
    a = np.asarray(runs_ms, dtype=np.float64)
    lo, p50, p90 = (float(np.percentile(a, q)) for q in (percentile, 50, 90))
    return {
        "latency_ms": lo,
        "p50_ms": p50,
        "p90_ms": p90,
        "min_ms": float(a.min()),
        "spread": p90 / lo if lo > 0 else None,
        "runs": len(runs_ms),
    }


def time_programs(runs: dict[str, Callable[[], object]], cfg: LatencyConfig) -> dict[str, list[float]]:
    """Warm up every program, then time them round-robin so load spikes fall on all of them alike."""
    for run in runs.values():
        for _ in range(cfg.warmup_runs):
            jax.block_until_ready(run())
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(cfg.timed_runs):
        for k, run in runs.items():
            times[k].append(_timed_run(run))
    return times


def measure_many(
    specs: dict[str, ArchSpec], cfg: LatencyConfig, params: dict[str, dict] | None = None, seed: int = 0
) -> dict[str, dict]:
    """Latency results (see `summarize`) of several encoders timed side by side, by the caller's keys."""
    t_start = time.perf_counter()
    runs, compile_s = {}, {}
    for k, spec in specs.items():
        runs[k], compile_s[k] = compile_forward(spec, cfg, (params or {}).get(k), seed)
    times = time_programs(runs, cfg)
    measure_s = time.perf_counter() - t_start
    platform_name = target_device(cfg.device).platform
    return {
        k: {
            **summarize(times[k], cfg.percentile),
            "runs_ms": [round(t, 4) for t in times[k]],
            "compile_s": compile_s[k],
            "measure_s": measure_s / len(specs),
            "device": platform_name,
            "protocol": cfg.key,
        }
        for k in specs
    }


def measure(spec: ArchSpec, cfg: LatencyConfig, params: dict | None = None, seed: int = 0) -> dict:
    """Latency result of one encoder."""
    return measure_many({"x": spec}, cfg, {"x": params} if params is not None else None, seed)["x"]


# ---- machine-level cache --------------------------------------------------------------------------------------------
class MachineCache:
    """Latency results of this machine, by protocol and entry key, in one JSON file shared by every workdir."""

    def __init__(self, cfg: LatencyConfig):
        self.cfg = cfg
        self.machine = machine(cfg)
        self.path = os.path.join(cache_root(cfg.cache_dir), f"{self.machine['platform']}-{digest(self.machine)}.json")
        self._data = self._load()

    def _load(self) -> dict:
        if not os.path.exists(self.path):
            return {"machine": self.machine, "protocols": {}}
        try:
            data = read_json(self.path)
            if not isinstance(data, dict) or not isinstance(data.get("protocols"), dict):
                raise ValueError("unexpected layout")
            for entries in data["protocols"].values():
                if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
                    raise ValueError("unexpected layout")
            return data
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            log.warning("latency cache %s is damaged (%s); rebuilding it", self.path, e)
            return {"machine": self.machine, "protocols": {}}

    def get(self, key: str) -> dict | None:
        return self._data["protocols"].get(self.cfg.key, {}).get(key)

    def put(self, results: dict[str, dict]) -> None:
        """Store results; entries another process added since we loaded are kept (merge, then atomic write)."""
        if os.path.exists(self.path):
            fresh = self._load()
            for proto, entries in self._data["protocols"].items():
                fresh["protocols"].setdefault(proto, {}).update({k: v for k, v in entries.items()})
            self._data = fresh
        self._data["protocols"].setdefault(self.cfg.key, {}).update(results)
        try:
            write_json(self.path, self._data)
        except OSError as e:
            log.warning("cannot write latency cache %s (%s); results are kept for this run only", self.path, e)

    def measure_specs(self, specs: list[ArchSpec], params: dict[str, dict] | None = None) -> dict[str, dict]:
        """Results by `spec_key`, timing (side by side) only the specs this machine has not timed yet."""
        keys = {spec_key(s): s for s in specs}
        out = {k: hit for k in keys if (hit := self.get(k)) is not None}
        missing = {k: s for k, s in keys.items() if k not in out}
        if missing:
            fresh = measure_many(missing, self.cfg, params)
            self.put(fresh)
            out.update(fresh)
        return out


class LatencyCache:
    """Per-spec latency through the machine cache: `measure(spec) -> (result, cached?)`."""

    def __init__(self, cfg: LatencyConfig):
        self.cfg = cfg
        self.machine = MachineCache(cfg)

    def get(self, spec: ArchSpec) -> dict | None:
        return self.machine.get(spec_key(spec))

    def measure(self, spec: ArchSpec, params: dict | None = None) -> tuple[dict, bool]:
        hit = self.get(spec)
        if hit is not None:
            return hit, True
        k = spec_key(spec)
        return self.machine.measure_specs([spec], {k: params} if params is not None else None)[k], False
