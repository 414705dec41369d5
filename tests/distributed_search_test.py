"""Several Optuna search workers share one study (PostgreSQL on loopback, or the default SQLite file).

Workers are separate processes running `kdjax.nas.optuna_search.search` with a synthetic, slow-ish objective (no
JAX), so the test exercises the storage protocol itself: exactly `num_trials` COMPLETE trials, none trained twice,
and a worker SIGKILLed mid-trial leaves a trial that a surviving worker retries
(heartbeat + RetryHeartbeatStaleTrialCallback).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import pytest
from helpers import ROOT, retried_trial_number

NUM_TRIALS = 6
# Grace = 3 heartbeats. 1 s (a 3 s grace) failed a live worker's trial on a loaded 2-core CI machine, whose heartbeat
# write waited behind SQLite's lock; the killed worker is found by its pid at once whatever the interval.
HEARTBEAT_S = 5

WORKER = r"""
import json, os, sys, time
from kdjax.config.settings import SpaceSettings
from kdjax.nas import optuna_search
from kdjax.search_space import SearchSpace
from kdjax.spec import ArchSpec

url, log_path, delay, num_trials = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
cfg = SpaceSettings()
space = SearchSpace.from_teacher(ArchSpec(num_layers=12, hidden_size=768, num_heads=12, ffn_size=3072), cfg)

def log(event, trial, arch):
    with open(log_path, "a") as f:
        f.write(json.dumps({"event": event, "trial": trial, "arch": arch, "pid": os.getpid()}) + "\n")

def evaluate(spec, on_epoch=None, optuna_trial=None, **where):
    # `optuna_trial` is the storage's trial number (`trial` is the worker's position in the search).
    log("start", optuna_trial, spec.arch_id)
    time.sleep(delay)
    log("done", optuna_trial, spec.arch_id)
    r = 1.0 / (1.0 + spec.num_params / 1e8)
    return {"reward": r, "loss": 1.0 - r, "latency_ms": spec.num_params / 1e6}

optuna_search.search(space, evaluate, num_trials=num_trials, seed=0, storage=url, heartbeat_interval=HEARTBEAT)
""".replace("HEARTBEAT", str(HEARTBEAT_S))


def _worker(url: str, log_path: str, delay: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url, log_path, str(delay), str(NUM_TRIALS)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _events(log_path: str) -> list[dict]:
    import json

    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on loopback; skipped only when the binaries are not installed."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    pg_ctl = bins[-1] if bins else shutil.which("pg_ctl")
    if not pg_ctl:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    bindir = os.path.dirname(pg_ctl)
    # Directly under /tmp: pytest's own temp root is private to root, and the server may not run as root.
    root = tempfile.mkdtemp(prefix="kdjax-pg-")
    data, port = os.path.join(root, "data"), _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def pg(*cmd):
        p = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"{cmd[0]} failed:\n{p.stdout}\n{p.stderr}"

    pg(os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "kdjax", "--no-sync")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg(pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(root, "log"), "-w", "start")
    try:
        pg(os.path.join(bindir, "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "kdjax", "kdjax_nas")
        yield f"postgresql+psycopg2://kdjax@127.0.0.1:{port}/kdjax_nas"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _scenario(url: str, log_path: str) -> dict:
    """Worker A is killed inside its first trial; B and C then share the study to the end."""
    a = _worker(url, log_path, delay=600.0)
    deadline = time.monotonic() + 120
    while not any(e["event"] == "start" for e in _events(log_path)):
        assert a.poll() is None, a.stdout.read()
        assert time.monotonic() < deadline, "worker A never started a trial"
        time.sleep(0.1)
    a.send_signal(signal.SIGKILL)
    a.wait()
    killed_trial = _events(log_path)[0]["trial"]
    t0 = time.monotonic()
    b, c = _worker(url, log_path, delay=0.3), _worker(url, log_path, delay=0.3)
    out = {}
    for name, p in (("b", b), ("c", c)):
        out[name] = p.communicate(timeout=240)[0]
        assert p.returncode == 0, f"worker {name}:\n{out[name][-3000:]}"
    import optuna

    study = optuna.load_study(study_name="kdjax-nas", storage=url)
    return {"study": study, "killed_trial": killed_trial, "events": _events(log_path), "wall_s": time.monotonic() - t0}


def _check(result: dict) -> None:
    import optuna

    study, killed = result["study"], result["killed_trial"]
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(complete) == NUM_TRIALS, [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    # The only failures: the killed worker's trial, and racing trials that stopped before training.
    assert {t.number for t in failed if not t.user_attrs.get("surplus")} == {killed}
    retried = [t for t in complete if retried_trial_number(t) == killed]
    assert len(retried) == 1, "the killed worker's trial is retried exactly once"
    assert retried[0].params == next(t for t in trials if t.number == killed).params
    # No trial trained twice; every COMPLETE trial trained exactly once; the killed one started but never finished.
    done = [e["trial"] for e in result["events"] if e["event"] == "done"]
    assert sorted(done) == sorted(t.number for t in complete)
    started = [e["trial"] for e in result["events"] if e["event"] == "start"]
    assert sorted(started) == sorted([*done, killed])
    workers = {e["pid"] for e in result["events"] if e["event"] == "done"}
    assert len(workers) == 2, "both surviving workers ran trials"


@pytest.mark.slow
def test_workers_share_a_postgresql_study(postgres_url, tmp_path):
    result = _scenario(postgres_url, str(tmp_path / "events.jsonl"))
    _check(result)


@pytest.mark.slow
def test_workers_share_the_default_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    result = _scenario(url, str(tmp_path / "events.jsonl"))
    _check(result)


def test_a_worker_whose_trial_another_worker_failed_goes_on(tmp_path):
    """A live worker's trial failed as stale by another worker (and re-queued) does not stop this worker."""
    import optuna

    from kdjax.config.settings import SpaceSettings
    from kdjax.nas import optuna_search
    from kdjax.search_space import SearchSpace
    from kdjax.spec import ArchSpec

    cfg = SpaceSettings()
    space = SearchSpace.from_teacher(ArchSpec(num_layers=12, hidden_size=768, num_heads=12, ffn_size=3072), cfg)
    url = f"sqlite:///{tmp_path}/optuna.db"
    stolen: list[int] = []

    def evaluate(spec, optuna_trial=None, **where):
        if not stolen:  # what fail_stale_trials does in another worker: FAIL, then re-queue the parameters
            stolen.append(optuna_trial)
            study = optuna.load_study(study_name="kdjax-nas", storage=optuna_search.make_storage(url, 60))
            t = study.get_trials(deepcopy=False)[optuna_trial]
            study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
            study._storage.get_heartbeat_stale_trial_callback()(study, study._storage.get_trial(t._trial_id))
        r = 1.0 / (1.0 + spec.num_params / 1e8)
        return {"reward": r, "loss": 1.0 - r, "latency_ms": 1.0}

    study = optuna_search.search(space, evaluate, num_trials=3, seed=0, storage=url, heartbeat_interval=60)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    assert [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL] == stolen
    retried = [retried_trial_number(t) for t in complete]
    assert retried.count(stolen[0]) == 1


def test_a_retried_copy_taken_by_a_live_worker_is_not_an_orphan(tmp_path):
    """A retried trial inherits the dead worker's pid; while the live worker that took it has not yet written its own,
    another worker must not fail it as an orphan (the race behind a crashed worker in CI)."""
    import optuna

    from kdjax.nas import optuna_search

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize")
    trial = study.ask()  # RUNNING, as the live worker's `ask` leaves the re-queued copy
    attrs = {"host": socket.gethostname(), "pid": dead.pid, "owner_trial": trial.number - 1}  # inherited
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    assert optuna_search.fail_orphaned_trials(study) == []
    trial.set_user_attr("owner_trial", trial.number)  # a worker that claimed it, now dead
    assert optuna_search.fail_orphaned_trials(study) == [trial.number]


def test_two_workers_cannot_both_fail_one_trial_on_sqlite(tmp_path):
    """Worker B fails a dead worker's trial while worker A is between reading it as RUNNING and writing FAIL (the race
    that re-queued one trial twice in CI): exactly one of them may succeed, or the trial runs twice."""
    import threading

    import optuna

    from kdjax.nas import optuna_search

    url = f"sqlite:///{tmp_path}/optuna.db"
    a, b = optuna_search.make_storage(url, 60), optuna_search.make_storage(url, 60)
    study = optuna.create_study(storage=a, study_name="s", direction="maximize")
    with warnings.catch_warnings():  # "heartbeat ... supposed to be used with Study.optimize"
        warnings.simplefilter("ignore", UserWarning)
        trial_id = study.ask()._trial_id
    results: dict[str, object] = {}

    def fail(name, storage):
        try:
            results[name] = storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            results[name] = "already finished"

    check = a.check_trial_is_updatable
    b_thread = threading.Thread(target=fail, args=("b", b))

    def a_checked(tid, state):  # A has read the trial as RUNNING: let B try now, for up to 2 s
        check(tid, state)
        if not b_thread.is_alive() and "b" not in results:
            b_thread.start()
            b_thread.join(2.0)
            results["b done before a wrote"] = "b" in results

    a.check_trial_is_updatable = a_checked
    fail("a", a)
    b_thread.join(30)
    assert results == {"a": True, "b": "already finished", "b done before a wrote": False}
