"""Search throughput: candidate evaluations per CPU second of kdjax's mini-KD vs the original PyTorch mini-KD loop.

Each candidate (a student shape, random init) is distilled for `--epochs` epochs on the same proxy sentences by both
implementations; a part's time counts everything a search pays per candidate (student init, compile, steps) but not
the one-off teacher load. By default one invocation runs, one after the other in child processes:

- kdjax, cold: a fresh, empty persistent compilation cache (a first search on a new machine);
- kdjax, warm: the same search again in a new process, reading that cache (every later search on the machine);
- the reference (bench/torch_reference.py).

The machine is shared, so the figures that count are ratios of candidate evaluations per CPU second
(`time.process_time()`, all threads of the part's process) and compile's share of kdjax's search wall time
(compile = tracing + lowering + XLA compile of the step programs, `DistillResult.compile_s`; the student's init
is built on the host and compiles nothing, its CPU seconds count as the candidate's).

    python bench/search_throughput.py --corpus $KDJAX_DATA/corpus/nltk_brown.txt.gz   # 8 candidates, 320 sentences
    python bench/search_throughput.py --skip-reference --ablate-scan --background-compile   # also the levers

`--ablate-scan` adds a cold part with the layers scanned (`nas.scan_layers`), `--background-compile` a cold part that
compiles the next candidate's programs on a thread while the current one trains (`nas.compile_ahead`, as the random
search and the LSTM do it); there `compile_s` is the compile the search waited for and `compile_ahead_s` what the
thread compiled. `--ablate-teacher-cache` adds a part without teacher-output reuse (each part in its own fresh cache).
The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time

import common

common.setup_env()

# Eight shapes of the MiniLM teacher's search space: depths 2-6, widths 256/384, all three activations.
DEFAULT_CANDIDATES = (
    "2L-384H-6A-768F,3L-384H-6A-1536F,4L-256H-4A-1024F,6L-384H-12A-1536F,"
    "3L-256H-4A-512F,5L-384H-6A-1024F,2L-256H-4A-1024F-relu,4L-384H-12A-768F-silu"
)
# The issue-14 targets for a cold search: kdjax / reference per CPU second, compile / search wall.
TARGET_RATIO, TARGET_COMPILE_SHARE = 10.0, 0.10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="", help="teacher folder or 'random-tiny-bert' (default: packaged MiniLM)")
    p.add_argument("--candidates", default=DEFAULT_CANDIDATES, help="comma list of L-H-A-F[-act] students")
    p.add_argument("--corpus", default="", help=f"text file or glob (default {common.DEFAULT_CORPUS_GLOB})")
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--proxy-sentences", type=int, default=320, help="sentences in the proxy set")
    p.add_argument("--epochs", type=int, default=1, help="mini-KD epochs per candidate")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per reference step")
    p.add_argument("--kdjax-batch-rows", type=int, default=0, help="rows per kdjax step (0: same tokens as reference)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--compilation-cache", default="", help="cache folder for the kdjax parts (default: a fresh one)")
    p.add_argument("--teacher-cache-mb", type=int, default=2048, help="teacher outputs reused by candidates (0 = off)")
    p.add_argument("--ablate-teacher-cache", action="store_true", help="also run kdjax with --teacher-cache-mb 0")
    p.add_argument("--ablate-scan", action="store_true", help="also run kdjax cold with the layers scanned")
    p.add_argument("--background-compile", action="store_true", help="also run kdjax cold compiling ahead on a thread")
    p.add_argument("--skip-warm", action="store_true", help="no warm-cache kdjax part")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part", choices=("kdjax", "reference"), help=argparse.SUPPRESS)
    p.add_argument("--scan-layers", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compile-ahead", action="store_true", help=argparse.SUPPRESS)
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
    from kdjax.train import DistillSettings, Student, distill, precompile

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
    specs = [parse_arch_id(arch, teacher.spec) for arch in args.candidates.split(",")]
    # One optimizer for every candidate, as the nas stage does: equal shapes share compiled programs.
    opt = OptimConfig(learning_rate=5e-5, total_steps=steps, schedule="constant")
    settings = DistillSettings(
        loss=LossConfig(), opt=opt, num_steps=steps, seed=args.seed, scan_layers=args.scan_layers
    )
    # As the nas stage's `prepare`: one thread compiles candidate i+1 (kdjax.train.precompile) while i trains.
    ahead = concurrent.futures.ThreadPoolExecutor(1, "compile-ahead") if args.compile_ahead else None
    prepared: dict[int, concurrent.futures.Future] = {}
    c_all, t_all = time.process_time(), time.perf_counter()
    try:
        for i, student in enumerate(specs):
            t0 = time.perf_counter()
            if ahead is not None and i + 1 < len(specs):
                prepared[i + 1] = ahead.submit(precompile, teacher, Student(specs[i + 1]), batches, settings)
            # Waiting for this candidate's compile on the thread is compile time it pays.
            ahead_s = prepared.pop(i).result() if i in prepared else None
            waited = time.perf_counter() - t0
            res = distill(
                teacher,
                Student(student),
                batches,
                settings,
                report_every=batches.steps_per_epoch,
                teacher_cache=cache,
                progress=False,
            )
            per_cand.append(
                {
                    "arch": student.arch_id,
                    "wall_s": time.perf_counter() - t0,
                    "compile_s": res.compile_s + waited,
                    "compile_ahead_s": ahead_s,
                    "steps": res.steps,
                    "corpus_tokens": res.tokens,
                    "last_epoch_loss": res.epoch_losses[-1],
                }
            )
    finally:
        if ahead is not None:
            ahead.shutdown(wait=True, cancel_futures=True)
    wall, cpu_s = time.perf_counter() - t_all, time.process_time() - c_all
    # Compile the search waited for; what the thread compiled while a candidate trained is `compile_ahead_s`.
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
        "evals_per_cpu_s": len(per_cand) / cpu_s,
        "peak_rss_mb": common.peak_rss_mb(),
        "compilation_cache": args.compilation_cache or None,
        "scan_layers": args.scan_layers,
        "compile_ahead": args.compile_ahead,
        "compile_ahead_s": sum(c["compile_ahead_s"] or 0.0 for c in per_cand),
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
        "evals_per_cpu_s": len(per_cand) / cpu_s,
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


def _summary(kd: dict, ref: dict | None) -> dict:
    """A kdjax part against the reference: evaluations per CPU second, their ratio, compile seconds and share."""
    ratio = kd["evals_per_cpu_s"] / ref["evals_per_cpu_s"] if ref else None
    return {
        "evals_per_cpu_s": kd["evals_per_cpu_s"],
        "ratio_per_cpu_s": ratio,
        "ratio_wall": kd["evals_per_hour"] / ref["evals_per_hour"] if ref else None,
        "compile_s": kd["compile_s"],
        "compile_share": kd["compile_share"],
        "cpu_s": kd["cpu_s"],
        "wall_s": kd["wall_s"],
        "meets_ratio": None if ratio is None else ratio >= TARGET_RATIO,
        "meets_compile_share": kd["compile_share"] <= TARGET_COMPILE_SHARE,
    }


def _kdjax_part(argv: list[str], cache_dir: str, *extra: str) -> dict:
    kd = common.run_part(__file__, "kdjax", [*argv, "--compilation-cache", cache_dir, *extra])
    print(
        f"kdjax {' '.join(extra) or ''} cache {cache_dir}: {kd['evals_per_cpu_s'] * 3600:,.0f} candidates/CPU-h, "
        f"wall {kd['wall_s']:.1f} s, compile {kd['compile_s']:.1f} s ({100 * kd['compile_share']:.0f}%)",
        flush=True,
    )
    return kd


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.part:
        common.print_json(run_kdjax(args) if args.part == "kdjax" else run_reference(args))
        return
    load0 = common.load_avg()
    # Each cold part gets its own fresh cache folder; the warm part re-reads the first one.
    tmp = tempfile.TemporaryDirectory(prefix="kdjax-search-bench-")
    argv = [a for a in argv if a not in ("--ablate-scan", "--background-compile", "--ablate-teacher-cache")]

    def fresh(name: str) -> str:
        return args.compilation_cache or os.path.join(tmp.name, name)

    cold = _kdjax_part(argv, fresh("cold"))
    warm = None if args.skip_warm else _kdjax_part(argv, fresh("cold"))
    scan = _kdjax_part(argv, fresh("scan"), "--scan-layers") if args.ablate_scan else None
    ahead = _kdjax_part(argv, fresh("ahead"), "--compile-ahead") if args.background_compile else None
    plain = _kdjax_part(argv, fresh("plain"), "--teacher-cache-mb", "0") if args.ablate_teacher_cache else None
    ref = None
    if not args.skip_reference:
        ref = common.run_part(__file__, "reference", argv)
        print(
            f"reference: {ref['evals_per_cpu_s'] * 3600:,.0f} candidates/CPU-h, wall {ref['wall_s']:.1f} s", flush=True
        )
    tmp.cleanup()
    info = common.cpu_info()
    common.print_json(
        {
            "setting": {
                "candidates": args.candidates.split(","),
                "proxy_sentences": args.proxy_sentences,
                "epochs": args.epochs,
                "corpus": cold["corpus"],
                "init": "random",
            },
            "targets": {"ratio_per_cpu_s": TARGET_RATIO, "compile_share": TARGET_COMPILE_SHARE},
            "cold": _summary(cold, ref),
            "warm": _summary(warm, ref) if warm else None,
            "scan_cold": _summary(scan, ref) if scan else None,
            "compile_ahead_cold": _summary(ahead, ref) if ahead else None,
            "no_teacher_cache_cold": _summary(plain, ref) if plain else None,
            "reference": {"evals_per_cpu_s": ref["evals_per_cpu_s"], "cpu_s": ref["cpu_s"], "wall_s": ref["wall_s"]}
            if ref
            else None,
            "parts": {
                "kdjax_cold": cold,
                "kdjax_warm": warm,
                "kdjax_scan_cold": scan,
                "kdjax_compile_ahead_cold": ahead,
                "kdjax_no_teacher_cache_cold": plain,
                "reference": ref,
            },
            "device": {"kind": cold["device"], "nproc": info["nproc"], "cpu_model": info["model"]},
            "versions": common.versions(),
            "date": common.stamp(),
            "load_avg_before": load0,
            "load_avg_after": common.load_avg(),
        }
    )


if __name__ == "__main__":
    main()
