"""Compile cost of one candidate: CPU seconds to build its init state (on the host: no program since issue 14), to
trace + lower + compile its student-step program, and to run one step, with the layers per-layer or scanned
(`nas.scan_layers`), at several depths, and with AdamW's update per parameter leaf (kdjax's) or over two flat
vectors (`flat`, defined only here: measured, it did not pay; see
docs/performance.md, "Cold search"), or replaced by plain SGD (`sgd`, the bound on what an optimizer change saves).

    PYTHONPATH=. python bench/compile_cost.py --depths 1,3,6,12
    PYTHONPATH=. python bench/compile_cost.py --depths 3,6 --batch-rows 3 --layers per-layer \
        --optimizers per_leaf,flat --repeats 3

The student programs are the ones `distill` compiles (kdjax.steps), against the packaged MiniLM teacher's output
shapes (or `--teacher`), `--batch-rows` rows of 128 tokens; fp32, random init, hidden-state loss. Every row compiles
cold: no persistent cache, and kdjax's and jax's in-process caches emptied, except the teacher's program, compiled
once before the first row and not counted (a row still re-traces it for the student's input shapes, equally in
every row). Rows run repeat by repeat, and within one over depths, layer layouts and
optimizers, so the variants alternate under the same machine load. Each row also records the losses of its steps
(same init and batch for every variant of a shape: equal losses for per_leaf and flat show the same maths). The last
output line is one JSON object, with each (depth, layers, optimizer) cell's median over the repeats.
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


def plain_sgd(base):
    """`base` with plain SGD at its schedule, no clip and no state: not a real optimiser, the lower bound of what any
    change to AdamW's layout could save (the rest of the step's compile is the model's forward and backward)."""
    import dataclasses

    import optax

    from kdjax.optim import OptimConfig

    class PlainSGD(OptimConfig):
        def make(self) -> optax.GradientTransformation:
            return optax.sgd(self.schedule_fn())

    return PlainSGD(**dataclasses.asdict(base))


def flat_adamw(base):
    """`base` (a kdjax OptimConfig) with AdamW over two flat vectors instead of per leaf: `optax.flatten` around
    `adamw` for the decayed leaves and around `adam` for the others (`adam` is `adamw` without the decay term, which
    the mask leaves out for them), after the same global-norm clip. Elementwise, so the same maths."""
    import dataclasses

    import jax
    import optax

    from kdjax.optim import OptimConfig, decay_mask

    def labels(params):
        return jax.tree.map(lambda d: "decay" if d else "no_decay", decay_mask(params))

    class FlatAdamW(OptimConfig):
        # Unequal to a per-leaf OptimConfig with the same fields, so kdjax.steps compiles it separately.
        def make(self) -> optax.GradientTransformation:
            betas = {"b1": 0.9, "b2": 0.999, "eps": 1e-6}
            groups = {
                "decay": optax.flatten(optax.adamw(self.schedule_fn(), **betas, weight_decay=self.weight_decay)),
                "no_decay": optax.flatten(optax.adam(self.schedule_fn(), **betas)),
            }
            tx = optax.partition(groups, labels)
            if self.grad_clip_norm > 0:
                tx = optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), tx)
            return tx

    return FlatAdamW(**dataclasses.asdict(base))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="")
    p.add_argument("--depths", default="1,3,6,12")
    p.add_argument("--dims", default="384H-6A-1536F", help="H-A-F of every candidate")
    p.add_argument("--batch-rows", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median CPU seconds)")
    p.add_argument("--layers", default="per-layer,scanned", help="comma list of per-layer, scanned")
    p.add_argument("--optimizers", default="per_leaf", help="comma list of per_leaf (kdjax's AdamW), flat, sgd")
    p.add_argument("--repeats", type=int, default=1, help="times every row is compiled cold")
    args = p.parse_args(argv)

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    import jax.numpy as jnp
    import numpy as np

    from kdjax import steps as kd_steps
    from kdjax.losses import LossConfig
    from kdjax.optim import OptimConfig
    from kdjax.sharding import make_mesh, replicate
    from kdjax.spec import parse_arch_id
    from kdjax.steps import compile_programs, init_state, teacher_inputs

    layers = args.layers.split(",")
    layouts = args.optimizers.split(",")
    if not set(layers) <= {"per-layer", "scanned"} or not set(layouts) <= {"per_leaf", "flat", "sgd"}:
        p.error("--layers takes per-layer,scanned and --optimizers per_leaf,flat,sgd")
    teacher = common.load_teacher(args.teacher)
    mesh, loss = make_mesh(), LossConfig()
    t_params = replicate(teacher_inputs(teacher.params, loss), mesh)
    shape = (args.batch_rows, 128)
    batch = {k: jnp.ones(shape, jnp.int32) for k in ("input_ids", "attention_mask", "mlm_mask", "labels")}
    rng = jax.random.PRNGKey(0)

    def cold() -> None:
        """Forget every compiled student program (kdjax's and jax's caches); keep the teacher's."""
        for key in [k for k in kd_steps._COMPILED if k[0] != "teacher"]:
            del kd_steps._COMPILED[key]
        jax.clear_caches()

    # The teacher's program once, outside every row: each row then times only its own student programs.
    spec0 = parse_arch_id(f"1L-{args.dims}", teacher.spec)
    opt0 = OptimConfig(learning_rate=5e-5, total_steps=100, schedule="constant")
    state0 = replicate(init_state(rng, spec0, teacher.spec, opt0, loss), mesh)
    compile_programs(spec0, teacher.spec, loss, opt0, jnp.float32, mesh, state0, t_params, batch, rng)
    rows = []
    grid = [
        (depth, scan, layout)
        for depth in [int(d) for d in args.depths.split(",")]
        for scan in [m == "scanned" for m in layers]
        for layout in layouts
    ]
    for repeat in range(args.repeats):
        for depth, scan, layout in grid:
            cold()
            opt = OptimConfig(learning_rate=5e-5, total_steps=100, schedule="constant")
            opt = {"flat": flat_adamw, "sgd": plain_sgd}.get(layout, lambda o: o)(opt)
            spec = parse_arch_id(f"{depth}L-{args.dims}", teacher.spec)
            state, init_cpu = _cpu(
                lambda spec=spec, scan=scan, opt=opt: replicate(
                    init_state(rng, spec, teacher.spec, opt, loss, scan_layers=scan), mesh
                )
            )
            (programs, _), step_cpu = _cpu(
                lambda spec=spec, scan=scan, state=state, opt=opt: compile_programs(
                    spec, teacher.spec, loss, opt, jnp.float32, mesh, state, t_params, batch, rng, scan
                )
            )
            state, metrics = programs.step(state, t_params, batch, rng)  # warm-up
            losses, times = [float(metrics["loss"])], []
            for _ in range(args.steps):
                c0 = time.process_time()
                state, metrics = jax.block_until_ready(programs.step(state, t_params, batch, rng))
                times.append(time.process_time() - c0)
                losses.append(float(metrics["loss"]))
            row = {
                "arch": spec.arch_id,
                "depth": depth,
                "scan_layers": scan,
                "optimizer_layout": layout,
                "repeat": repeat,
                "init_cpu_s": init_cpu,
                "step_compile_cpu_s": step_cpu,
                "step_cpu_s": float(np.median(times)),
                # Same init and batch in every row of a shape: the layouts must give the same losses.
                "losses": losses,
            }
            rows.append(row)
            print(row, flush=True)
    keys = ("init_cpu_s", "step_compile_cpu_s", "step_cpu_s")
    medians = []
    for cell in grid:
        mine = [r for r in rows if (r["depth"], r["scan_layers"], r["optimizer_layout"]) == cell]
        medians.append({**{k: mine[0][k] for k in ("arch", "scan_layers", "optimizer_layout")}, "repeats": len(mine)})
        medians[-1].update({k: float(np.median([r[k] for r in mine])) for k in keys})
    common.print_json(
        {
            "rows": rows,
            "medians": medians,
            "batch_rows": args.batch_rows,
            **common.machine_facts(),
        }
    )


if __name__ == "__main__":
    main()
