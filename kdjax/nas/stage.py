"""The `nas` stage: derive the space, run the configured strategy, write history.jsonl and top_k.json.

Workdir: `nas/history.jsonl` (every evaluated candidate; also the evaluation cache), `nas/latency.json` (the latency
model or teacher timing the reward reads, pinned at the first start), `nas/controller/` (LSTM controller
checkpoints), `nas/optuna.db` (default Optuna storage),
`nas/candidates/<arch_id>/hf` (mini-KD students; only the top-k are kept at the end), `nas/top_k.json`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable

from kdjax import plan
from kdjax.checkpoint import Checkpointer
from kdjax.config.settings import NasSettings
from kdjax.context import RunContext
from kdjax.nas import controller, optuna_search, random_search, topk
from kdjax.nas.history import History
from kdjax.nas.minikd import CandidateEvaluator, keep_only, proxy_batches
from kdjax.search_space import SearchSpace
from kdjax.spec import ArchSpec
from kdjax.steps import TeacherOutputCache

log = logging.getLogger(__name__)


# A strategy runner gets the space, the evaluate function, `prepare(spec)` (compile a candidate's programs ahead, on a
# thread), the search settings, the run's seed, and the nas folder.
Runner = Callable[[SearchSpace, Callable[..., dict], Callable[[ArchSpec], None], NasSettings, int, str], None]


def _run_lstm(space: SearchSpace, evaluate, prepare, nas: NasSettings, seed: int, nas_dir: str) -> None:
    # A resumed controller must have been trained on the same space, candidates per episode, settings and seed.
    settings = {
        "search space (teacher and nas.space)": f"{space.values} max_params={space.max_params} {space.head_dims}"
        + (f" max_latency_ms={space.max_latency_ms:.6g}" if space.latency_model is not None else ""),
        "nas.candidates_per_episode": nas.candidates_per_episode,
        "nas.controller": dataclasses.asdict(nas.controller),
        "seed": seed,
    }
    ckpt = Checkpointer(os.path.join(nas_dir, "controller"), keep=2, settings=settings)
    try:
        controller.search(
            space,
            evaluate,
            num_episodes=nas.num_episodes,
            candidates_per_episode=nas.candidates_per_episode,
            seed=seed,
            cfg=nas.controller,
            checkpointer=ckpt,
            prepare=prepare,
        )
    finally:
        ckpt.close()


def _run_optuna(space: SearchSpace, evaluate, prepare, nas: NasSettings, seed: int, nas_dir: str) -> None:
    # `prepare` gets the next trial during TPE's random start-up trials only: later ones are drawn from the results.
    optuna_search.search(
        space,
        evaluate,
        num_trials=nas.num_trials,
        seed=seed,
        storage=nas.storage or f"sqlite:///{os.path.join(nas_dir, 'optuna.db')}",
        study_name="kdjax-nas-mo" if nas.multi_objective else "kdjax-nas",
        prune=nas.prune,
        multi_objective=nas.multi_objective,
        heartbeat_interval=nas.heartbeat_interval_s,
        prepare=prepare,
    )


def _run_random(space: SearchSpace, evaluate, prepare, nas: NasSettings, seed: int, nas_dir: str) -> None:
    random_search.search(space, evaluate, num_trials=nas.num_trials, seed=seed, prepare=prepare)


# Explicit registry: nas.strategy -> runner(space, evaluate, prepare, nas, seed, nas_dir).
STRATEGIES: dict[str, Runner] = {"lstm": _run_lstm, "optuna": _run_optuna, "random": _run_random}


def evaluator(ctx: RunContext, history: History, export_root: str, progress: bool = True) -> CandidateEvaluator:
    """The candidate evaluator of this run: its teacher, proxy batches, reward latencies, settings and teacher cache."""
    s = ctx.settings
    # Every candidate sees the same batches: with a cache the teacher runs once per step for the whole search.
    mb = s.nas.teacher_cache_mb
    return CandidateEvaluator(
        ctx.teacher,
        proxy_batches(ctx.rows, ctx.global_batch, ctx.masking, s.seed, s.nas),
        ctx.search_latency(),
        nas=s.nas,
        kd=s.kd,
        seed=s.seed,
        dtype=ctx.dtype,
        mesh=ctx.mesh,
        seq_len=s.data.max_seq_len,
        teacher_cache=TeacherOutputCache(mb * 2**20) if mb > 0 else None,
        strategy=s.nas.strategy,
        history=history,
        export_root=export_root,
        progress=progress,
    )


def run(ctx: RunContext) -> dict:
    from tqdm.auto import tqdm

    nas = ctx.settings.nas
    strategy = nas.strategy
    nas_dir = ctx.workdir.subdir("nas")
    history = History(os.path.join(nas_dir, "history.jsonl"))
    export_root = os.path.join(nas_dir, "candidates")
    evaluate = evaluator(ctx, history, export_root)
    space = ctx.search_space(evaluate.latency)  # the evaluator's latencies: the model is read once
    print(space.table())
    print(
        f"nas: {strategy}, {nas.budget} candidates, mini-KD {evaluate.epochs} epochs x "
        f"{evaluate.batches.steps_per_epoch} steps on {len(evaluate.batches.rows)} proxy rows; "
        f"teacher {evaluate.teacher_latency_ms:.2f} ms, {evaluate.latency.describe()}; "
        f"{len(history)} already evaluated"
    )
    bar = tqdm(total=nas.budget, desc=f"nas {strategy}", dynamic_ncols=True)
    best = [float("-inf")]
    budget, seen, compute, t0 = nas.budget, [0], [0.0], time.perf_counter()

    def tracked(spec, **kw) -> dict:
        rec = evaluate(spec, **kw)
        best[0] = max(best[0], rec["reward"]) if not rec.get("pruned") else best[0]
        seen[0] += 1
        if not rec.get("cached"):  # training time without compilation: the rate later stages are extrapolated at
            compute[0] += max(0.0, (rec.get("wall_s") or 0.0) - (rec.get("compile_s") or 0.0))
        if evaluate.new_evaluations:  # cached candidates cost nothing: time only the new ones
            elapsed = time.perf_counter() - t0
            plan.timed("nas", seen[0] / budget, evaluate.new_evaluations / budget, elapsed, compute[0] or None)
        bar.update(1)
        bar.set_postfix(best=f"{best[0]:.4f}", last=spec.arch_id, new=evaluate.new_evaluations)
        return rec

    try:
        STRATEGIES[strategy](space, tracked, evaluate.prepare, nas, ctx.settings.seed, nas_dir)
    finally:
        evaluate.close()
        bar.close()

    history.refresh()
    chosen = topk.choose(history.rows, nas)
    topk.write_top_k(nas_dir, strategy, chosen)
    removed = keep_only(export_root, {r["arch_id"] for r in chosen})
    print(("Pareto front" if nas.multi_objective and strategy == "optuna" else "top-k") + ":")
    print(topk.table(chosen))
    log.info("nas: %d candidates evaluated in total, %d exports removed", len(history), len(removed))
    if evaluate.teacher_cache is not None:
        st = evaluate.teacher_cache.stats()
        log.info(
            "nas: teacher outputs of %d steps reused %d times (%.0f MiB; %d teacher forwards run)",
            st["cached_steps"],
            st["hits"],
            st["mb"],
            st["misses"],
        )
    return {"strategy": strategy, "evaluated": len(history), "best": chosen[0]["arch_id"] if chosen else None}
