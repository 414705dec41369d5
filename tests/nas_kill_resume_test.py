"""SIGKILL the nas stage and resume it, per strategy: the same history and top-k as an uninterrupted search.

Each strategy runs `main.py --config.stages=nas` on the tiny config uninterrupted (the reference), then the same
command in the same workdir path, SIGKILLed and re-run until it finishes. Kill points:
  lstm:   while the first candidate of episode 1 trains, after episode 0's controller checkpoint has landed (the
          resume restores the controller and re-draws episode 1);
  optuna: while the second candidate trains (default SQLite storage and heartbeat: the RUNNING trial is orphaned and
          must be retried at once, with the same parameters, in the same position);
  random: right after the first history row.
Measured latency is noisy and feeds the reward (and so the LSTM's next draws), so the killed run starts with the
reference's teacher folder and latency caches. It also keeps the reference's XLA compilation cache, which is only hit
under the same workdir path (JAX keys it by the cache folder): hence the reference is moved aside, not run elsewhere.
Strategies run side by side, one phase at a time, to save wall time.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import time

import pytest
from helpers import Run, retried_trial_number, wait_all

STRATEGIES = ("lstm", "optuna", "random")
# 1-2 layer students (24 points) compile faster than the tiny space's 3-4 layer ones.
COMMON = ["--config=configs/bert_nas.py:tiny", "--config.stages=nas", "--config.nas.space.num_layers=1,2"]
BUDGET = {
    "lstm": ["--config.nas.num_episodes=2", "--config.nas.candidates_per_episode=2"],
    "optuna": ["--config.nas.num_trials=4"],
    "random": ["--config.nas.num_trials=4"],
}
# Measured, so never equal between runs; `optuna_trial` is Optuna's own trial number, which a retried trial changes
# (the killed trial stays in the study as FAIL) while `trial`, the position in the search, does not.
UNCOMPARED = {"wall_s", "compile_s", "compile_ahead_s", "latency_s", "export_s", "eval_s", "cached", "optuna_trial"}


def args(strategy: str) -> list[str]:
    return [*COMMON, f"--config.nas.strategy={strategy}", *BUDGET[strategy]]


def history(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "nas", "history.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")[:-1]  # a line without its newline is still being written
    return [json.loads(line) for line in lines if line.strip()]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in UNCOMPARED} for r in rows]


def top_k(workdir: str) -> dict:
    with open(os.path.join(workdir, "nas", "top_k.json")) as f:
        return json.load(f)


# ---- kill conditions: fn(workdir) -> why, or None to let it run ------------------------------------------------------
def after_rows(n: int):
    def when(workdir):
        k = len(history(workdir))
        return f"after {k} history rows" if k >= n else None

    return when


def after_controller_checkpoint(episode: int):
    def when(workdir):
        d = os.path.join(workdir, "nas", "controller")
        done = sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []
        if done and done[-1] >= episode:
            return f"after controller checkpoint {done[-1]}"
        return None

    return when


def mid_candidate(min_rows: int, log_name: str, after=None):
    """Kill while a candidate that is not in the history yet trains (its mini-KD bar is on stderr), once there are
    `min_rows` rows and the condition `after` holds; if none is caught in the act, kill at the next history row."""
    armed_at: list[int] = []

    def when(workdir):
        pre = after(workdir) if after is not None else ""
        rows = history(workdir)
        if pre is None or len(rows) < min_rows:
            return None
        if not armed_at:
            armed_at.append(len(rows))
        with open(os.path.join(workdir, f"{log_name}.stderr"), errors="replace") as f:
            started = re.findall(r"mini-kd (\S+):", f.read())
        done = {r["arch_id"] for r in rows}
        training = [a for a in started if a not in done]
        if training:
            return f"mid-candidate {training[-1]} ({len(rows)} history rows) {pre}".strip()
        if len(rows) > armed_at[0]:
            return f"after {len(rows)} history rows (no candidate caught mid-training) {pre}".strip()
        return None

    return when


def move_reference_aside(workdir: str, ref_w: str) -> None:
    """`workdir` -> `ref_w`; `workdir` starts again with the reference's teacher, latency caches and XLA cache."""
    os.rename(workdir, ref_w)
    os.makedirs(os.path.join(workdir, "nas"))
    shutil.copytree(os.path.join(ref_w, "teacher"), os.path.join(workdir, "teacher"))
    shutil.move(os.path.join(ref_w, "cache"), os.path.join(workdir, "cache"))
    shutil.copy(os.path.join(ref_w, "nas", "latency.json"), os.path.join(workdir, "nas", "latency.json"))


# ---- the scenario ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    base = tmp_path_factory.mktemp("nas_kill")
    work = {s: str(base / s / "w") for s in STRATEGIES}
    ref_w = {s: str(base / s / "ref") for s in STRATEGIES}
    t0, cpu0 = time.monotonic(), _children_cpu_s()
    refs = {s: Run(args(s), work[s], name="ref", timeout=600) for s in STRATEGIES}
    wait_all(*refs.values())
    for s, r in refs.items():
        assert r.returncode == 0, f"{s} reference:\n{r.stderr[-3000:]}"
        move_reference_aside(work[s], ref_w[s])
    t_ref, cpu_ref = time.monotonic() - t0, _children_cpu_s() - cpu0

    kill_when = {
        "lstm": mid_candidate(1, "killed", after=after_controller_checkpoint(1)),
        "optuna": mid_candidate(1, "killed"),
        "random": after_rows(1),
    }
    killed = {s: Run(args(s), work[s], kill_when=kill_when[s], name="killed", timeout=600) for s in STRATEGIES}
    wait_all(*killed.values())
    rows_when_killed = {s: len(history(work[s])) for s in STRATEGIES}
    resumed = {s: Run(args(s), work[s], name="resumed", timeout=600) for s in STRATEGIES}
    wait_all(*resumed.values())
    return dict(
        ref_w=ref_w,
        work=work,
        killed=killed,
        resumed=resumed,
        rows_when_killed=rows_when_killed,
        t_ref=t_ref,
        cpu_ref=cpu_ref,
        wall_s=time.monotonic() - t0,
        cpu_s=_children_cpu_s() - cpu0,
    )


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_killed_search_resumes_to_the_same_history_and_top_k(scenario, strategy):
    s = scenario
    killed, resumed = s["killed"][strategy], s["resumed"][strategy]
    ref_w, work = s["ref_w"][strategy], s["work"][strategy]
    print(
        f"{strategy}: killed {killed.killed_at}; scenario {s['wall_s']:.0f}s wall, {s['cpu_s']:.0f}s CPU "
        f"(references {s['t_ref']:.0f}s wall, {s['cpu_ref']:.0f}s CPU)"
    )
    assert killed.returncode == -signal.SIGKILL and killed.killed_at, "finished before it could be killed"
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    ref_rows = history(ref_w)
    assert 0 < s["rows_when_killed"][strategy] < len(ref_rows)
    # The rows hold `hf` paths: equal because both runs used the same workdir path.
    assert comparable(history(work)) == comparable(ref_rows)
    assert top_k(work) == top_k(ref_w)
    assert sorted(os.listdir(os.path.join(work, "nas", "candidates"))) == sorted(
        os.listdir(os.path.join(ref_w, "nas", "candidates"))
    )


@pytest.mark.slow
def test_lstm_resumes_from_the_controller_checkpoint(scenario):
    killed, resumed = scenario["killed"]["lstm"], scenario["resumed"]["lstm"]
    assert killed.killed_at.startswith("mid-candidate") and "controller checkpoint 1" in killed.killed_at
    assert "lstm: resuming at episode 1" in resumed.stderr, resumed.stderr[-3000:]
    d = os.path.join(scenario["work"]["lstm"], "nas", "controller")
    assert sorted(n for n in os.listdir(d) if n.isdigit()) == ["1", "2"]


def trials(workdir: str) -> list:
    import optuna

    study = optuna.load_study(study_name="kdjax-nas", storage=f"sqlite:///{os.path.join(workdir, 'nas', 'optuna.db')}")
    return study.get_trials(deepcopy=False)


@pytest.mark.slow
def test_optuna_orphaned_trial_is_retried_at_once(scenario):
    """The SIGKILLed process's RUNNING trial is failed on resume (its pid is gone) and retried in its own position,
    without waiting out the heartbeat grace period (3 x the default 60 s) and without shifting the sampled sequence."""

    killed, resumed = scenario["killed"]["optuna"], scenario["resumed"]["optuna"]
    assert killed.killed_at.startswith("mid-candidate"), killed.killed_at
    orphan = killed.killed_at.split()[1]
    got = trials(scenario["work"]["optuna"])
    failed = [t for t in got if t.state.name == "FAIL"]
    assert [t.user_attrs.get("arch_id") for t in failed] == [orphan]
    assert "is gone; retrying it" in resumed.stderr
    assert not [t for t in got if t.state.name in ("RUNNING", "WAITING")]
    retried = [t for t in got if retried_trial_number(t) == failed[0].number]
    assert len(retried) == 1 and retried[0].params == failed[0].params
    complete = [t.user_attrs["arch_id"] for t in got if t.state.name == "COMPLETE"]
    ref = trials(scenario["ref_w"]["optuna"])
    assert complete == [t.user_attrs["arch_id"] for t in ref if t.state.name == "COMPLETE"]
