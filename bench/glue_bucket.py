"""glue.bucket against the glue stage's cost: fewer padded tokens per step, but one more compiled program per length.

For each `--buckets` value a child process runs the real glue stage (`main.py --config=configs/bert_nas.py:cpu
--config.stages=glue --config.glue.models=teacher`) on `--tasks` in a fresh workdir with an empty XLA cache, i.e. a
first run's compile cost; later runs on the machine reuse the compiled programs (kdjax.pipeline's persistent cache),
so the compute part is what they pay. Per (bucket, task): the stage's own `wall_s` and dev score, and per bucket the
child's wall and CPU seconds (user + system, all threads) and the FLOPs the plan counted (kdjax.glue_plan, padded
shapes), so the achieved FLOP rate shows how far the plan's estimate is from the time taken. Rows alternate order by
repeat, so every bucket sees the same machine load on average. `padding` counts, without running anything, the
padded tokens per real token and the distinct batch lengths of each task at each bucket. The last output line is one
JSON object.

    PYTHONPATH=. python bench/glue_bucket.py --glue-dir DIR --tasks sst2,stsb --buckets 32,16,8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import common

from kdjax.config import data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one(bucket: int, args) -> dict:
    """The glue stage at `bucket` in a child process; its records, wall and CPU seconds and planned FLOPs."""
    with tempfile.TemporaryDirectory(prefix="kdjax-bucket-") as tmp:
        workdir, cache = os.path.join(tmp, "w"), os.path.join(tmp, "cache")
        cmd = [
            sys.executable,
            os.path.join(ROOT, "main.py"),
            "--config=configs/bert_nas.py:cpu",
            f"--config.data.glue_dir={args.glue_dir}",
            f"--config.data.corpus={args.corpus}",
            f"--workdir={workdir}",
            "--config.stages=glue",
            "--config.glue.models=teacher",
            f"--config.glue.tasks={args.tasks}",
            f"--config.glue.max_train_examples={args.max_train_examples}",
            f"--config.glue.bucket={bucket}",
        ]
        env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
        env.update(KDJAX_CACHE_DIR=cache, TQDM_DISABLE="1")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"glue stage at bucket {bucket} failed (exit {proc.returncode})")
        flops = re.search(r"glue .*?([0-9.]+e[+-]?[0-9]+) FLOPs", proc.stdout)
        tasks = {}
        for task in args.tasks.split(","):
            with open(os.path.join(workdir, "glue", "teacher", f"{task}.json")) as f:
                rec = json.load(f)
            tasks[task] = {"wall_s": rec["wall_s"], "score": rec["score"], "train_tokens": rec["train_tokens"]}
    return {
        "bucket": bucket,
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "planned_flops": float(flops.group(1)) if flops else None,
        "tasks": tasks,
    }


def padding(args, buckets: list[int]) -> dict:
    """Per task and bucket, as kdjax.finetune batches `--max-train-examples` of it (batch 32, windows of 32, 4 epochs,
    the MiniLM tokenizer): padded tokens computed / real tokens, and the distinct training and dev batch lengths
    (one compiled program each)."""
    from transformers import AutoTokenizer

    from kdjax import glue_data
    from kdjax.config import _minilm_dir
    from kdjax.finetune import epoch_order, subsample

    tokenizer = AutoTokenizer.from_pretrained(_minilm_dir())
    out: dict = {}
    for task in args.tasks.split(","):
        data, bi = glue_data.load_task(task, args.glue_dir), task == "stsb"  # as :cpu bi-encodes STS-B
        train = glue_data.encode(tokenizer, subsample(data.train, args.max_train_examples, 0), 128, bi)
        devs = [glue_data.encode(tokenizer, split, 128, bi) for split in data.dev.values()]
        rows, lengths = 2 if bi else 1, train.lengths
        real = sum(map(len, train.input_ids)) + (sum(map(len, train.pair_ids)) if bi else 0)
        out[task] = {"real_tokens_per_example": real / len(lengths)}
        epochs = [epoch_order(lengths, 32, epoch, 0, 32) for epoch in range(4)]
        dev_orders = [(d, glue_data.eval_order(d.lengths, 128)) for d in devs]
        for b in buckets:
            train_lens = [n for batches in epochs for n in glue_data.padded_lengths(lengths, batches, b, 128)]
            dev_lens = [n for d, order in dev_orders for n in glue_data.padded_lengths(d.lengths, order, b, 128)]
            out[task][str(b)] = {"padded_over_real": 32 * rows * sum(train_lens) / (4 * real),
                                 "train_lengths": len(set(train_lens)), "dev_lengths": len(set(dev_lens))}  # fmt: skip
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glue-dir", default=os.path.join(data_dir(), "glue"))
    p.add_argument("--corpus", default=os.path.join(data_dir(), "corpus"))
    p.add_argument("--tasks", default="sst2,stsb")
    p.add_argument("--buckets", default="32,16,8")
    p.add_argument("--max-train-examples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--padding-only", action="store_true", help="only the padding counts, no glue stage run")
    args = p.parse_args(argv)
    if not os.path.isdir(args.glue_dir):
        raise SystemExit(f"no GLUE folder at {args.glue_dir} (pass --glue-dir)")
    buckets = [int(b) for b in args.buckets.split(",")]
    pads = padding(args, buckets)
    if args.padding_only:
        common.print_json({"padding": pads, "tasks": args.tasks, "max_train_examples": args.max_train_examples})
        return
    rows = []
    for repeat in range(args.repeats):
        for bucket in buckets if repeat % 2 == 0 else buckets[::-1]:
            rows.append({**one(bucket, args), "repeat": repeat})
            print(rows[-1], flush=True)
    base = [r for r in rows if r["bucket"] == buckets[0]]
    summary = {}
    for b in buckets:
        mine = [r for r in rows if r["bucket"] == b]
        summary[str(b)] = {
            "wall_s": sum(r["wall_s"] for r in mine) / len(mine),
            "cpu_s": sum(r["cpu_s"] for r in mine) / len(mine),
            f"speedup_vs_{buckets[0]}": sum(r["wall_s"] for r in base) / sum(r["wall_s"] for r in mine),
            "planned_gflop_per_s": (mine[0]["planned_flops"] or 0) / 1e9 / (sum(r["wall_s"] for r in mine) / len(mine)),
        }
    facts = {"tasks": args.tasks, "max_train_examples": args.max_train_examples, **common.machine_facts()}
    common.print_json({"rows": rows, "summary": summary, "padding": pads, **facts})


if __name__ == "__main__":
    main()
