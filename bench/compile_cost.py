"""Compile cost of one candidate: CPU seconds to trace + lower + compile its init and student-step programs, and to
run one step, with the layers per-layer or scanned (`nas.scan_layers`), at several depths.

    PYTHONPATH=. python bench/compile_cost.py --depths 1,3,6,12

The student programs are the ones `distill` compiles (kdjax.steps), against the packaged MiniLM teacher's output
shapes (or `--teacher`), `--batch-rows` rows of 128 tokens; fp32, random init, hidden-state loss. Each (depth, mode)
compiles fresh in this process (no persistent cache); the first row's step compile includes the one-off teacher
program. The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import time

import common

common.setup_env()


def _cpu(fn):
    c0 = time.process_time()
    out = fn()
    return out, time.process_time() - c0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="")
    p.add_argument("--depths", default="1,3,6,12")
    p.add_argument("--dims", default="384H-6A-1536F", help="H-A-F of every candidate")
    p.add_argument("--batch-rows", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median CPU seconds)")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from kdjax.losses import LossConfig
    from kdjax.optim import OptimConfig
    from kdjax.sharding import make_mesh, replicate
    from kdjax.spec import parse_arch_id
    from kdjax.steps import compile_init, compile_programs, teacher_inputs

    teacher = common.load_teacher(args.teacher)
    mesh, loss = make_mesh(), LossConfig()
    opt = OptimConfig(learning_rate=5e-5, total_steps=100, schedule="constant")
    t_params = replicate(teacher_inputs(teacher.params, loss), mesh)
    shape = (args.batch_rows, 128)
    batch = {k: jnp.ones(shape, jnp.int32) for k in ("input_ids", "attention_mask", "mlm_mask", "labels")}
    rng = jax.random.PRNGKey(0)
    rows = []
    for depth in [int(d) for d in args.depths.split(",")]:
        for scan in (False, True):
            spec = parse_arch_id(f"{depth}L-{args.dims}", teacher.spec)
            (init, _), init_cpu = _cpu(
                lambda spec=spec, scan=scan: compile_init(spec, teacher.spec, opt, loss, mesh, scan, rng, None, None)
            )
            state = init(rng, None, None)
            (programs, _), step_cpu = _cpu(
                lambda spec=spec, scan=scan, state=state: compile_programs(
                    spec, teacher.spec, loss, opt, jnp.float32, mesh, state, t_params, batch, rng, scan
                )
            )
            state, _ = programs.step(state, t_params, batch, rng)  # warm-up
            times = []
            for _ in range(args.steps):
                c0 = time.process_time()
                state, _ = jax.block_until_ready(programs.step(state, t_params, batch, rng))
                times.append(time.process_time() - c0)
            row = {
                "arch": spec.arch_id,
                "scan_layers": scan,
                "init_compile_cpu_s": init_cpu,
                "step_compile_cpu_s": step_cpu,
                "step_cpu_s": float(np.median(times)),
            }
            rows.append(row)
            print(row, flush=True)
    info = common.cpu_info()
    common.print_json(
        {
            "rows": rows,
            "batch_rows": args.batch_rows,
            "device": {"nproc": info["nproc"], "cpu_model": info["model"]},
            "versions": common.versions(),
            "date": common.stamp(),
            "load_avg": common.load_avg(),
        }
    )


if __name__ == "__main__":
    main()
