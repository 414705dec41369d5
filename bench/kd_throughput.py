"""KD-step throughput: kdjax's compiled step vs the original PyTorch step, on the same sentences and teacher.

Both parts run one after the other in this one invocation, each in its own child process so that peak RSS and
thread pools are per implementation. The reference pads each of `--batch-size` sentences to 128 tokens; kdjax packs
the same sentences into rows of `--seq-len` tokens, so the two are compared by corpus (non-pad) tokens per second.

    python bench/kd_throughput.py                       # MiniLM teacher, 3L-384H-6A-1536F student, $KDJAX_DATA corpus
    python bench/kd_throughput.py --skip-reference --steps 2 --teacher random-tiny-bert --student 2L-32H-2A-64F

The last output line is one JSON object with keys kdjax, reference, ratio, device, versions (and machine facts).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import common

common.setup_env()

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="", help="teacher folder or 'random-tiny-bert' (default: packaged MiniLM)")
    p.add_argument("--student", default="3L-384H-6A-1536F", help="student L-H-A-F[-act]")
    p.add_argument(
        "--corpus", default="", help=f"text file or glob (default {common.DEFAULT_CORPUS_GLOB}, else synthetic)"
    )
    p.add_argument("--synthetic", action="store_true", help="use kdjax.data.synthetic text instead of the corpus")
    p.add_argument("--steps", type=int, default=8, help="timed steps of each implementation")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per reference step")
    p.add_argument(
        "--kdjax-batch-rows",
        type=int,
        default=0,
        help="packed rows per kdjax step (0: rows holding about the same corpus tokens as one reference step)",
    )
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="kdjax compute dtype")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-peak", action="store_true", help="do not measure the CPU matmul peak")
    p.add_argument("--compilation-cache", default="", help="jax persistent compilation cache folder (default off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part", choices=("kdjax", "reference"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _teacher(args):
    return common.load_teacher(args.teacher)


def _sentences(args):
    n = args.batch_size * (args.steps + 1)  # +1: the warm-up step
    if args.synthetic:
        from kdjax.data import synthetic

        return synthetic.lines(n, args.seed), "synthetic"
    return common.read_sentences(args.corpus or None, n, args.seed)


def run_kdjax(args) -> dict:
    """kdjax's own loop (`kdjax.train.distill`): run 1 compiles, run 2 reuses the compiled step (steady state)."""
    import jax

    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import jax.numpy as jnp

    from kdjax.data.batches import Batches, MaskingSpec
    from kdjax.data.corpus import pack_rows
    from kdjax.losses import LossConfig
    from kdjax.optim import OptimConfig
    from kdjax.spec import parse_arch_id
    from kdjax.train import DistillSettings, Student, distill

    teacher = _teacher(args)
    tok = teacher.tokenizer
    sentences, source = _sentences(args)
    ids = tok(sentences, add_special_tokens=False)["input_ids"]
    rows = pack_rows(ids, args.seq_len, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    non_pad = float((rows != tok.pad_token_id).mean())
    per_sentence = sum(min(len(x) + 2, args.seq_len) for x in ids) / len(ids)
    batch_rows = args.kdjax_batch_rows or max(1, round(args.batch_size * per_sentence / args.seq_len))
    batch_rows = min(batch_rows, len(rows))
    student = parse_arch_id(args.student, teacher.spec)
    loss_cfg = LossConfig()
    dtype = jnp.dtype(args.dtype)
    batches = Batches(rows, batch_rows, MaskingSpec.from_tokenizer(tok), args.seed)

    # Host-side batch preparation (masking + non-pad count) on its own, to see whether it could bottleneck the step.
    t0 = time.perf_counter()
    for s in range(args.steps):
        batches.num_tokens(batches.get(s))
    host_ms = (time.perf_counter() - t0) / args.steps * 1e3

    runs, cpu_s = [], 0.0
    for _ in range(2):
        c0 = time.process_time()
        opt = OptimConfig(learning_rate=5e-5, total_steps=args.steps + 1, schedule="constant")
        settings = DistillSettings(loss=loss_cfg, opt=opt, num_steps=args.steps + 1, seed=args.seed, dtype=dtype)
        res = distill(teacher, Student(student), batches, settings, report_every=args.steps + 1, progress=False)
        runs.append(res)
        cpu_s = time.process_time() - c0  # of the last (steady) run: contention-robust, see docs/performance.md
    first, steady = runs
    # The first timed step of run 2 is already compiled; count all of its steps.
    step_s = (steady.wall_s - steady.compile_s) / steady.steps
    tok_s = steady.tokens / max(steady.wall_s - steady.compile_s, 1e-9)
    padded_tok_s = batch_rows * args.seq_len / step_s
    t_spec, seq = teacher.spec, args.seq_len
    proj = 2 * student.hidden_size * 2 * t_spec.hidden_size * student.num_layers
    flops_per_tok = t_spec.flops_per_token(seq) + 3 * student.flops_per_token(seq) + 3 * proj
    return {
        "impl": "kdjax",
        "corpus": source,
        "sentences": len(sentences),
        "rows": len(rows),
        "batch_rows": batch_rows,
        "seq_len": seq,
        "non_pad_fraction": non_pad,
        "steps": steady.steps,
        "corpus_tokens_per_s": tok_s,
        "step_ms": step_s * 1e3,
        "cpu_s_per_step": cpu_s / steady.steps,
        "corpus_tokens_per_cpu_s": steady.tokens / cpu_s,
        "compile_s": first.compile_s,
        "compile_s_second_call": steady.compile_s,
        "first_run_tokens_per_s_excl_compile": first.tokens_per_s,
        "host_batch_prep_ms": host_ms,
        "peak_rss_mb": common.peak_rss_mb(),
        "flops_per_padded_token": flops_per_tok,
        "achieved_flops": flops_per_tok * padded_tok_s,
        "dtype": args.dtype,
        "teacher": t_spec.arch_id,
        "student": student.arch_id,
        "final_loss": steady.final_loss,
        "device": str(jax.devices()[0].device_kind),
    }


def run_reference(args) -> dict:
    """The original PyTorch step: tokenise + pad to 128 + mask + both MLM models + MSE + AdamW, timed per step."""
    import torch
    from torch_reference import StudentDims, TorchKD, non_pad_tokens

    from kdjax.spec import parse_arch_id

    teacher = _teacher(args)  # for its folder and spec; the reference loads its own torch weights
    sentences, source = _sentences(args)
    s = parse_arch_id(args.student, teacher.spec)
    t0 = time.perf_counter()
    kd = TorchKD(
        teacher.source,
        StudentDims(s.num_layers, s.hidden_size, s.num_heads, s.ffn_size, s.activation),
        seed=args.seed,
    )
    setup_s = time.perf_counter() - t0
    b = args.batch_size
    kd.step(kd.encode(sentences[:b]))  # warm-up (allocator, oneDNN primitive caches)
    tokens, loss = 0, float("nan")
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(1, args.steps + 1):
        batch = kd.encode(sentences[i * b : (i + 1) * b])
        tokens += non_pad_tokens(batch)
        loss = kd.step(batch)
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return {
        "impl": "torch_reference",
        "corpus": source,
        "sentences": len(sentences),
        "batch_sentences": b,
        "seq_len": 128,
        "non_pad_fraction": tokens / (args.steps * b * 128),
        "steps": args.steps,
        "corpus_tokens_per_s": tokens / wall,
        "step_ms": wall / args.steps * 1e3,
        "cpu_s_per_step": cpu_s / args.steps,
        "corpus_tokens_per_cpu_s": tokens / cpu_s,
        "compile_s": 0.0,
        "setup_s": setup_s,
        "peak_rss_mb": common.peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
        "final_loss": loss,
        "device": "cpu",
    }


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.part:
        common.print_json(run_kdjax(args) if args.part == "kdjax" else run_reference(args))
        return
    load0 = common.load_avg()
    kd = common.run_part(__file__, "kdjax", argv)
    print(
        f"kdjax: {kd['corpus_tokens_per_s']:,.0f} corpus tok/s, {kd['step_ms']:.0f} ms/step, "
        f"compile {kd['compile_s']:.1f} s, host prep {kd['host_batch_prep_ms']:.1f} ms/step",
        flush=True,
    )
    ref = None
    if not args.skip_reference:
        ref = common.run_part(__file__, "reference", argv)
        print(f"reference: {ref['corpus_tokens_per_s']:,.0f} corpus tok/s, {ref['step_ms']:.0f} ms/step", flush=True)
    info = common.cpu_info()
    out = {
        "kdjax": kd,
        "reference": ref,
        "ratio": kd["corpus_tokens_per_s"] / ref["corpus_tokens_per_s"] if ref else None,
        "ratio_per_cpu_s": kd["corpus_tokens_per_cpu_s"] / ref["corpus_tokens_per_cpu_s"] if ref else None,
        "device": {"kind": kd["device"], "nproc": info["nproc"], "cpu_model": info["model"], "mhz": info["mhz"]},
        "versions": common.versions(),
        "date": common.stamp(),
        "load_avg_before": load0,
        "load_avg_after": common.load_avg(),
    }
    if not args.skip_peak:
        theo = common.theoretical_fp32_peak(info)
        meas = common.measured_matmul_peak()
        out["peak"] = {"theoretical_fp32": theo, "measured_matmul_fp32": meas}
        out["kdjax_fraction_of_peak"] = {
            "theoretical": kd["achieved_flops"] / theo["flops"],
            "measured_jax_best": kd["achieved_flops"] / meas["jax"]["best"],
        }
        print(
            f"kdjax achieved {kd['achieved_flops'] / 1e9:.1f} GFLOP/s; theoretical fp32 peak "
            f"{theo['flops'] / 1e9:.0f} ({theo['formula']}); measured jax matmul best "
            f"{meas['jax']['best'] / 1e9:.0f}, numpy {meas['numpy']['best'] / 1e9:.0f} GFLOP/s",
            flush=True,
        )
    common.print_json(out)


if __name__ == "__main__":
    main()
