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

from kdjax import plan
from kdjax.checkpoint import Checkpointer
from kdjax.context import RunContext
from kdjax.nas import controller, optuna_search, random_search, topk
from kdjax.nas.history import History
from kdjax.nas.minikd import CandidateEvaluator, keep_only
from kdjax.search_space import SearchSpace

log = logging.getLogger(__name__)


def _budget(nas) -> int:
    if nas.strategy == "lstm":
        return int(nas.num_episodes) * int(nas.candidates_per_episode)
    return int(nas.num_trials)


def _run_lstm(ctx: RunContext, space: SearchSpace, evaluate) -> None:
    nas = ctx.config.nas
    cfg = controller.ControllerConfig.from_config(nas.controller)
    # A resumed controller must have been trained on the same space, candidates per episode, settings and seed.
    settings = {
        "search space (teacher and nas.space)": f"{space.values} max_params={space.max_params} {space.head_dims}",
        "nas.candidates_per_episode": int(nas.candidates_per_episode),
        "nas.controller": dataclasses.asdict(cfg),
        "seed": int(ctx.config.seed),
    }
    ckpt = Checkpointer(ctx.workdir.path("nas", "controller"), keep=2, settings=settings)
    try:
        controller.search(
            space,
            evaluate,
            num_episodes=int(nas.num_episodes),
            candidates_per_episode=int(nas.candidates_per_episode),
            seed=int(ctx.config.seed),
            cfg=cfg,
            checkpointer=ckpt,
        )
    finally:
        ckpt.close()


def _run_optuna(ctx: RunContext, space: SearchSpace, evaluate) -> None:
    nas = ctx.config.nas
    storage = str(nas.storage) or f"sqlite:///{ctx.workdir.path('nas', 'optuna.db')}"
    optuna_search.search(
        space,
        evaluate,
        num_trials=int(nas.num_trials),
        seed=int(ctx.config.seed),
        storage=storage,
        study_name="kdjax-nas-mo" if nas.multi_objective else "kdjax-nas",
        prune=bool(nas.prune),
        multi_objective=bool(nas.multi_objective),
        heartbeat_interval=int(nas.get("heartbeat_interval_s", 60)),
    )


def _run_random(ctx: RunContext, space: SearchSpace, evaluate) -> None:
    random_search.search(space, evaluate, num_trials=int(ctx.config.nas.num_trials), seed=int(ctx.config.seed))


# Explicit registry: nas.strategy -> runner(ctx, space, evaluate).
STRATEGIES = {"lstm": _run_lstm, "optuna": _run_optuna, "random": _run_random}


def run(ctx: RunContext) -> dict:
    from tqdm.auto import tqdm

    nas = ctx.config.nas
    strategy = str(nas.strategy)
    space = SearchSpace.from_teacher(ctx.teacher.spec, nas.space)
    print(space.table())
    nas_dir = ctx.workdir.subdir("nas")
    history = History(os.path.join(nas_dir, "history.jsonl"))
    export_root = os.path.join(nas_dir, "candidates")
    evaluator = CandidateEvaluator(ctx, strategy=strategy, history=history, export_root=export_root)
    print(
        f"nas: {strategy}, {_budget(nas)} candidates, mini-KD {evaluator.epochs} epochs x "
        f"{evaluator.batches.steps_per_epoch} steps on {len(evaluator.batches.rows)} proxy rows; "
        f"teacher {evaluator.teacher_latency_ms:.2f} ms, {evaluator.latency.describe()}; "
        f"{len(history)} already evaluated"
    )
    bar = tqdm(total=_budget(nas), desc=f"nas {strategy}", dynamic_ncols=True)
    best = [float("-inf")]
    budget, seen, compute, t0 = _budget(nas), [0], [0.0], time.perf_counter()

    def tracked(spec, **kw) -> dict:
        rec = evaluator(spec, **kw)
        best[0] = max(best[0], rec["reward"]) if not rec.get("pruned") else best[0]
        seen[0] += 1
        if not rec.get("cached"):  # training time without compilation: the rate later stages are extrapolated at
            compute[0] += max(0.0, (rec.get("wall_s") or 0.0) - (rec.get("compile_s") or 0.0))
        if evaluator.new_evaluations:  # cached candidates cost nothing: time only the new ones
            elapsed = time.perf_counter() - t0
            plan.timed("nas", seen[0] / budget, evaluator.new_evaluations / budget, elapsed, compute[0] or None)
        bar.update(1)
        bar.set_postfix(best=f"{best[0]:.4f}", last=spec.arch_id, new=evaluator.new_evaluations)
        return rec

    try:
        STRATEGIES[strategy](ctx, space, tracked)
    finally:
        bar.close()

    history.refresh()
    chosen = topk.choose(history.rows, nas)
    topk.write_top_k(nas_dir, strategy, chosen)
    removed = keep_only(export_root, {r["arch_id"] for r in chosen})
    print(("Pareto front" if nas.multi_objective and strategy == "optuna" else "top-k") + ":")
    print(topk.table(chosen))
    log.info("nas: %d candidates evaluated in total, %d exports removed", len(history), len(removed))
    if evaluator.teacher_cache is not None:
        st = evaluator.teacher_cache.stats()
        log.info(
            "nas: teacher outputs of %d steps reused %d times (%.0f MiB; %d teacher forwards run)",
            st["cached_steps"],
            st["hits"],
            st["mb"],
            st["misses"],
        )
    return {"strategy": strategy, "evaluated": len(history), "best": chosen[0]["arch_id"] if chosen else None}
