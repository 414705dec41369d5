"""Inference latency of an encoder on a chosen device: jit, compile excluded, warm-up, median of timed runs."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import cast

import jax
import jax.numpy as jnp

from kdjax.models import Encoder
from kdjax.spec import ArchSpec
from kdjax.workdir import read_json, write_json


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    device: str = "cpu"  # 'cpu' or 'accelerator'
    batch_size: int = 1
    seq_len: int = 128
    warmup_runs: int = 5
    timed_runs: int = 5

    @classmethod
    def from_config(cls, nas_cfg) -> LatencyConfig:
        return cls(
            device=str(nas_cfg.latency_device),
            batch_size=int(nas_cfg.latency_batch_size),
            seq_len=int(nas_cfg.latency_seq_len),
            warmup_runs=int(nas_cfg.latency_warmup_runs),
            timed_runs=int(nas_cfg.latency_timed_runs),
        )

    @property
    def key(self) -> str:
        return f"{self.device}-b{self.batch_size}-s{self.seq_len}"


def target_device(name: str) -> jax.Device:
    if name == "cpu":
        return jax.devices("cpu")[0]
    return jax.devices()[0]


def measure(spec: ArchSpec, cfg: LatencyConfig, params: dict | None = None, seed: int = 0) -> dict:
    """Median forward latency (ms) of the encoder (hidden states only, fp32) at cfg's batch and length.

    Random weights are used when `params` is None: latency depends on shapes, not values.
    """
    t_start = time.perf_counter()
    device = target_device(cfg.device)
    model = Encoder(spec)
    ids = jnp.ones((cfg.batch_size, cfg.seq_len), jnp.int32)
    mask = jnp.ones_like(ids)
    with jax.default_device(device):
        if params is None:
            params = jax.jit(model.init)(jax.random.PRNGKey(seed), ids, mask)["params"]
        params = jax.device_put(params, device)
        ids, mask = jax.device_put(ids, device), jax.device_put(mask, device)
        fwd = jax.jit(lambda p, i, m: cast(dict, model.apply({"params": p}, i, m))["hidden_states"][-1])
        t0 = time.perf_counter()
        compiled = fwd.lower(params, ids, mask).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(cfg.warmup_runs):
            compiled(params, ids, mask).block_until_ready()
        times = []
        for _ in range(cfg.timed_runs):
            t = time.perf_counter()
            compiled(params, ids, mask).block_until_ready()
            times.append((time.perf_counter() - t) * 1e3)
    return {
        "latency_ms": statistics.median(times),
        "runs_ms": times,
        "compile_s": compile_s,
        "measure_s": time.perf_counter() - t_start,
        "device": device.platform,
    }


class LatencyCache:
    """Latency results per (protocol, arch id), persisted as JSON so a resumed search does not re-measure.

    Latency depends only on shapes and the protocol, so the key is `cfg.key` plus the spec's arch id and family.
    """

    def __init__(self, path: str, cfg: LatencyConfig):
        self.path, self.cfg = path, cfg
        self._data = read_json(path) if path and os.path.exists(path) else {}

    def _key(self, spec: ArchSpec) -> str:
        return f"{spec.family}:{spec.arch_id}"

    def get(self, spec: ArchSpec) -> dict | None:
        return self._data.get(self.cfg.key, {}).get(self._key(spec))

    def measure(self, spec: ArchSpec, params: dict | None = None) -> tuple[dict, bool]:
        """(result, cached?): the stored result, or a fresh measurement that is stored before returning."""
        hit = self.get(spec)
        if hit is not None:
            return hit, True
        result = measure(spec, self.cfg, params)
        if self.path and os.path.exists(self.path):
            # Another worker may have added entries since we loaded: merge rather than overwrite.
            self._data = read_json(self.path)
        self._data.setdefault(self.cfg.key, {})[self._key(spec)] = result
        if self.path:
            write_json(self.path, self._data)
        return result, False
