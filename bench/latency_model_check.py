"""How well the fitted latency model predicts measured latencies, and XLA vs PyTorch batch-1 latency, on this machine.

    python bench/latency_model_check.py [--timed-runs 30] [--seq-len 128] [--cache-dir DIR] [--max-hidden 384]

Fits (or reuses from the machine cache) the latency model of the protocol, then times a few BERT-family shapes not in
the calibration set under XLA (side by side, low percentile) and under PyTorch (`AutoModel.from_config`), and prints
one JSON object: per shape the measured and modelled XLA latency, the model's relative error, the spread, and torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import common

common.setup_env()
# This checkout's kdjax, not an installed one.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The MiniLM teacher's own shape (calibrated), then shapes held out of the calibration set
# (kdjax.latency_model.CALIBRATION): each row's modelled speed-up over the first is compared with the measured one.
SHAPES = (
    "6L-384H-12A-1536F-gelu",
    "3L-384H-12A-512F-gelu",
    "5L-384H-12A-192F-relu",
    "2L-384H-6A-1024F-silu",
    "4L-256H-4A-512F-gelu",
    "4L-512H-8A-2048F-relu",
)


def _torch_latency(spec, cfg, cache) -> dict:
    """`spec` under PyTorch (`AutoModel.from_config` of the config.json kdjax's export writes), timed by
    kdjax.torch_latency."""
    from kdjax.export import hf_config
    from kdjax.torch_latency import measure_folder

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(hf_config(spec, {}), f)
        return measure_folder(d, cfg, cache)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timed-runs", type=int, default=30)
    p.add_argument("--warmup-runs", type=int, default=5)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--cache-dir", default="")
    p.add_argument("--max-hidden", type=int, default=1024, help="calibrate as a search of a teacher this wide does")
    args = p.parse_args()
    import time

    from kdjax.latency import LatencyConfig, MachineCache, spec_key
    from kdjax.latency_model import load_or_fit
    from kdjax.spec import ArchSpec, parse_arch_id
    from kdjax.torch_latency import available

    cfg = LatencyConfig(
        seq_len=args.seq_len, warmup_runs=args.warmup_runs, timed_runs=args.timed_runs, cache_dir=args.cache_dir
    )
    cache = MachineCache(cfg)
    t0 = time.perf_counter()
    model = load_or_fit(cache, args.max_hidden)
    fit_s = time.perf_counter() - t0
    base = ArchSpec(12, 768, 12, 3072)
    specs = [parse_arch_id(a, base) for a in SHAPES]
    t0 = time.perf_counter()
    # Timed in one session of their own (a fresh cache), the teacher's shape included: the XLA speed-ups are side by
    # side although the teacher's shape was also timed for the calibration, and the PyTorch timings are fresh.
    with tempfile.TemporaryDirectory() as side:
        side_cache = MachineCache(dataclasses.replace(cfg, cache_dir=side))
        measured = side_cache.measure_specs(specs)
        rows = []
        for s in specs:
            m = measured[spec_key(s)]
            pred = model.predict(s)
            row = {
                "arch": s.arch_id,
                "xla_ms": m["latency_ms"],
                "xla_p50_ms": m["p50_ms"],
                "xla_spread_p90_over_p10": m["spread"],
                "model_ms": pred,
                "model_rel_err": (pred - m["latency_ms"]) / m["latency_ms"],
            }
            if available():
                t = _torch_latency(s, cfg, side_cache)
                row.update(torch_ms=t["latency_ms"], torch_spread_p90_over_p10=t["spread"])
            rows.append(row)
    for row in rows:  # speed-ups over the first shape (the teacher), as the search's min_speedup constraint reads them
        row["xla_speedup"] = rows[0]["xla_ms"] / row["xla_ms"]
        row["model_speedup"] = rows[0]["model_ms"] / row["model_ms"]
        if "torch_ms" in row:
            row["torch_speedup"] = rows[0]["torch_ms"] / row["torch_ms"]
    common.print_json(
        {
            "protocol": cfg.key,
            "machine": cache.machine,
            "fit": model.fit,
            "fit_s": fit_s,
            "measure_s": time.perf_counter() - t0,
            "shapes": rows,
            **common.machine_facts(),
        }
    )


if __name__ == "__main__":
    main()
