"""Helpers shared by the test modules: the repository root and `main.py` run as a user would, in the foreground
(`run_main`) or in the background with an optional SIGKILL (`Run`, `wait_all`); typed settings of the `:tiny`
config and a run context built from them (`tiny_settings`, `run_context`), as the pipeline builds them.

Test modules import this as `helpers` (pytest puts tests/ on `sys.path`); fixtures stay in conftest.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_env(env: dict | None = None) -> dict:
    """This process's environment for a `main.py` child: one device unless a test asks for more (`env`); a None value
    in `env` removes that variable (a user without it)."""
    full_env = dict(os.environ)
    full_env.pop("XLA_FLAGS", None)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return full_env


def run_main(
    args: list[str], workdir=None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python main.py ARGS --workdir=W` as a user would (no --workdir when `workdir` is None); returns the
    CompletedProcess. `env` adds variables to this process's environment, or removes those given as None."""
    workdir_flag = [] if workdir is None else [f"--workdir={workdir}"]
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), *args, *workdir_flag],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_user_env(env),
    )


class Run:
    """`python main.py ARGS --workdir=W` in the background, output to files; optionally SIGKILLed by `kill_when`."""

    def __init__(
        self,
        args: list[str],
        workdir,
        kill_when: Callable[[str], str | None] | None = None,
        name: str = "run",
        timeout: float = 420,
    ):
        os.makedirs(workdir, exist_ok=True)
        self.workdir, self.kill_when, self.name = str(workdir), kill_when, name
        self.deadline = time.monotonic() + timeout
        self.killed_at: str | None = None
        env = _user_env()
        self._out = open(os.path.join(self.workdir, f"{name}.stdout"), "w")
        self._err_path = os.path.join(self.workdir, f"{name}.stderr")
        self._err = open(self._err_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "main.py"), *args, f"--workdir={self.workdir}"],
            cwd=ROOT,
            stdout=self._out,
            stderr=self._err,
            env=env,
        )

    def poll(self) -> bool:
        """True once the process has ended (killing it first when its condition holds)."""
        if self.proc.poll() is not None:
            return True
        if time.monotonic() > self.deadline:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} timed out; stderr:\n{self.stderr[-3000:]}")
        if self.kill_when is not None:
            why = self.kill_when(self.workdir)
            if why:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
                self.killed_at = why
                return True
        return False

    @property
    def returncode(self) -> int:
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        with open(self._err_path) as f:
            return f.read()

    def close(self) -> None:
        self._out.close()
        self._err.close()


def wait_all(*runs: Run, poll_s: float = 0.005) -> None:
    try:
        while not all([r.poll() for r in runs]):
            time.sleep(poll_s)
    finally:
        for r in runs:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
            r.close()


def tiny_settings(fields: dict[str, Any] | None = None, config=None):
    """`validate(config)` (default: the `:tiny` config) after setting `fields` ({'nas.top_k': 2, ...}) on a copy."""
    from kdjax.config import base_config, validate

    c = base_config("bert-base-uncased", "tiny") if config is None else config.copy_and_resolve_references()
    for path, value in (fields or {}).items():
        *parents, leaf = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return validate(c)


def run_context(workdir, fields: dict[str, Any] | None = None, config=None, teacher=None):
    """The `RunContext` the pipeline would build for `config` (default `:tiny`) with `fields` set, in `workdir`;
    `teacher` reuses an already loaded teacher instead of loading the configured one."""
    from kdjax.context import RunContext
    from kdjax.workdir import Workdir

    return RunContext(tiny_settings(fields, config), Workdir(str(workdir)), teacher=teacher)


def retried_trial_number(trial) -> int | None:
    """The trial an Optuna trial retries (`RetryHeartbeatStaleTrialCallback.retried_trial_number`), without the
    ExperimentalWarning Optuna prints for that API on every call."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
