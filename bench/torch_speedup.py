"""PyTorch batch-1 speed-up of a student over its teacher: paired, as the report records it, or from lone timings.

    python bench/torch_speedup.py TEACHER_DIR STUDENT_DIR [--mode pair|lone] [--timed-runs 30] [--seq-len 128]

Both folders need only a transformers config.json (the timing builds `AutoModel.from_config`, random weights).
`pair` (default) is `kdjax.torch_latency.measure_pair`: teacher and student built in one process, warmed up, then
timed in alternating rounds, what the kd and glue stages record. `lone` times each folder alone, the teacher first
(`measure_folder`), the way kdjax recorded the two before pairs, at different moments. Each run uses a fresh latency
cache (nothing read from or written to the machine's) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

# This checkout's kdjax, not an installed one.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common

common.setup_env()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teacher")
    p.add_argument("student")
    p.add_argument("--mode", choices=("pair", "lone"), default="pair")
    p.add_argument("--timed-runs", type=int, default=30)
    p.add_argument("--warmup-runs", type=int, default=5)
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args()
    from kdjax.latency import LatencyConfig
    from kdjax.torch_latency import measure_folder, measure_pair

    cfg = LatencyConfig(
        seq_len=args.seq_len,
        warmup_runs=args.warmup_runs,
        timed_runs=args.timed_runs,
        cache_dir=tempfile.mkdtemp(prefix="torch_speedup-"),
    )
    if args.mode == "pair":
        r = measure_pair(args.student, args.teacher, cfg)
        if r is None:
            sys.exit("torch_speedup: torch is not installed or a folder has no usable config.json")
        t, s, speedup = r["teacher"], r["student"], r["speedup"]
    else:
        t, s = measure_folder(args.teacher, cfg), measure_folder(args.student, cfg)
        if t is None or s is None:
            sys.exit("torch_speedup: torch is not installed or a folder has no usable config.json")
        speedup = t["latency_ms"] / s["latency_ms"]
    keep = ("latency_ms", "p50_ms", "p90_ms", "spread", "runs")
    out = {
        "mode": args.mode,
        "protocol": cfg.key,
        "speedup": speedup,
        "teacher": {k: t[k] for k in keep},
        "student": {k: s[k] for k in keep},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
