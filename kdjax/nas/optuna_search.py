"""Optuna search over the same space: define-by-run, seeded TPE (or NSGA-II for loss x latency), resumable storage.

Each trial suggests the five dimensions in the space's order; a suggestion that has no valid completion given the
earlier ones (heads not dividing hidden, params over the cap) is mapped to the nearest allowed value, deterministically,
and the architecture actually trained is stored as the trial's `arch_id` user attribute.

Resuming and several workers: only COMPLETE and PRUNED trials count towards `num_trials`; the loop runs one trial at a
time until that many exist, with `MaxTrialsCallback` stopping workers that share one study. Before each trial the
sampler is re-created with a seed derived from (seed, number of finished trials), so a resumed single-process study
samples exactly what an unstopped one would have. With an RDB URL the storage gets heartbeats, and a trial whose
worker died is retried by `RetryHeartbeatStaleTrialCallback`; when that worker was a process on this host that is
gone (say a SIGKILLed single process, now resumed), its trial is failed and retried at once instead of after the
heartbeat grace period. Workers that share a study finish exactly `num_trials`: a trial whose number makes it one
too many (two workers raced for the last slot) stops before training and is recorded as FAIL with user attribute
`surplus`; a worker with no open slot waits for the running trials or their heartbeats.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable

import numpy as np
import optuna
import sqlalchemy

from kdjax.search_space import DIMENSIONS, SHORT, SearchSpace
from kdjax.spec import ArchSpec

log = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
ACTIVE = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
RDB_PREFIXES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


class SurplusTrial(Exception):
    """Raised inside a trial that another worker's concurrent trial made one too many; it trains nothing."""


def make_storage(url: str | None, heartbeat_interval: int = 60):
    """RDB storage with heartbeats and retry of dead workers' trials; None = in memory (tests).

    A trial whose worker sent no heartbeat for 3 x `heartbeat_interval` seconds is failed and re-queued.
    """
    if not url:
        return None
    if url.split(":", 1)[0].split("+", 1)[0] in RDB_PREFIXES:
        # The heartbeat API (optuna >= 4.9; `failed_trial_callback` / RetryFailedTrialCallback go away in v6) is
        # marked experimental; its warning would be printed on every run without anything for the user to do.
        sqlite = url.startswith("sqlite")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                # SQLite: no implicit transactions (they begin as below), and a long wait for the lock: a heartbeat
                # or trial write queued behind other workers' on a loaded machine must not fail as "locked".
                engine_kwargs={"connect_args": {"isolation_level": None, "timeout": 120}} if sqlite else None,
                heartbeat_interval=int(heartbeat_interval),
                grace_period=3 * int(heartbeat_interval),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
        if sqlite:
            # Optuna checks a trial's state, then writes it, in one transaction whose read takes `SELECT ... FOR
            # UPDATE`. SQLite ignores FOR UPDATE, and Python's sqlite3 begins a transaction only at the write, so two
            # workers could both fail the same dead worker's trial (and both re-queue it) or both take the same
            # waiting trial. `BEGIN IMMEDIATE` takes the database's write lock when the transaction starts, which
            # makes each read-check-write whole (the locking PostgreSQL and MySQL do per row).
            sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return storage
    return url


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker (user attributes `host`, `pid`) was a process on this host that is gone.

    The heartbeat would fail them only after its grace period, and meanwhile a resumed single process would fill the
    orphan's slot with the next sample and then wait; failed here, the storage's failed-trial callback re-queues the
    orphan's parameters at once, exactly as after a stale heartbeat. Returns the failed trials' numbers.
    """
    storage = study._storage  # what optuna.storages.fail_stale_trials uses too
    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        # A retried copy inherits its original's user attributes, the dead worker's pid among them; until the worker
        # that took the copy writes its own (`owner_trial` = its number), it is not an orphan.
        if t.user_attrs.get("owner_trial") != t.number:
            continue
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or pid == os.getpid() or _alive(pid):
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL):
                failed.append(t)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it first
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    for t in failed:
        log.warning("optuna trial %d: its worker (pid %s) is gone; retrying it", t.number, t.user_attrs["pid"])
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(t._trial_id)))
    return [t.number for t in failed]


def make_sampler(seed: int, finished: int, multi_objective: bool, n_startup_trials: int, population_size: int):
    s = int(np.random.SeedSequence([seed, finished]).generate_state(1)[0])
    if multi_objective:
        return optuna.samplers.NSGAIISampler(seed=s, population_size=population_size)
    return optuna.samplers.TPESampler(seed=s, n_startup_trials=n_startup_trials)


def suggest(trial: optuna.Trial, space: SearchSpace) -> tuple[int, ...]:
    """Suggest each dimension in order; repair values without a valid completion to the nearest allowed one."""
    idx: list[int] = []
    for d, name in enumerate(DIMENSIONS):
        value = trial.suggest_categorical(SHORT[name], list(space.values[d]))
        idx.append(space.nearest_allowed(tuple(idx), space.values[d].index(value)))
    return tuple(idx)


def startup_draw(space: SearchSpace, seed: int, finished: int, n_startup_trials: int) -> ArchSpec | None:
    """The architecture the trial started after `finished` finished ones will train, while TPE still draws at random
    (its first `n_startup_trials`): those draws depend on the sampler's seed alone, not on any result, so a throwaway
    in-memory study with the same seeded sampler draws the same. None from then on (TPE draws from the results)."""
    if finished >= n_startup_trials:
        return None
    sampler = make_sampler(seed, finished, False, n_startup_trials, population_size=4)
    shadow = optuna.create_study(sampler=sampler, direction="maximize")
    return space.spec(suggest(shadow.ask(), space))


def search(
    space: SearchSpace,
    evaluate: Callable[..., dict],
    *,
    num_trials: int,
    seed: int,
    storage: str | None = None,
    study_name: str = "kdjax-nas",
    prune: bool = False,
    multi_objective: bool = False,
    n_startup_trials: int = 10,
    heartbeat_interval: int = 60,
    prepare: Callable[[ArchSpec], None] | None = None,
) -> optuna.Study:
    """Run the study until `num_trials` trials are COMPLETE or PRUNED (counting trials of earlier runs). During TPE's
    random start-up trials, `prepare(spec)` is told the next trial's architecture before this one trains
    (`startup_draw`), so it compiles meanwhile; what is searched is the same either way."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0) if prune and not multi_objective else None
    )
    kwargs = {"directions": ["minimize", "minimize"]} if multi_objective else {"direction": "maximize"}
    store = make_storage(storage, heartbeat_interval)
    study = optuna.create_study(
        storage=store,
        study_name=study_name,
        load_if_exists=True,
        pruner=pruner,
        **kwargs,
    )
    population = max(4, min(50, num_trials // 4))

    def objective(trial: optuna.Trial):
        ours[:] = [trial._trial_id, trial.number, "running"]
        try:
            value = run_trial(trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            ours[2] = "lost"  # another worker failed this trial while it ran here
            raise
        ours[2] = "returned"
        return value

    def run_trial(trial: optuna.Trial):
        # The owner, so that a resumed process can tell this trial's worker is gone (fail_orphaned_trials).
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("owner_trial", trial.number)
        # Trial numbers are handed out atomically by the storage: the first `num_trials` live (not failed) numbers
        # are the study's slots, so a trial that two racing workers made one too many stops before any training.
        before = study.get_trials(deepcopy=False, states=(*FINISHED, *ACTIVE))
        if sum(t.number < trial.number for t in before) >= num_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number}: the study already has {num_trials} trials")
        spec = space.spec(suggest(trial, space))
        trial.set_user_attr("arch_id", spec.arch_id)
        following = position[0] + 1
        if prepare is not None and not multi_objective and following < num_trials:
            upcoming = startup_draw(space, seed, following, n_startup_trials)
            if upcoming is not None:
                prepare(upcoming)

        def on_epoch(epoch: int, loss: float) -> bool:
            # Reported as quality (1 - loss) so that "higher is better" matches the maximised reward.
            trial.report(1.0 - loss, epoch)
            return trial.should_prune()

        # `trial` is the number of finished trials when this one started, not `trial.number`: a run stopped mid-trial
        # leaves a FAIL trial that shifts Optuna's numbers but not this index (single process).
        rec = evaluate(
            spec, trial=position[0], optuna_trial=trial.number, on_epoch=on_epoch if pruner is not None else None
        )
        if rec.get("pruned"):
            raise optuna.TrialPruned()
        trial.set_user_attr("reward", rec["reward"])
        if multi_objective:
            return float("inf") if rec.get("loss") is None else rec["loss"], rec["latency_ms"]
        return rec["reward"]

    stop = optuna.study.MaxTrialsCallback(num_trials, states=FINISHED)
    position = [0]
    ours: list = [None, None, None]  # (storage id, number, how the objective ended) of this worker's latest trial
    heartbeat = isinstance(store, optuna.storages.RDBStorage) and store.get_heartbeat_interval() is not None
    while True:
        fail_orphaned_trials(study)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
        if finished >= num_trials:
            break
        if finished + running >= num_trials:
            if not heartbeat:
                break  # the other workers finish the study
            # Every open slot is being run by another worker: wait until it finishes, or until its heartbeat stops
            # (its trial is then failed and re-queued by RetryHeartbeatStaleTrialCallback, and run here).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(min(5.0, max(0.5, heartbeat_interval / 2)))
            continue
        position[0] = finished
        study.sampler = make_sampler(seed, finished, multi_objective, n_startup_trials, population)
        try:
            study.optimize(objective, n_trials=1, callbacks=[stop], gc_after_trial=False, catch=(SurplusTrial,))
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            # A worker whose heartbeat thread was starved for the grace period (a saturated machine, a long SQLite
            # lock), or whose trial another worker took for an orphan, has that trial failed and re-queued by the
            # other worker; Optuna then cannot tell the result here.
            # The re-queued copy is run by whoever takes it, so this worker only goes on.
            if ours[2] not in ("lost", "returned") or _state(study, ours[0]) != optuna.trial.TrialState.FAIL:
                raise
            log.warning("optuna trial %d was failed by another worker (no heartbeat seen); it is retried", ours[1])
    return study


def _state(study: optuna.Study, trial_id: int | None):
    """The trial's state in the database: Optuna's cache keeps this worker's own trials as it last wrote them."""
    storage = getattr(study._storage, "_backend", study._storage)
    return None if trial_id is None else storage.get_trial(trial_id).state
