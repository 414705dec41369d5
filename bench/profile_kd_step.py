"""Where kdjax's KD step spends its time on this machine: a breakdown and a few what-ifs, each timed in isolation.

Parts: host batch prep (numpy masking), teacher forward, student forward+backward (with the loss), AdamW update,
and the whole compiled step as `kdjax.steps` builds it. What-ifs (prototyped here by patching this process only):
manual softmax attention instead of `jax.nn.dot_product_attention`, bf16 compute, other batch sizes. XLA flags must
be set before jax starts, so compare them by running this script again with `XLA_FLAGS=...` and `--parts step`.

    python bench/profile_kd_step.py --parts host,teacher,student,opt,step --batch-rows 8
    python bench/profile_kd_step.py --parts step --attention manual
    XLA_FLAGS=--xla_cpu_use_onednn=true python bench/profile_kd_step.py --parts step

The last output line is one JSON object with the median milliseconds of every part.
"""

from __future__ import annotations

import argparse
import time

import common

common.setup_env()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="")
    p.add_argument("--student", default="3L-384H-6A-1536F")
    p.add_argument("--corpus", default="")
    p.add_argument("--batch-rows", default="8", help="comma list of rows per step to time the whole step at")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--parts", default="host,teacher,student,opt,step")
    p.add_argument("--attention", choices=("fused", "manual"), default="fused")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument(
        "--step-impl",
        choices=("split", "fused"),
        default="split",
        help="whole step as kdjax.train.distill runs it (split: teacher and student programs) or as one program",
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--compilation-cache", default="", help="jax persistent compilation cache folder (default off)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _manual_attention(q, k, v, bias=None, mask=None, **_):
    """softmax(QK^T/sqrt(d)) V written out, [B, T, N, D] layout as jax.nn.dot_product_attention."""
    import jax
    import jax.numpy as jnp

    scores = jnp.einsum("btnd,bsnd->bnts", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bsnd->btnd", probs, v)


CPU_S: dict = {}


def _time(fn, reps: int, name: str = "") -> tuple[float, float, float]:
    """(first call incl. compile, median, min) wall seconds of `fn()` (which blocks); CPU seconds go to CPU_S."""
    import numpy as np

    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    ts, cs = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    if name:
        CPU_S[name] = float(np.median(cs))
    return first, float(np.median(ts)), float(min(ts))


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax

    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if args.attention == "manual":
        jax.nn.dot_product_attention = _manual_attention  # this process only: kdjax.models looks it up per call
    import jax.numpy as jnp

    from kdjax.data.batches import Batches, MaskingSpec
    from kdjax.data.corpus import pack_rows
    from kdjax.losses import LossConfig, distillation_loss
    from kdjax.models import Encoder
    from kdjax.optim import OptimConfig
    from kdjax.sharding import make_mesh, replicate
    from kdjax.spec import parse_arch_id
    from kdjax.steps import (
        StepSettings,
        compile_programs,
        init_state,
        jitted_fused_step,
        teacher_forward,
        teacher_inputs,
    )

    teacher = common.load_teacher(args.teacher)
    tok = teacher.tokenizer
    sizes = [int(b) for b in args.batch_rows.split(",")]
    sentences, source = common.read_sentences(args.corpus or None, max(sizes) * 24, args.seed)
    rows = pack_rows(
        tok(sentences, add_special_tokens=False)["input_ids"],
        args.seq_len,
        tok.cls_token_id,
        tok.sep_token_id,
        tok.pad_token_id,
    )
    student = parse_arch_id(args.student, teacher.spec)
    loss_cfg, dtype = LossConfig(), jnp.dtype(args.dtype)
    opt = OptimConfig(learning_rate=5e-5, total_steps=1000, schedule="constant")
    mesh = make_mesh()
    t_params = teacher_inputs(teacher.params, loss_cfg)
    state = replicate(init_state(jax.random.PRNGKey(0), student, teacher.spec, opt, loss_cfg), mesh)
    parts = set(args.parts.split(","))
    out: dict = {"corpus": source, "student": student.arch_id, "teacher": teacher.spec.arch_id}
    out |= {
        "attention": args.attention,
        "dtype": args.dtype,
        "step_impl": args.step_impl,
        "non_pad_fraction": float((rows != 0).mean()),
    }
    masking = MaskingSpec.from_tokenizer(tok)
    b0 = sizes[0]
    batches = Batches(rows, b0, masking, args.seed)
    host = batches.get(0)
    batch = {k: jnp.asarray(v) for k, v in host.items()}

    if "host" in parts:
        _, med, _ = _time(lambda: batches.num_tokens(batches.get(1)), args.reps * 4, "host")
        out["host_prep_ms"] = med * 1e3

    s_model = Encoder(student, dtype=dtype)

    @jax.jit
    def teacher_fwd(tp, b):
        return teacher_forward(tp, b, teacher=teacher.spec, loss_cfg=loss_cfg, dtype=dtype)

    t_out = teacher_fwd(t_params, batch)
    if "teacher" in parts:
        first, med, best = _time(lambda: jax.block_until_ready(teacher_fwd(t_params, batch)), args.reps, "teacher")
        out["teacher_fwd_ms"], out["teacher_fwd_compile_s"] = med * 1e3, first - med

    @jax.jit
    def student_grad(params, b, t):
        def loss_fn(p):
            s_out = s_model.apply({"params": p["student"]}, b["input_ids"], b["attention_mask"])
            return distillation_loss(s_out, t, p["projection"], b, loss_cfg, 1)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    if "student" in parts:
        first, med, _ = _time(
            lambda: jax.block_until_ready(student_grad(state.params, batch, t_out)), args.reps, "student"
        )
        out["student_fwd_bwd_ms"], out["student_compile_s"] = med * 1e3, first - med

    if "opt" in parts:
        tx = opt.make()

        @jax.jit
        def opt_update(params, opt_state, grads):
            updates, new_state = tx.update(grads, opt_state, params)
            return jax.tree.map(lambda p, u: p + u, params, updates), new_state

        grads = jax.tree.map(jnp.ones_like, state.params)
        _, med, _ = _time(
            lambda: jax.block_until_ready(opt_update(state.params, state.opt_state, grads)), args.reps, "opt"
        )
        out["adamw_update_ms"] = med * 1e3
        n_emb = sum(x.size for x in jax.tree.leaves(state.params["student"]["embeddings"]))
        out["student_params"] = sum(x.size for x in jax.tree.leaves(state.params))
        out["student_embedding_params"] = n_emb

    if "step" in parts:
        t_spec, seq = teacher.spec, args.seq_len
        proj = 2 * student.hidden_size * 2 * t_spec.hidden_size * student.num_layers
        flops_tok = t_spec.flops_per_token(seq) + 3 * student.flops_per_token(seq) + 3 * proj
        out["step"] = {}
        for b in sizes:
            bb = Batches(rows, b, masking, args.seed)
            hb = bb.get(0)
            dev_batch = {k: jnp.asarray(v) for k, v in hb.items()}
            rng = jax.random.PRNGKey(1)
            t0 = time.perf_counter()
            if args.step_impl == "split":  # what distill runs: teacher program + student program
                programs, _ = compile_programs(
                    student, t_spec, loss_cfg, opt, dtype, mesh, state, t_params, dev_batch, rng
                )
                compiled = programs.step
            else:
                fn = jitted_fused_step(StepSettings(student, t_spec, loss_cfg, opt, jnp.dtype(dtype).name), mesh)
                compiled = fn.lower(state, t_params, dev_batch, rng).compile()
            compile_s = time.perf_counter() - t0
            st = jax.tree.map(jnp.copy, state)

            def run(compiled=compiled, dev_batch=dev_batch, rng=rng):
                nonlocal st
                st, m = compiled(st, t_params, dev_batch, rng)
                jax.block_until_ready(m)

            _, med, best = _time(run, args.reps, f"step{b}")
            out["step"][b] = {
                "compile_s": compile_s,
                "step_ms_median": med * 1e3,
                "step_ms_min": best * 1e3,
                "padded_tokens_per_s": b * seq / med,
                "corpus_tokens_per_s": float(hb["attention_mask"].sum()) / med,
                "gflops_median": flops_tok * b * seq / med / 1e9,
            }
            print(
                f"rows={b}: step {med * 1e3:.0f} ms (min {best * 1e3:.0f}), compile {compile_s:.1f} s, "
                f"{flops_tok * b * seq / med / 1e9:.1f} GFLOP/s",
                flush=True,
            )
    out["cpu_s_median"] = CPU_S
    out["load_avg"] = common.load_avg()
    out["date"] = common.stamp()
    common.print_json(out)


if __name__ == "__main__":
    main()
