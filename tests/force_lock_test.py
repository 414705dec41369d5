"""One writer per workdir, checkpoints that refuse other settings, forced re-runs that start fresh, interrupts.

The lock tests hold the lock in a second Python process; the end-to-end cases run `main.py` on the :tiny config.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, run_main, tiny_settings

ARCH = "2L-32H-2A-64F-gelu"
TINY_KD = ["--config=configs/bert_nas.py:tiny", "--config.stages=kd"]


# ---- the workdir lock -----------------------------------------------------------------------------------------------
def hold_lock(workdir: str, seconds: float) -> subprocess.Popen:
    """A second process that takes the workdir lock, says so on stdout, and keeps it for `seconds`."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from kdjax.workdir import WorkdirLock;"
        "lock = WorkdirLock(sys.argv[2]); lock.acquire(); print('held', flush=True); time.sleep(float(sys.argv[3]));"
        "lock.release()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, ROOT, workdir, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    from kdjax.workdir import WorkdirBusyError, WorkdirLock

    holder = hold_lock(str(tmp_path), 60)
    try:
        with pytest.raises(WorkdirBusyError) as info:
            WorkdirLock(str(tmp_path)).acquire()
        msg = str(info.value)
        assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "wait_for_lock" in msg
    finally:
        holder.kill()
        holder.wait()


def test_waiting_writer_gets_the_lock_when_the_holder_ends(tmp_path):
    from kdjax.workdir import WorkdirLock

    holder = hold_lock(str(tmp_path), 1.5)
    t0 = time.monotonic()
    lock = WorkdirLock(str(tmp_path), wait=True)
    lock.acquire()
    waited = time.monotonic() - t0
    assert holder.wait(timeout=30) == 0
    assert waited > 0.5, waited  # it really waited for the holder
    assert json.load(open(lock.path))["pid"] == os.getpid()
    lock.release()
    assert open(lock.path).read() == ""  # a clean release leaves no owner behind


def test_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    from kdjax.workdir import WorkdirLock

    holder = hold_lock(str(tmp_path), 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = WorkdirLock(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="kdjax.workdir"):
        lock.acquire()
    assert any(f"pid {holder.pid}" in r.getMessage() and "taking it over" in r.getMessage() for r in caplog.records)
    lock.release()


def test_main_refuses_a_workdir_in_use(tmp_path):
    holder = hold_lock(str(tmp_path), 120)
    try:
        proc = run_main(TINY_KD, tmp_path, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kdjax: error:")]
    assert len(errors) == 1 and f"pid {holder.pid}" in errors[0] and "in use" in errors[0], proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "kd")


# ---- settings recorded beside checkpoints ---------------------------------------------------------------------------
def test_checkpoints_refuse_other_settings(tmp_path):
    import jax.numpy as jnp

    from kdjax.checkpoint import Checkpointer, SettingsMismatchError

    d = str(tmp_path / "ck")
    settings = {"arch": "2L", "kd.learning_rate": 1e-3, "seed": 0}
    ck = Checkpointer(d, settings=settings, final_step=1)
    ck.save(1, {"w": jnp.ones(3)}, {})
    ck.close()
    Checkpointer(d, settings=dict(settings)).close()  # the same settings resume
    with pytest.raises(SettingsMismatchError) as info:
        Checkpointer(d, settings=dict(settings, **{"kd.learning_rate": 2e-3}))
    msg = str(info.value)
    assert "kd.learning_rate = 0.001 (this run: 0.002)" in msg and "--config.force=true" in msg
    assert "seed" not in msg  # only what differs
    # Without checkpoints there is nothing to resume: new settings simply replace the record.
    e = str(tmp_path / "empty")
    Checkpointer(e, settings=settings).close()
    Checkpointer(e, settings={"seed": 1}).close()
    assert json.load(open(os.path.join(e, "settings.json"))) == {"seed": 1}


def test_a_setting_missing_from_an_older_record_matches_its_default(tmp_path):
    import jax.numpy as jnp

    from kdjax.checkpoint import Checkpointer, SettingsMismatchError

    d = str(tmp_path / "ck")
    old = {"arch": "2L", "seed": 0}  # written before the setting "new" existed
    ck = Checkpointer(d, settings=old, final_step=1)
    ck.save(1, {"w": jnp.ones(3)}, {})
    ck.close()
    defaults = {"new": 0.0}
    Checkpointer(d, settings=dict(old, new=0.0), defaults=defaults).close()  # the default: what the record ran
    with pytest.raises(SettingsMismatchError) as info:
        Checkpointer(d, settings=dict(old, new=0.5), defaults=defaults)
    assert "new = 0.0 (not recorded: the default) (this run: 0.5)" in str(info.value)
    # Without a default a missing key is a difference; a recorded key is compared as before, default or not.
    with pytest.raises(SettingsMismatchError, match=r"new = None \(this run: 0.0\)"):
        Checkpointer(d, settings=dict(old, new=0.0))
    with pytest.raises(SettingsMismatchError, match=r"seed = 0 \(this run: 1\)"):
        Checkpointer(d, settings=dict(old, seed=1, new=0.0), defaults=defaults)
    assert json.load(open(os.path.join(d, "settings.json"))) == old  # a resume never rewrites the record


def _kd_settings(dropout_rate=0.0, **loss):
    """kd_stage.kd_settings of a stand-in run (the settings only read names, numbers and fingerprints)."""
    from types import SimpleNamespace as NS

    from kdjax.kd_stage import KdInputs, kd_settings
    from kdjax.losses import LossConfig
    from kdjax.optim import OptimConfig

    inp = KdInputs(
        teacher=NS(spec=NS(arch_id="4L-64H-4A-128F-gelu"), params={"w": np.arange(6.0)}),
        batches=NS(global_batch=2, masking=NS(probability=0.15), rows=np.arange(64, dtype=np.int32).reshape(4, 16)),
        kd=NS(init="auto", loss=LossConfig(**loss), dropout_rate=dropout_rate),
        seed=0,
        dtype=None,
        mesh=None,
        seq_len=16,
    )
    return kd_settings(inp, NS(arch_id=ARCH), OptimConfig(learning_rate=1e-3, total_steps=6, warmup_steps=0), False)


def test_kd_checkpoints_from_before_sentence_weight_still_resume(tmp_path):
    """A settings.json written before kd.loss.sentence_weight existed (no such key, written here by hand) resumes
    with the default weight and refuses another; a real difference is still refused."""
    import jax.numpy as jnp

    from kdjax.checkpoint import Checkpointer, SettingsMismatchError
    from kdjax.kd_stage import KD_SETTINGS_DEFAULTS

    d = str(tmp_path / "checkpoints")
    ck = Checkpointer(d, final_step=3)
    ck.save(3, {"w": jnp.ones(3)}, {"position": 3})
    ck.close()
    record = _kd_settings()
    assert record["kd.loss.sentence_weight"] == 0.0 and record["kd.dropout_rate"] == 0.0  # recorded from now on
    del record["kd.loss.sentence_weight"], record["kd.dropout_rate"]
    with open(os.path.join(d, "settings.json"), "w") as f:
        json.dump(record, f, indent=2)
    ck = Checkpointer(d, settings=_kd_settings(), defaults=KD_SETTINGS_DEFAULTS)
    step, state, meta = ck.restore({"w": jnp.zeros(3)})
    ck.close()
    assert step == 3 and meta == {"position": 3} and float(state["w"].sum()) == 3.0
    with pytest.raises(SettingsMismatchError) as info:
        Checkpointer(d, settings=_kd_settings(sentence_weight=0.5), defaults=KD_SETTINGS_DEFAULTS)
    msg = str(info.value)
    assert "kd.loss.sentence_weight = 0.0 (not recorded: the default) (this run: 0.5)" in msg
    assert "\n" not in msg and "--config.force=true" in msg
    with pytest.raises(SettingsMismatchError, match=r"kd\.dropout_rate = 0\.0"):  # made without dropout
        Checkpointer(d, settings=_kd_settings(dropout_rate=0.1), defaults=KD_SETTINGS_DEFAULTS)
    with pytest.raises(SettingsMismatchError) as info:
        Checkpointer(d, settings=_kd_settings(temperature=4.0), defaults=KD_SETTINGS_DEFAULTS)
    assert "kd.loss.temperature = 2.0 (this run: 4.0)" in str(info.value) and "sentence_weight" not in str(info.value)


def test_orbax_saves_the_interval_and_the_final_step_only(tmp_path):
    import jax.numpy as jnp

    from kdjax.checkpoint import Checkpointer

    ck = Checkpointer(str(tmp_path / "ck"), keep=10, interval_steps=3, final_step=8)
    saved = [s for s in range(1, 9) if ck.should_save(s) and ck.save(s, {"w": jnp.full(3, s)}, {"s": s})]
    ck.close()
    assert saved == [3, 6, 8] and ck.steps() == [3, 6, 8]
    assert ck.reached == 8


# ---- damaged caches -------------------------------------------------------------------------------------------------
def _nas_cfg():
    return tiny_settings({"nas.strategy": "random", "nas.top_k": 2, "nas.top_k_latency_gap": 1.25}).nas


def test_damaged_top_k_is_rebuilt_from_history(tmp_path, caplog):
    from kdjax.nas.topk import read_top_k

    rows = [
        {"arch_id": "1L-64H-1A-64F-gelu", "reward": 0.5, "loss": 1.0, "latency_ms": 1.0, "speedup": 2.0, "params": 1},
        {"arch_id": "2L-64H-1A-64F-gelu", "reward": 0.7, "loss": 0.8, "latency_ms": 2.0, "speedup": 1.0, "params": 2},
    ]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "top_k.json").write_text('{"strategy": "random", "top_k": [{"arch_')
    with caplog.at_level(logging.WARNING, logger="kdjax.nas.topk"):
        top = read_top_k(str(tmp_path), _nas_cfg())
    assert [t["arch_id"] for t in top] == ["2L-64H-1A-64F-gelu", "1L-64H-1A-64F-gelu"]
    assert any("rebuilt" in r.getMessage() for r in caplog.records)
    assert read_top_k(str(tmp_path), _nas_cfg()) == top  # the rebuilt file reads back


def test_damaged_top_k_without_history_is_an_error(tmp_path):
    from kdjax.errors import KdjaxError
    from kdjax.nas.topk import read_top_k

    (tmp_path / "top_k.json").write_text('{"top_k": [3]}')
    with pytest.raises(KdjaxError, match=r"damaged.*--config\.force=true"):
        read_top_k(str(tmp_path), _nas_cfg())


def test_damaged_corpus_cache_is_rebuilt(tiny_teacher, tmp_path, caplog):
    from kdjax.config.settings import DataSettings
    from kdjax.data.corpus import packed_corpus

    cfg = DataSettings(
        corpus="synthetic",
        text_column="text",
        max_seq_len=32,
        mlm_probability=0.15,
        max_lines=0,
        synthetic_lines=50,
        glue_dir="",
    )
    rows = packed_corpus(cfg, tiny_teacher.tokenizer, str(tmp_path))
    (cache,) = [p for p in tmp_path.iterdir() if p.name.startswith("packed-")]
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="kdjax.data.corpus"):
        again = packed_corpus(cfg, tiny_teacher.tokenizer, str(tmp_path))
    np.testing.assert_array_equal(again, rows)
    assert any("damaged" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.load(cache), rows)  # and the cache file is whole again


# ---- disk errors ----------------------------------------------------------------------------------------------------
def test_disk_errors_name_the_path():
    import errno

    from kdjax.interrupts import disk_error, disk_error_message

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/kd/x/metrics.jsonl")
    wrapped = ValueError("commit failed")
    wrapped.__cause__ = full
    assert disk_error(wrapped) is full
    assert disk_error_message("kd", full, "/w") == (
        "kd: cannot write /w/kd/x/metrics.jsonl: No space left on device; free some space, then run the same "
        "command to resume"
    )
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES), "/w/nas")
    assert "cannot access /w/nas: Permission denied; make it writable" in disk_error_message("nas", denied, "/w")
    tensorstore = ValueError('Error writing "d/abc": [Errno 28] No space left on device\nmore lines')
    assert "No space left on device" in disk_error_message("kd", disk_error(tensorstore), "/w")
    assert disk_error(ValueError("shapes differ")) is None


# ---- end to end: force, settings, interrupts ------------------------------------------------------------------------
def _one_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kdjax: error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_force_reruns_and_resume_checks_settings(tmp_path):
    out = tmp_path / "kd" / ARCH
    first = run_main(TINY_KD, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.load(open(out / "result.json"))
    os.remove(tmp_path / ".stages" / "kd.json")  # as if the run had stopped after its last checkpoint
    # Another learning rate must not resume the finished checkpoints.
    proc = run_main([*TINY_KD, "--config.kd.learning_rate=3e-3"], tmp_path)
    line = _one_error(proc)
    assert "kd.learning_rate = 0.001 (this run: 0.003)" in line and "--config.force=true" in line
    assert json.load(open(out / "result.json")) == before  # nothing written was lost
    # Nor a longer schedule.
    line = _one_error(run_main([*TINY_KD, "--config.kd.num_train_steps=9"], tmp_path))
    assert "total steps" in line and "= 6 (this run: 9)" in line
    # Forced, it trains from scratch with the new settings and reports this run's work.
    proc = run_main([*TINY_KD, "--config.kd.learning_rate=3e-3", "--config.force=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.load(open(out / "result.json"))
    assert after["resumed_from"] is None and after["corpus_tokens"] > 0 and after["wall_s"] > 0
    assert after["final_loss"] != before["final_loss"]
    settings = json.load(open(out / "checkpoints" / "settings.json"))
    assert settings["kd.learning_rate"] == 3e-3
    assert not os.path.exists(tmp_path / ".previous" / "kd")  # the set-aside outputs go once the stage finished


@pytest.mark.slow
def test_interrupts_end_in_one_line_and_resume(tmp_path):
    """SIGINT and SIGTERM after a checkpoint: one line naming the step, no temporary folders; the same command
    then resumes from the checkpoint and finishes."""
    args = [*TINY_KD, "--config.kd.num_train_steps=400", "--config.kd.checkpoint_every_steps=10"]
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        w = tmp_path / sig.name
        runs[sig] = (w, subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "main.py"), *args, f"--workdir={w}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    deadline = time.monotonic() + 300
    pending = dict(runs)
    while pending and time.monotonic() < deadline:
        for sig, (w, proc) in list(pending.items()):
            ck = w / "kd" / ARCH / "checkpoints"
            if ck.is_dir() and any(n.isdigit() for n in os.listdir(ck)):
                proc.send_signal(sig)
                del pending[sig]
        time.sleep(0.05)
    for sig, (w, proc) in runs.items():
        _, err = proc.communicate(timeout=120)
        line = _one_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
        assert "interrupted" in line and "after step" in line and "run the same command to resume" in line, line
        assert (sig.name in line) == (sig == signal.SIGTERM), line  # Ctrl-C needs no name
        names = os.listdir(w / "kd" / ARCH / "checkpoints")
        assert not [n for n in names if "tmp" in n], names
        assert not os.path.exists(w / ".stages" / "kd.json")
    w = runs[signal.SIGTERM][0]
    saved = max(int(n) for n in os.listdir(w / "kd" / ARCH / "checkpoints") if n.isdigit())
    proc = run_main(args, w)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from step {saved}" in proc.stderr
    assert json.load(open(w / "kd" / ARCH / "result.json"))["steps"] == 400


# An interrupt that lands inside `threading.Condition.notify` between waking a waiter and forgetting it leaves the
# woken waiter listed, so the next notify goes to it and the real waiter sleeps on: tensorboardX's writer thread then
# never sees `close`'s stop signal and `close` waits forever (a CI run hung there). The child reproduces that moment.
NOTIFY_INTERRUPTED = """
import os, signal, sys, threading, time
from collections import deque
from itertools import islice
sys.path.insert(0, sys.argv[1])
from kdjax.interrupts import signals_as_interrupts
from kdjax.writer import MetricWriter
fired = []
def notify(self, n=1):
    waiters = self._waiters
    for waiter in deque(islice(waiters, n)):
        waiter.release()
        if not fired and threading.current_thread() is threading.main_thread():
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        try:
            waiters.remove(waiter)
        except ValueError:
            pass
w = MetricWriter(sys.argv[2])
w.write(0, {"loss": 1.0})
time.sleep(0.3)  # the queue's feeder thread is waiting on its condition
threading.Condition.notify = notify
with signals_as_interrupts():
    try:
        w.write(1, {"loss": 0.5})
    except KeyboardInterrupt:
        print("interrupted after the write")
threading.Timer(20, lambda: (print("close hung", flush=True), os._exit(3))).start()
w.close()
print("closed", flush=True)
os._exit(0)
"""


def test_interrupt_inside_a_metrics_write_does_not_hang_close(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", NOTIFY_INTERRUPTED, ROOT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.split() == ["interrupted", "after", "the", "write", "closed"], proc.stdout
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1]  # the interrupted write finished first


# ---- a damaged newest checkpoint: fallback with a short output ------------------------------------------------------
DAMAGED_RESTORE = """
import sys
sys.path.insert(0, sys.argv[1])
import jax.numpy as jnp
from kdjax.checkpoint import Checkpointer
state = {f"w{i}": jnp.arange(5000, dtype=jnp.float32) + i for i in range(60)}
ck = Checkpointer(sys.argv[2], keep=5)
step, restored, meta = ck.restore(state)
assert step == 2 and float(restored["w1"][1]) == 4.0
ck.close()
print("kdjax: error: the last line still arrives", file=sys.stderr)
sys.exit(2)
"""


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_quietly(tmp_path):
    """60 arrays whose newest step is truncated: Orbax abandons the sibling reads, whose 'Event loop is closed'
    tracebacks (one per array, some after the restore returned) must not reach the console."""
    import glob

    import jax.numpy as jnp

    from kdjax.checkpoint import Checkpointer

    d = str(tmp_path / "ck")
    state = {f"w{i}": jnp.arange(5000, dtype=jnp.float32) + i for i in range(60)}
    ck = Checkpointer(d, keep=5)
    for s in (1, 2, 3):
        ck.save(s, {k: v * s for k, v in state.items()}, {"step": s})
    ck.close()
    for f in glob.glob(os.path.join(d, "3", "state", "**", "d", "*"), recursive=True):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", DAMAGED_RESTORE, ROOT, d], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr and len(lines) <= 4, proc.stderr[-3000:]
    assert "checkpoint step 3" in proc.stderr and lines[-1] == "kdjax: error: the last line still arrives"


def test_set_aside_keeps_the_last_finished_outputs(tmp_path):
    from kdjax.workdir import Workdir

    wd = Workdir(str(tmp_path))
    (tmp_path / "kd" / "a").mkdir(parents=True)
    (tmp_path / "kd" / "a" / "result.json").write_text("finished")
    wd.set_aside("kd", wd.path("kd", "a"))  # a forced re-run starts...
    assert not (tmp_path / "kd" / "a").exists()
    (tmp_path / "kd" / "a").mkdir()
    (tmp_path / "kd" / "a" / "metrics.jsonl").write_text("partial")
    wd.set_aside("kd", wd.path("kd", "a"))  # ...is interrupted, and forced again
    assert (tmp_path / ".previous" / "kd" / "kd" / "a" / "result.json").read_text() == "finished"
    assert not (tmp_path / "kd" / "a").exists()
    wd.drop_previous("kd")  # the forced stage finished
    assert not (tmp_path / ".previous" / "kd").exists()
    with pytest.raises(ValueError):
        wd.set_aside("kd", str(tmp_path.parent))


def test_a_second_signal_stops_a_run_whose_first_interrupt_was_swallowed():
    """A KeyboardInterrupt raised where Python ignores exceptions (a GC or __del__ callback, as JAX's) leaves the run
    going; the second SIGTERM then ends it at once with one error line."""
    code = (
        "import os, signal, sys, time\n"
        "from kdjax.interrupts import signals_as_interrupts\n"
        "with signals_as_interrupts():\n"
        "    ready = False\n"
        "    while True:\n"
        "        try:\n"
        "            if not ready:\n"
        "                ready = True\n"
        "                print('ready', flush=True)\n"
        "            time.sleep(0.05)\n"
        "        except KeyboardInterrupt:\n"
        "            print('swallowed', flush=True)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.stdout.readline().strip() == "swallowed", p.communicate(timeout=30)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines() == ["kdjax: error: stopped by a second SIGTERM; run the same command to resume"]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_after_a_finished_run_ends_it_successfully(tmp_path, sig):
    """A signal that arrives once every stage is done, during exit clean-up, ends the process at once with status 0:
    no KeyboardInterrupt traceback from an atexit hook, no death by SIGTERM after the work was written."""
    child = (
        "import atexit, os, signal, sys, time\n"
        "sys.argv = ['main.py', '--config=configs/bert_nas.py:tiny', '--config.stages=teacher',"
        f" '--workdir={tmp_path}']\n"
        "import main\n"
        # Registered last, so run first at exit: the signal lands during the exit clean-up.
        f"atexit.register(lambda: (os.kill(os.getpid(), signal.{sig}), time.sleep(20), print('still running')))\n"
        "main.app.run(main.main, flags_parser=main.parse_flags)\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "still running" not in proc.stdout and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert os.path.isfile(tmp_path / "teacher" / "info.json")
