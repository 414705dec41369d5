"""Model FLOPs utilisation of kdjax's KD step on an accelerator: BERT-base-shaped teacher, 6L-768H student, seq 128.

Weights are random (only shapes matter for throughput): the teacher is `ArchSpec(12, 768, 12, 3072)` with kdjax
`Encoder` params, the student `ArchSpec(6, 768, 12, 3072)`; compute in bf16 with fp32 master weights, packed rows
with no padding. MFU = model FLOPs (teacher forward + 3 x student forward + 3 x projection, no vocab logits) / time /
the device's dense bf16 peak.

    python bench/gpu_mfu.py                    # on a GPU
    python bench/gpu_mfu.py --small            # tiny shapes, runs anywhere (CPU smoke check)
    python bench/gpu_mfu.py --compare-fp32     # also run the same steps in fp32: bf16 vs fp32 loss agreement

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import time

import common

# Not common.setup_env(): this one must see the accelerator when there is one.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# Dense (no sparsity) bf16 peaks from the vendors' datasheets, FLOP/s, by substring of `device_kind`.
BF16_PEAKS = (
    ("H200", 989e12),
    ("H100", 989e12),  # SXM; the PCIe card is 756e12
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny teacher/student/batch (CPU check)")
    p.add_argument("--batch-rows", type=int, default=256, help="rows of --seq-len tokens per step")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--compare-fp32", action="store_true", help="repeat in fp32; report the loss agreement")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from kdjax.losses import LossConfig
    from kdjax.optim import OptimConfig
    from kdjax.sharding import make_mesh, replicate, shard_batch
    from kdjax.spec import ArchSpec
    from kdjax.steps import compile_programs, init_state, init_student

    if args.small:
        teacher = ArchSpec(2, 64, 2, 128, vocab_size=1000)
        student = ArchSpec(1, 64, 2, 128, vocab_size=1000)
        args.batch_rows, args.seq_len, args.steps = min(args.batch_rows, 4), min(args.seq_len, 32), min(args.steps, 3)
    else:
        teacher = ArchSpec(12, 768, 12, 3072)
        student = ArchSpec(6, 768, 12, 3072)
    loss_cfg = LossConfig()
    opt = OptimConfig(learning_rate=5e-5, total_steps=args.steps + 1, schedule="constant")
    mesh = make_mesh()

    def train(dtype_name: str) -> tuple[float, float, list[float]]:
        """(seconds per step, compile seconds, losses of every step): same init and batch for every dtype."""
        root = jax.random.PRNGKey(0)
        t_params = replicate({"encoder": init_student(jax.random.fold_in(root, 1), teacher)}, mesh)
        state = replicate(init_state(jax.random.fold_in(root, 2), student, teacher, opt, loss_cfg), mesh)
        rng = np.random.default_rng(0)
        ids = rng.integers(5, teacher.vocab_size, (args.batch_rows, args.seq_len), dtype=np.int32)
        host = {"input_ids": ids, "attention_mask": np.ones_like(ids), "mlm_mask": np.zeros_like(ids), "labels": ids}
        batch = shard_batch(host, mesh)
        key = jax.random.PRNGKey(1)
        dtype = jnp.dtype(dtype_name)
        programs, compile_s = compile_programs(
            student, teacher, loss_cfg, opt, dtype, mesh, state, t_params, batch, key
        )
        fn = programs.step
        state, m = fn(state, t_params, batch, key)  # warm-up
        losses = [m["loss"]]
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, m = fn(state, t_params, batch, key)
            losses.append(m["loss"])
        jax.block_until_ready(m)
        return (time.perf_counter() - t0) / args.steps, compile_s, [float(x) for x in losses]

    step_s, compile_s, losses = train(args.dtype)
    agreement = None
    if args.compare_fp32 and args.dtype != "float32":
        fp32_step_s, _, fp32_losses = train("float32")
        rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, fp32_losses)]
        agreement = {
            "fp32_step_ms": fp32_step_s * 1e3,
            "bf16_speedup_over_fp32": fp32_step_s / step_s,
            "first_loss": [losses[0], fp32_losses[0]],
            "last_loss": [losses[-1], fp32_losses[-1]],
            "max_rel_loss_diff": max(rel),
        }
    seq = args.seq_len
    proj = 2 * student.hidden_size * 2 * teacher.hidden_size * student.num_layers
    flops_tok = teacher.flops_per_token(seq) + 3 * student.flops_per_token(seq) + 3 * proj
    tok_s = args.batch_rows * seq / step_s
    dev = jax.devices()[0]
    kind = str(dev.device_kind)
    peak = next((p for name, p in BF16_PEAKS if name in kind), None) if dev.platform == "gpu" else None
    achieved = flops_tok * tok_s
    info = common.cpu_info()
    common.print_json(
        {
            "device": {"platform": dev.platform, "kind": kind, "count": jax.device_count(), "cpu_model": info["model"]},
            "teacher": teacher.arch_id,
            "student": student.arch_id,
            "dtype": args.dtype,
            "batch_rows": args.batch_rows,
            "seq_len": seq,
            "step_ms": step_s * 1e3,
            "tokens_per_s": tok_s,
            "compile_s": compile_s,
            "flops_per_token": flops_tok,
            "achieved_flops": achieved,
            "peak_bf16_flops": peak,
            "mfu": achieved / peak if peak else None,
            "final_loss": losses[-1],
            "bf16_vs_fp32": agreement,
            "small": args.small,
            "versions": common.versions(),
            "date": common.stamp(),
        }
    )


if __name__ == "__main__":
    main()
