"""Batch-1 latency of an exported model under PyTorch (the runtime most users deploy with), when torch is installed.

The model is `transformers.AutoModel.from_config(<folder>/config.json)` in eval mode under `torch.inference_mode()`:
latency depends on shapes, not weights, so random weights time the same as the exported ones, and a teacher saved
with Flax weights only is timed too. Same protocol as kdjax's XLA timing (warm-up, `timed_runs`, low percentile), on
the CPU with one thread unless `nas.latency_device=accelerator` and CUDA is available; cached per machine under the
torch version and the config's hash. A user reproduces it with `AutoModel.from_pretrained(folder)` and a timed
forward call.

A student's speed-up is timed as a pair (`measure_pair`): the teacher and the student built in one process, both
warmed up, then timed in alternating rounds, so a load change on a shared machine hits both and the ratio of their
low percentiles is one a user can reproduce; two lone timings taken at different moments moved the same pair's
ratio from 4.0x to 2.9x (docs/performance.md). The pair is cached under both shapes, never assembled from two lone
entries.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator

from kdjax import latency
from kdjax.latency import LatencyConfig, MachineCache, digest, summarize

log = logging.getLogger(__name__)

# One intra-op thread: OpenMP workers spin at every barrier, so on a shared CPU two threads timed MiniLM at p50
# 1,492 ms against 71 ms for one (docs/performance.md); one thread is also how batch-1 serving is usually pinned.
TORCH_THREADS = 1
# The config fields that decide the shapes: exports of one architecture that differ only in metadata share a timing.
SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "embedding_size",
    "num_hidden_groups",
    "position_embedding_type",
)


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _config(folder: str) -> dict | None:
    path = os.path.join(folder, "config.json") if folder and os.path.isdir(folder) else ""
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _shape_key(conf: dict) -> str:
    return digest({k: conf.get(k) for k in SHAPE_KEYS})


def _runner(folder: str, cfg: LatencyConfig) -> tuple[Callable[[], None], str] | None:
    """(a forward call of the HF model in `folder`, random weights; device name), or None when it cannot be built."""
    import torch

    try:
        from transformers import AutoConfig, AutoModel

        model = AutoModel.from_config(AutoConfig.from_pretrained(folder)).eval()
    except Exception as e:  # an unusual config must not stop the report
        log.warning("cannot build %s under PyTorch for timing: %s", folder, e)
        return None
    dev = "cuda" if cfg.device == "accelerator" and torch.cuda.is_available() else "cpu"
    model = model.to(dev)
    ids = torch.full((cfg.batch_size, cfg.seq_len), 5, dtype=torch.long, device=dev)
    mask = torch.ones_like(ids)

    def run() -> None:
        model(input_ids=ids, attention_mask=mask)
        if dev == "cuda":
            torch.cuda.synchronize()

    return run, dev


@contextlib.contextmanager
def _session() -> Iterator[None]:
    """One intra-op thread and no autograd bookkeeping while timing; the caller's thread count is restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)


def time_interleaved(runs: dict[str, Callable[[], None]], cfg: LatencyConfig) -> dict[str, list[float]]:
    """Warm every model up, then time `timed_runs` rounds of one run each, the order reversed every other round
    (A B, B A, ...): a load change hits every model of the session alike, and no model always runs right after the
    same other one (whose weights just went through the caches)."""
    names = list(runs)
    for _ in range(cfg.warmup_runs):
        for k in names:
            runs[k]()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(cfg.timed_runs):
        for k in names if r % 2 == 0 else names[::-1]:
            times[k].append(latency._timed_run(runs[k]))
    return times


def _result(times: list[float], cfg: LatencyConfig, dev: str) -> dict:
    import torch

    return {**summarize(times, cfg.percentile), "device": dev, "torch": torch.__version__, "threads": TORCH_THREADS}


def _cached(
    key: str, cfg: LatencyConfig, cache: MachineCache | None, measure: Callable[[], dict | None]
) -> dict | None:
    """The machine cache's entry for `key`, else `measure()`, stored when it gives a result."""
    cache = cache or MachineCache(cfg)
    hit = cache.get(key)
    if hit is not None:
        return hit
    result = measure()
    if result is not None:
        cache.put({key: result})
    return result


def measure_folder(folder: str, cfg: LatencyConfig, cache: MachineCache | None = None) -> dict | None:
    """Latency result (see `kdjax.latency.summarize`) of the HF model in `folder` timed alone; None without torch
    or config. For a speed-up over the teacher use `measure_pair`: a lone timing is not divided by another."""
    conf = _config(folder)
    if conf is None or not available():
        return None
    import torch

    def measure() -> dict | None:
        built = _runner(folder, cfg)
        if built is None:
            return None
        run, dev = built
        with _session():
            times = time_interleaved({"model": run}, cfg)["model"]
        return _result(times, cfg, dev)

    return _cached(f"torch:{torch.__version__}:{TORCH_THREADS}t:{_shape_key(conf)}", cfg, cache, measure)


def measure_pair(student: str, teacher: str, cfg: LatencyConfig, cache: MachineCache | None = None) -> dict | None:
    """The student's and the teacher's latency results timed side by side in one session (`time_interleaved`) and
    `speedup` = teacher / student at the protocol's percentile (`speedup_p50` at the median); None without torch,
    a config, or a model that builds. Cached per machine under both shapes."""
    s_conf, t_conf = _config(student), _config(teacher)
    if s_conf is None or t_conf is None or not available():
        return None
    import torch

    def measure() -> dict | None:
        s_built, t_built = _runner(student, cfg), _runner(teacher, cfg)
        if s_built is None or t_built is None:
            return None
        with _session():
            times = time_interleaved({"teacher": t_built[0], "student": s_built[0]}, cfg)
        s, t = _result(times["student"], cfg, s_built[1]), _result(times["teacher"], cfg, t_built[1])
        return {
            "student": s,
            "teacher": t,
            "speedup": t["latency_ms"] / s["latency_ms"] if s["latency_ms"] > 0 else None,
            "speedup_p50": t["p50_ms"] / s["p50_ms"] if s["p50_ms"] > 0 else None,
            "protocol": "paired: both warmed up, then alternating rounds (teacher student, student teacher, ...)",
        }

    key = f"torch-pair:{torch.__version__}:{TORCH_THREADS}t:{_shape_key(s_conf)}:{_shape_key(t_conf)}"
    return _cached(key, cfg, cache, measure)
