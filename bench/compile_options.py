"""XLA compiler options against one candidate's compile and step cost: does a cheaper compile pay for itself?

For each `--arch`, each `XLA_FLAGS` value (`--xla-flags`, separated by `;`) and each option set (`--options`, JSON
objects separated by `;`, `{}` = XLA's defaults), a fresh child process lowers kdjax's student-step program
(kdjax.steps, the one `distill` compiles) for `--batch-rows` rows of 128 tokens of the packaged MiniLM teacher's
inputs, compiles it with `Lowered.compile(compiler_options=...)`, then times `--steps` steps. No persistent cache.
Rows alternate by repeat so variants see the same machine load; CPU seconds are `time.process_time()` of the child
(all its threads). The last output line is one JSON object.

    PYTHONPATH=. python bench/compile_options.py --repeats 2
    PYTHONPATH=. python bench/compile_options.py --options '{}' --xla-flags ';--xla_cpu_use_fusion_emitters=false'

A set XLA does not know (or any failed child) gives a row with its `error` and the sweep goes on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import common

common.setup_env()

DEFAULT_OPTIONS = (
    '{};{"xla_backend_optimization_level": 0};{"xla_backend_optimization_level": 1};'
    '{"xla_llvm_disable_expensive_passes": true};{"xla_cpu_parallel_codegen_split_count": 1}'
)


def one(arch: str, options: dict, batch_rows: int, steps: int, teacher_name: str) -> dict:
    """Lower, compile and run one student program in this process."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_compilation_cache", False)
    from kdjax import steps as kd_steps
    from kdjax.losses import LossConfig
    from kdjax.optim import OptimConfig
    from kdjax.sharding import make_mesh, replicate
    from kdjax.spec import parse_arch_id

    teacher = common.load_teacher(teacher_name)
    spec = parse_arch_id(arch, teacher.spec)
    mesh, loss = make_mesh(), LossConfig()
    opt = OptimConfig(learning_rate=5e-5, total_steps=100, schedule="constant")
    rng = jax.random.PRNGKey(0)
    batch = {k: jnp.ones((batch_rows, 128), jnp.int32) for k in ("input_ids", "attention_mask", "mlm_mask", "labels")}
    t_params = replicate(kd_steps.teacher_inputs(teacher.params, loss), mesh)
    state = replicate(kd_steps.init_state(rng, spec, teacher.spec, opt, loss), mesh)
    t_out = kd_steps._jitted_teacher(teacher.spec, loss, "float32", mesh)(t_params, batch)
    settings = kd_steps.StepSettings(spec, teacher.spec, loss, opt, "float32", False, 0.0)
    jitted = kd_steps._jitted_student(settings, mesh)
    c0, t0 = time.process_time(), time.perf_counter()
    lowered = jitted.lower(state, t_out, batch, rng)
    t1 = time.perf_counter()
    program = lowered.compile(compiler_options=options) if options else lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
    state, metrics = jax.block_until_ready(program(state, t_out, batch, rng))  # warm-up
    c3, t3 = time.process_time(), time.perf_counter()
    for i in range(steps):
        state, metrics = program(state, t_out, batch, jax.random.fold_in(rng, i))
    jax.block_until_ready(metrics)
    t4, c4 = time.perf_counter(), time.process_time()
    return {
        "arch": spec.arch_id,
        "options": options,
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "lower_compile_cpu_s": c2 - c0,
        "step_s": (t4 - t3) / steps,
        "step_cpu_s": (c4 - c3) / steps,
        "loss": float(metrics["loss"]),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="")
    p.add_argument("--archs", default="2L-256H-4A-1024F-relu,4L-384H-12A-768F-silu,6L-384H-12A-1536F")
    p.add_argument("--options", default=DEFAULT_OPTIONS, help="';'-separated JSON objects of XLA compiler options")
    p.add_argument(
        "--xla-flags",
        default="",
        help="';'-separated XLA_FLAGS values, each crossed with --options (debug flags that are not compile options)",
    )
    p.add_argument("--batch-rows", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--part", default="", help=argparse.SUPPRESS)  # a child process: one [arch, options] as JSON
    args = p.parse_args(argv)
    if args.part:
        arch, options = json.loads(args.part)
        print(json.dumps(one(arch, options, args.batch_rows, args.steps, args.teacher)))
        return
    option_sets = [json.loads(o) for o in args.options.split(";")]
    flag_sets = args.xla_flags.split(";")
    child = ["--batch-rows", str(args.batch_rows), "--steps", str(args.steps), "--teacher", args.teacher]
    rows = []
    grid = itertools.product(range(args.repeats), args.archs.split(","), flag_sets, option_sets)
    for repeat, arch, flags, options in grid:
        # Each value is the child's whole XLA_FLAGS ('' = none, whatever this shell exports), so the defaults row
        # is XLA's defaults. A failed child (an option or flag this XLA does not know) is a row with its error.
        row = common.try_part(__file__, json.dumps([arch, options]), child, {"XLA_FLAGS": flags})
        rows.append({"arch": arch, "options": options, **row, "xla_flags": flags, "repeat": repeat})
        print(rows[-1], flush=True)
    common.print_json(
        {
            "rows": rows,
            "batch_rows": args.batch_rows,
            **common.machine_facts(),
        }
    )


if __name__ == "__main__":
    main()
