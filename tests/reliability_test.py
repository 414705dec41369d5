"""Kill and resume, damaged checkpoints, atomic writes.

The end-to-end cases run `main.py` as subprocesses on the tiny config and SIGKILL them at chosen points (after a
checkpoint has landed, and in the middle of a save); the resumed run must end with the same weights and the same
metrics as an uninterrupted run. Independent subprocesses of one phase run side by side to save wall time.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import logging
import os
import shutil
import signal
import sys
import time

import numpy as np
import pytest
from helpers import Run, wait_all

ARCH = "2L-32H-2A-64F-gelu"
KD_STEPS = 24
KD_ARGS = [
    "--config=configs/bert_nas.py:tiny",
    "--config.stages=kd",
    f"--config.kd.num_train_steps={KD_STEPS}",
    "--config.kd.checkpoint_every_steps=3",
    "--config.kd.log_every_steps=2",
]
TMP_MARK = ".orbax-checkpoint-tmp"


def ckpt_dir(workdir: str) -> str:
    return os.path.join(workdir, "kd", ARCH, "checkpoints")


def finished_steps(workdir: str) -> list[int]:
    d = ckpt_dir(workdir)
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def after_checkpoint(step: int):
    """Kill once a finished checkpoint at or after `step` exists (training goes on meanwhile)."""

    def when(workdir):
        done = finished_steps(workdir)
        return f"after checkpoint {done[-1]}" if done and done[-1] >= step else None

    return when


def mid_save(min_step: int, fallback_step: int):
    """Kill while Orbax writes checkpoint `min_step` or a later one (its `N.orbax-checkpoint-tmp*` folder exists);
    if no save is caught in the act, kill once step `fallback_step` has landed."""

    def when(workdir):
        try:
            names = os.listdir(ckpt_dir(workdir))
        except FileNotFoundError:
            return None
        tmp = [n for n in names if TMP_MARK in n and n.split(".")[0].isdigit() and int(n.split(".")[0]) >= min_step]
        if tmp:
            return f"during save ({tmp[0]})"
        done = sorted(int(n) for n in names if n.isdigit())
        if done and done[-1] >= fallback_step:
            return f"after checkpoint {done[-1]}"
        return None

    return when


def weights(workdir: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(os.path.join(workdir, "kd", ARCH, "hf", "model.safetensors"))


def metric_rows(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "kd", ARCH, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for r in rows:
        r.pop("time", None)
    return rows


def result(workdir: str) -> dict:
    with open(os.path.join(workdir, "kd", ARCH, "result.json")) as f:
        return json.load(f)


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        diff = float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) if a[k].size else 0.0
        assert diff <= atol, f"{k}: max abs diff {diff}"


def damage(step_dir: str, how: str) -> str:
    """Damage one checkpoint folder the way a full disk or a careless user would; returns what was done."""
    files = sorted(f for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True) if os.path.isfile(f))
    if how == "truncate":
        data = [f for f in files if f"{os.sep}d{os.sep}" in f]
        big = max(data, key=os.path.getsize)
        with open(big, "r+b") as f:
            f.truncate(os.path.getsize(big) // 2)
        return f"truncated {big}"
    if how == "delete_data":
        for f in files:
            if f"{os.sep}d{os.sep}" in f:
                os.remove(f)
        return "deleted array data"
    if how == "delete_meta":
        path = os.path.join(step_dir, "meta", "metadata")
        os.remove(path)
        return f"deleted {path}"
    if how == "empty_manifest":
        path = os.path.join(step_dir, "state", "manifest.ocdbt")
        open(path, "w").close()
        return f"emptied {path}"
    raise ValueError(how)


# ---- the KD kill/resume scenario ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kd_scenario(tmp_path_factory):
    """Phase 1: uninterrupted reference || a run killed after its first checkpoint.
    Phase 2: its resume, killed again mid-save (or after a later checkpoint) || a copy of the finished reference with
    every checkpoint damaged, forced to re-run.  Phase 3: the newest surviving checkpoint of the killed run is damaged
    too, and the last resume falls back past it and runs to the end."""
    base = tmp_path_factory.mktemp("kd_kill")
    ref_w, kill_w, none_w = str(base / "ref"), str(base / "killed"), str(base / "none_left")
    t0 = time.monotonic()

    ref = Run(KD_ARGS, ref_w, name="ref")
    first = Run(KD_ARGS, kill_w, kill_when=after_checkpoint(3), name="first")
    wait_all(ref, first)
    assert ref.returncode == 0, ref.stderr[-3000:]
    steps_after_first = finished_steps(kill_w)

    shutil.copytree(ref_w, none_w)
    none_steps = finished_steps(none_w)
    for s, how in zip(none_steps, ("delete_meta", "delete_data", "truncate"), strict=True):
        damage(os.path.join(ckpt_dir(none_w), str(s)), how)
    second = Run(KD_ARGS, kill_w, kill_when=mid_save(12, 18), name="second")
    # The stage is marked finished in the copy: unmark it so that it runs (and restores) again. (A forced run would
    # start from scratch instead of restoring.)
    os.remove(os.path.join(none_w, ".stages", "kd.json"))
    none_left = Run(KD_ARGS, none_w, name="none_left")
    wait_all(second, none_left)
    steps_after_second = finished_steps(kill_w)

    damaged = steps_after_second[-1]
    damage(os.path.join(ckpt_dir(kill_w), str(damaged)), "truncate")
    third = Run(KD_ARGS, kill_w, name="third")
    wait_all(third)
    return dict(
        ref=ref,
        first=first,
        second=second,
        third=third,
        none_left=none_left,
        ref_w=ref_w,
        kill_w=kill_w,
        none_w=none_w,
        damaged=damaged,
        none_steps=none_steps,
        steps_after_first=steps_after_first,
        steps_after_second=steps_after_second,
        wall_s=time.monotonic() - t0,
    )


@pytest.mark.slow
def test_kill_points_really_interrupted(kd_scenario):
    s = kd_scenario
    for name in ("first", "second"):
        run = s[name]
        assert run.returncode == -signal.SIGKILL, f"{name} finished before it could be killed ({run.killed_at})"
        assert run.killed_at
    assert s["steps_after_first"] and s["steps_after_first"][-1] < KD_STEPS
    assert s["steps_after_second"][-1] < KD_STEPS
    assert not os.path.exists(os.path.join(s["kill_w"], ".stages", "kd.json.tmp"))


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted(kd_scenario):
    """Two kills and a damaged newest checkpoint later, the weights and metrics equal an unbroken run's."""
    s = kd_scenario
    third = s["third"]
    assert third.returncode == 0, third.stderr[-3000:]
    print(f"kill points: {s['first'].killed_at}; {s['second'].killed_at}; scenario {s['wall_s']:.0f}s")
    # The damaged step is named in one warning line, the one before it restored, and the damaged one rewritten.
    assert f"checkpoint step {s['damaged']} in" in third.stderr and "unreadable" in third.stderr
    # The sibling reads the failed restore abandoned print no 'Event loop is closed' tracebacks, however late.
    assert "Traceback" not in third.stderr and "Exception ignored" not in third.stderr, third.stderr[-3000:]
    assert "kdjax: error" not in third.stderr
    assert f"resumed from step {s['damaged'] - 3}" in third.stderr
    res = result(s["kill_w"])
    assert res["resumed_from"] == s["damaged"] - 3
    ref_w, kill_w = weights(s["ref_w"]), weights(s["kill_w"])
    assert_same_weights(ref_w, kill_w)
    # On one CPU device the arithmetic is the same program on the same inputs: expect bit equality.
    assert all(np.array_equal(ref_w[k], kill_w[k]) for k in ref_w)
    assert metric_rows(s["kill_w"]) == metric_rows(s["ref_w"])
    ref_res = result(s["ref_w"])
    assert res["final_loss"] == ref_res["final_loss"]
    assert res["epoch_losses"] == ref_res["epoch_losses"]


@pytest.mark.slow
def test_resume_leaves_no_partial_checkpoints(kd_scenario):
    s = kd_scenario
    names = os.listdir(ckpt_dir(s["kill_w"]))
    assert not [n for n in names if TMP_MARK in n], names
    assert finished_steps(s["kill_w"]) == [18, 21, 24]  # keep_checkpoints=3
    assert finished_steps(s["kill_w"]) == finished_steps(s["ref_w"])


@pytest.mark.slow
def test_no_readable_checkpoint_is_one_error_line(kd_scenario):
    s = kd_scenario
    run = s["none_left"]
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("kdjax: error:")]
    assert len(errors) == 1 and "no readable checkpoint" in errors[0], run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    for step in s["none_steps"]:
        assert f"checkpoint step {step} in" in run.stderr
    # Nothing earlier is lost: the export of the earlier successful run is still there, unchanged.
    assert_same_weights(weights(s["none_w"]), weights(s["ref_w"]), atol=0.0)


# ---- damaged checkpoints, in-process --------------------------------------------------------------------------------
@pytest.fixture
def three_checkpoints(tmp_path):
    import jax.numpy as jnp

    from kdjax.checkpoint import Checkpointer

    state = {"w": jnp.arange(2000, dtype=jnp.float32), "b": jnp.ones((4, 4))}
    ck = Checkpointer(str(tmp_path / "ck"), keep=5)
    for s in (1, 2, 3):
        ck.save(s, {k: v * s for k, v in state.items()}, {"step": s})
    ck.close()
    return str(tmp_path / "ck"), state


@pytest.mark.parametrize("how", ["truncate", "delete_data", "delete_meta", "empty_manifest"])
def test_damaged_checkpoint_warns_and_falls_back(three_checkpoints, how, caplog):
    from kdjax.checkpoint import Checkpointer

    directory, state = three_checkpoints
    damage(os.path.join(directory, "3"), how)
    ck = Checkpointer(directory, keep=5)
    with caplog.at_level(logging.WARNING, logger="kdjax.checkpoint"):
        step, restored, meta = ck.restore(state)
    assert step == 2 and meta == {"step": 2}
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(state["w"]) * 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoint step 3 " in w for w in warnings), warnings
    assert all("\n" not in w for w in warnings)
    # The run goes on from step 2 and writes step 3 again over the damaged one.
    ck.save(3, {k: v * 30 for k, v in state.items()}, {"step": 3})
    step, restored, _ = ck.restore(state)
    assert step == 3
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(state["w"]) * 30)
    ck.close()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_every_checkpoint_damaged_raises_checkpoint_error(three_checkpoints):
    from kdjax.checkpoint import Checkpointer, CheckpointError
    from kdjax.errors import KdjaxError

    directory, state = three_checkpoints
    for s, how in ((1, "delete_meta"), (2, "delete_data"), (3, "truncate")):
        damage(os.path.join(directory, str(s)), how)
    ck = Checkpointer(directory, keep=5)
    with pytest.raises(CheckpointError, match="no readable checkpoint") as info:
        ck.restore(state)
    assert isinstance(info.value, KdjaxError)
    assert all(f"step {s}" in str(info.value) for s in (1, 2, 3))
    ck.close()
    # The reads the failed restores abandoned report nothing when they finish or are collected later (pytest turns
    # an 'Exception ignored in' report during this test into an error): neither while the error is held nor after.
    gc.collect()
    del info
    gc.collect()
    time.sleep(0.5)  # reads still in flight finish in TensorStore's threads


def test_quieting_abandoned_reads_passes_other_reports_on(monkeypatch):
    """The hook a restore installs drops only the reports of abandoned checkpoint reads: a user's own goes on."""
    from kdjax import checkpoint

    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: seen.append(args.exc_value))
    checkpoint._quiet_abandoned_reads()
    checkpoint._quiet_abandoned_reads()  # once: not wrapped twice

    class Leaky:
        def __del__(self):
            raise ValueError("not a checkpoint read")

    Leaky()
    sys.unraisablehook(argparse.Namespace(exc_value=RuntimeError("Event loop is closed"), object=None))
    assert [str(e) for e in seen] == ["not a checkpoint read"]
    assert not isinstance(sys.unraisablehook.previous, checkpoint._QuietAbandonedReads)


def test_half_written_checkpoint_is_invisible(three_checkpoints):
    """A kill during a save leaves only Orbax's tmp folder: never listed, never restored, cleaned up on start."""
    from kdjax.checkpoint import Checkpointer

    directory, state = three_checkpoints
    tmp = os.path.join(directory, f"4{TMP_MARK}-1234567")
    shutil.copytree(os.path.join(directory, "3"), tmp)
    os.remove(os.path.join(tmp, "commit_success.txt"))
    ck = Checkpointer(directory, keep=5)
    assert ck.steps() == [1, 2, 3]
    step, _, meta = ck.restore(state)
    assert step == 3 and meta["step"] == 3
    ck.save(4, state, {"step": 4})
    assert ck.steps() == [1, 2, 3, 4]
    ck.close()  # the save is written in the background; closing waits for it
    assert not [n for n in os.listdir(directory) if TMP_MARK in n]


def test_write_json_is_atomic(tmp_path, monkeypatch):
    from kdjax import workdir as wd

    path = str(tmp_path / "x.json")
    wd.write_json(path, {"a": 1})

    def broken_dump(obj, f, **kw):
        f.write('{"a": ')
        raise OSError("disk full")

    monkeypatch.setattr(wd.json, "dump", broken_dump)
    with pytest.raises(OSError):
        wd.write_json(path, {"a": 2})
    monkeypatch.undo()
    assert wd.read_json(path) == {"a": 1}


def test_metrics_survive_a_half_written_line(tmp_path):
    from kdjax.writer import MetricWriter

    w = MetricWriter(str(tmp_path), tensorboard=False)
    for step in (2, 4, 6):
        w.write(step, {"loss": float(step)})
    with open(w.path, "a") as f:
        f.write('{"step": 8, "lo')  # killed mid-line
    w.truncate_after(4)
    w.write(6, {"loss": 6.0})
    with open(w.path) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [2, 4, 6]
