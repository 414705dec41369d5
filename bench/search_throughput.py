"""Search throughput: candidate evaluations per hour of kdjax's mini-KD vs the original PyTorch mini-KD loop.

Each candidate (a student shape) is distilled for `--epochs` epochs on the same proxy sentences by both
implementations; wall time counts everything a search pays per candidate (student init, compile, steps) but not the
one-off teacher load. kdjax's compile seconds are reported as a share of its wall time. Each implementation runs in
its own child process, one after the other.

    python bench/search_throughput.py
    python bench/search_throughput.py --compilation-cache /tmp/jaxcache   # run twice: the 2nd run hits the cache
    python bench/search_throughput.py --skip-reference --ablate-teacher-cache   # kdjax with vs without reuse

kdjax reuses the teacher's outputs across candidates as the `nas` stage does (`--teacher-cache-mb`, 0 = off);
`--ablate-teacher-cache` also runs kdjax without it, in a third child process, and reports the ratio (with
`--compilation-cache`, run twice and read the second, warm run: in a cold run the second part compiles warm).

The last output line is one JSON object (kdjax, reference, ratio, device, versions).
"""

from __future__ import annotations

import argparse
import sys
import time

import common

common.setup_env()

DEFAULT_CANDIDATES = "2L-384H-6A-768F,3L-384H-6A-1536F,4L-256H-4A-1024F"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="", help="teacher folder or 'random-tiny-bert' (default: packaged MiniLM)")
    p.add_argument("--candidates", default=DEFAULT_CANDIDATES, help="comma list of L-H-A-F[-act] students")
    p.add_argument("--corpus", default="", help=f"text file or glob (default {common.DEFAULT_CORPUS_GLOB})")
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--proxy-sentences", type=int, default=64, help="sentences in the proxy set")
    p.add_argument("--epochs", type=int, default=2, help="mini-KD epochs per candidate")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per reference step")
    p.add_argument("--kdjax-batch-rows", type=int, default=0, help="rows per kdjax step (0: same tokens as reference)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--compilation-cache", default="", help="jax persistent compilation cache folder (default off)")
    p.add_argument("--teacher-cache-mb", type=int, default=2048, help="teacher outputs reused by candidates (0 = off)")
    p.add_argument("--ablate-teacher-cache", action="store_true", help="also run kdjax with --teacher-cache-mb 0")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part", choices=("kdjax", "reference"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _teacher(args):
    return common.load_teacher(args.teacher)


def _sentences(args):
    if args.synthetic:
        from kdjax.data import synthetic

        return synthetic.lines(args.proxy_sentences, args.seed), "synthetic"
    return common.read_sentences(args.corpus or None, args.proxy_sentences, args.seed)


def run_kdjax(args) -> dict:
    import jax

    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from kdjax.data.batches import Batches, MaskingSpec
    from kdjax.data.corpus import pack_rows
    from kdjax.losses import LossConfig
    from kdjax.optim import OptimConfig
    from kdjax.spec import parse_arch_id
    from kdjax.steps import TeacherOutputCache
    from kdjax.train import DistillSettings, Student, distill

    teacher = _teacher(args)
    tok = teacher.tokenizer
    sentences, source = _sentences(args)
    ids = tok(sentences, add_special_tokens=False)["input_ids"]
    rows = pack_rows(ids, args.seq_len, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    per_sentence = sum(min(len(x) + 2, args.seq_len) for x in ids) / len(ids)
    batch_rows = args.kdjax_batch_rows or max(1, round(args.batch_size * per_sentence / args.seq_len))
    batch_rows = min(batch_rows, len(rows))
    batches = Batches(rows, batch_rows, MaskingSpec.from_tokenizer(tok), args.seed)
    steps = args.epochs * batches.steps_per_epoch
    per_cand = []
    cache = TeacherOutputCache(args.teacher_cache_mb * 2**20) if args.teacher_cache_mb > 0 else None
    c_all, t_all = time.process_time(), time.perf_counter()
    for arch in args.candidates.split(","):
        student = parse_arch_id(arch, teacher.spec)
        t0 = time.perf_counter()
        opt = OptimConfig(learning_rate=5e-5, total_steps=steps, schedule="constant")
        res = distill(
            teacher,
            Student(student),
            batches,
            DistillSettings(loss=LossConfig(), opt=opt, num_steps=steps, seed=args.seed),
            report_every=batches.steps_per_epoch,
            teacher_cache=cache,
            progress=False,
        )
        per_cand.append(
            {
                "arch": student.arch_id,
                "wall_s": time.perf_counter() - t0,
                "compile_s": res.compile_s,
                "steps": res.steps,
                "corpus_tokens": res.tokens,
                "last_epoch_loss": res.epoch_losses[-1],
            }
        )
    wall, cpu_s = time.perf_counter() - t_all, time.process_time() - c_all
    compile_s = sum(c["compile_s"] for c in per_cand)
    return {
        "impl": "kdjax",
        "corpus": source,
        "candidates": per_cand,
        "rows": len(rows),
        "batch_rows": batch_rows,
        "steps_per_candidate": steps,
        "wall_s": wall,
        "compile_s": compile_s,
        "compile_share": compile_s / wall,
        "evals_per_hour": len(per_cand) / wall * 3600,
        "cpu_s": cpu_s,
        "evals_per_cpu_hour": len(per_cand) / cpu_s * 3600,
        "evals_per_hour_excl_compile": len(per_cand) / max(wall - compile_s, 1e-9) * 3600,
        "peak_rss_mb": common.peak_rss_mb(),
        "compilation_cache": args.compilation_cache or None,
        "teacher_cache": cache.stats() if cache else None,
        "device": str(jax.devices()[0].device_kind),
    }


def run_reference(args) -> dict:
    from torch_reference import StudentDims, TorchKD

    from kdjax.spec import parse_arch_id

    teacher = _teacher(args)
    sentences, source = _sentences(args)
    per_cand, shared = [], None
    c_all, t_all = time.process_time(), time.perf_counter()
    for arch in args.candidates.split(","):
        s = parse_arch_id(arch, teacher.spec)
        t0 = time.perf_counter()
        kd = TorchKD(
            teacher.source,
            StudentDims(s.num_layers, s.hidden_size, s.num_heads, s.ffn_size, s.activation),
            seed=args.seed,
            teacher=shared,
        )
        if shared is None:  # the one-off teacher load is not part of a candidate's cost
            shared, t_all, t0, c_all = kd.teacher, time.perf_counter(), time.perf_counter(), time.process_time()
        out = kd.mini_kd(sentences, args.epochs, args.batch_size)
        per_cand.append(
            {"arch": s.arch_id, "wall_s": time.perf_counter() - t0, "last_epoch_loss": out["epoch_losses"][-1]}
        )
    wall, cpu_s = time.perf_counter() - t_all, time.process_time() - c_all
    return {
        "impl": "torch_reference",
        "cpu_s": cpu_s,
        "evals_per_cpu_hour": len(per_cand) / cpu_s * 3600,
        "corpus": source,
        "candidates": per_cand,
        "steps_per_candidate": args.epochs * (len(sentences) // args.batch_size),
        "wall_s": wall,
        "compile_s": 0.0,
        "compile_share": 0.0,
        "evals_per_hour": len(per_cand) / wall * 3600,
        "peak_rss_mb": common.peak_rss_mb(),
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
        f"kdjax: {kd['evals_per_hour']:,.0f} candidates/h, wall {kd['wall_s']:.1f} s, "
        f"compile {kd['compile_s']:.1f} s ({100 * kd['compile_share']:.0f}%)",
        flush=True,
    )
    plain = None
    if args.ablate_teacher_cache:
        plain = common.run_part(__file__, "kdjax", [*argv, "--teacher-cache-mb", "0"])
        print(f"kdjax without teacher-output reuse: {plain['evals_per_hour']:,.0f} candidates/h", flush=True)
    ref = None
    if not args.skip_reference:
        ref = common.run_part(__file__, "reference", argv)
        print(f"reference: {ref['evals_per_hour']:,.0f} candidates/h, wall {ref['wall_s']:.1f} s", flush=True)
    info = common.cpu_info()
    common.print_json(
        {
            "kdjax": kd,
            "reference": ref,
            "ratio": kd["evals_per_hour"] / ref["evals_per_hour"] if ref else None,
            "ratio_per_cpu_s": kd["evals_per_cpu_hour"] / ref["evals_per_cpu_hour"] if ref else None,
            "kdjax_without_teacher_cache": plain,
            "teacher_cache_speedup": kd["evals_per_hour"] / plain["evals_per_hour"] if plain else None,
            "teacher_cache_speedup_per_cpu_s": (
                kd["evals_per_cpu_hour"] / plain["evals_per_cpu_hour"] if plain else None
            ),
            # The parts share --compilation-cache: the second one compiles warm, so compare without compile too.
            "teacher_cache_speedup_excl_compile": (
                kd["evals_per_hour_excl_compile"] / plain["evals_per_hour_excl_compile"] if plain else None
            ),
            "device": {"kind": kd["device"], "nproc": info["nproc"], "cpu_model": info["model"]},
            "versions": common.versions(),
            "date": common.stamp(),
            "load_avg_before": load0,
            "load_avg_after": common.load_avg(),
        }
    )


if __name__ == "__main__":
    main()
