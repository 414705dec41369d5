"""Latency: protocol fields in the result, and the per-spec cache persisted as JSON."""

import json

from kdjax.latency import LatencyCache, LatencyConfig
from kdjax.spec import ArchSpec

SPEC = ArchSpec(num_layers=1, hidden_size=32, num_heads=2, ffn_size=64, vocab_size=100, max_position_embeddings=16)
CFG = LatencyConfig(device="cpu", batch_size=1, seq_len=8, warmup_runs=1, timed_runs=3)


def test_cache_persists_and_is_reused(tmp_path, monkeypatch):
    path = str(tmp_path / "latency.json")
    first, cached = LatencyCache(path, CFG).measure(SPEC)
    assert not cached and first["latency_ms"] > 0 and len(first["runs_ms"]) == 3
    assert first["measure_s"] >= first["compile_s"] >= 0
    assert first["latency_ms"] == sorted(first["runs_ms"])[1]  # median of the timed runs
    with open(path) as f:
        assert SPEC.arch_id in json.dumps(json.load(f)[CFG.key])

    import kdjax.latency

    def fail(*a, **k):
        raise AssertionError("re-measured a cached spec")

    monkeypatch.setattr(kdjax.latency, "measure", fail)
    again, cached = LatencyCache(path, CFG).measure(SPEC)  # a fresh object, as after a resume
    assert cached and again == first
    # Another protocol is another cache entry.
    other = LatencyCache(path, LatencyConfig(device="cpu", batch_size=2, seq_len=8))
    assert other.get(SPEC) is None
