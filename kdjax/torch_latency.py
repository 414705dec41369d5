"""Batch-1 latency of an exported model under PyTorch (the runtime most users deploy with), when torch is installed.

The model is `transformers.AutoModel.from_config(<folder>/config.json)` in eval mode under `torch.inference_mode()`:
latency depends on shapes, not weights, so random weights time the same as the exported ones, and a teacher saved
with Flax weights only is timed too. Same protocol as kdjax's XLA timing (warm-up, `timed_runs`, low percentile), on
the CPU with one thread unless `nas.latency_device=accelerator` and CUDA is available; cached per machine under the
torch version and the config's hash. A user reproduces it with `AutoModel.from_pretrained(folder)` and a timed
forward call.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os

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


def measure_folder(folder: str, cfg: LatencyConfig, cache: MachineCache | None = None) -> dict | None:
    """Latency result (see `kdjax.latency.summarize`) of the HF model in `folder`; None without torch or config."""
    conf = _config(folder)
    if conf is None or not available():
        return None
    import torch

    cache = cache or MachineCache(cfg)
    shape = {k: conf.get(k) for k in SHAPE_KEYS}
    key = f"torch:{torch.__version__}:{TORCH_THREADS}t:{digest(shape)}"
    hit = cache.get(key)
    if hit is not None:
        return hit
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

    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        with torch.inference_mode():
            for _ in range(cfg.warmup_runs):
                run()
            times = [latency._timed_run(run) for _ in range(cfg.timed_runs)]
    finally:
        torch.set_num_threads(threads)
    result = {
        **summarize(times, cfg.percentile),
        "device": dev,
        "torch": torch.__version__,
        "threads": TORCH_THREADS,
    }
    cache.put({key: result})
    return result
