"""Latency: load-resistant protocol, machine cache (shared, keyed, self-healing), teacher key, latency model."""

import json
import logging
import os

import numpy as np
import pytest

import kdjax.latency as latency
from kdjax.latency import LatencyCache, LatencyConfig, MachineCache, spec_key
from kdjax.latency_model import FEATURES, LatencyModel, calibration_specs, features, fit
from kdjax.search_latency import SearchLatency, teacher_identity, teacher_latency
from kdjax.spec import ArchSpec

SPEC = ArchSpec(num_layers=1, hidden_size=32, num_heads=2, ffn_size=64, vocab_size=100, max_position_embeddings=16)
TEACHER = ArchSpec(num_layers=2, hidden_size=64, num_heads=2, ffn_size=128, vocab_size=100, max_position_embeddings=16)


def cfg(tmp_path, **kw) -> LatencyConfig:
    base = dict(device="cpu", batch_size=1, seq_len=8, warmup_runs=1, timed_runs=10, cache_dir=str(tmp_path / "mc"))
    return LatencyConfig(**{**base, **kw})


def loaded_timer(monkeypatch, seed: int, base_ms: float | None = None, spike_rate: float = 0.3):
    """Replace the clock reading with one under bursts of load: `spike_rate` of the runs take 5-50x longer."""
    rng = np.random.default_rng(seed)
    real = latency._timed_run

    def timed(run):
        t = real(run) if base_ms is None else base_ms
        return t * (rng.uniform(5, 50) if rng.random() < spike_rate else 1.0)

    monkeypatch.setattr(latency, "_timed_run", timed)


def test_low_percentile_ignores_load_spikes(tmp_path, monkeypatch):
    loaded_timer(monkeypatch, seed=0, base_ms=2.0)
    res = latency.measure(SPEC, cfg(tmp_path, timed_runs=30))
    assert res["latency_ms"] == pytest.approx(2.0)  # p10 of 30 runs, ~9 of them spiked
    assert res["p90_ms"] > 10.0 and res["spread"] > 5.0 and res["runs"] == 30 == len(res["runs_ms"])
    assert res["protocol"] == cfg(tmp_path, timed_runs=30).key


def test_machine_cache_is_shared_keyed_by_protocol_and_heals(tmp_path, monkeypatch, caplog):
    c = cfg(tmp_path)
    first, cached = LatencyCache(c).measure(SPEC)
    assert not cached and first["latency_ms"] > 0
    path = MachineCache(c).path
    assert path.startswith(str(tmp_path / "mc")) and SPEC.arch_id in open(path).read()

    def fail(*a, **k):
        raise AssertionError("re-measured a cached spec")

    monkeypatch.setattr(latency, "measure_many", fail)
    again, cached = LatencyCache(c).measure(SPEC)  # another object, as in another workdir or a resumed run
    assert cached and again == first
    assert LatencyCache(cfg(tmp_path, seq_len=16)).get(SPEC) is None  # another protocol, another entry
    monkeypatch.undo()

    for damage in ("{not json", json.dumps({"protocols": []}), json.dumps([1, 2])):
        with open(path, "w") as f:
            f.write(damage)
        with caplog.at_level(logging.WARNING):
            res, cached = LatencyCache(c).measure(SPEC)
        assert not cached and res["latency_ms"] > 0 and "damaged" in caplog.text
        assert json.load(open(path))["protocols"][c.key][spec_key(SPEC)]["latency_ms"] == res["latency_ms"]
        caplog.clear()


def test_teacher_latency_keyed_by_teacher_identity(tmp_path, monkeypatch, caplog):
    c = cfg(tmp_path)
    calls = []
    real = latency.measure_many

    def counting(specs, *a, **k):
        calls.append(sorted(specs))
        return real(specs, *a, **k)

    monkeypatch.setattr("kdjax.search_latency.measure_many", counting)
    record = str(tmp_path / "w" / "teacher" / "latency.json")
    a = teacher_identity("teacher-a", {"hidden_size": 64})
    b = teacher_identity("teacher-b", {"hidden_size": 64})
    assert a != b and a == teacher_identity("teacher-a", {"hidden_size": 64})
    ra = teacher_latency(TEACHER, a, c, record)
    assert len(calls) == 1 and ra["teacher_identity"] == a
    rb = teacher_latency(TEACHER, b, c, record)  # a changed teacher is timed, not given the old one's latency
    assert len(calls) == 2 and rb["teacher_identity"] == b
    assert {v["teacher_identity"] for v in json.load(open(record)).values()} == {a, b}
    # Another workdir on the same machine: the teacher comes from the machine cache, untimed.
    assert teacher_latency(TEACHER, a, c, str(tmp_path / "w2" / "latency.json"))["latency_ms"] == ra["latency_ms"]
    assert len(calls) == 2
    with open(record, "w") as f:
        f.write("\x00garbage")
    with caplog.at_level(logging.WARNING):
        again = teacher_latency(TEACHER, a, c, record)
    assert "damaged" in caplog.text and again["latency_ms"] == ra["latency_ms"] and len(calls) == 2
    assert a in next(iter(json.load(open(record))))


def test_fit_recovers_a_known_cost_model():
    true = np.zeros(len(FEATURES))
    for name, v in (("call", 0.05), ("layer", 0.01), ("matmul", 2e-8), ("attention", 5e-8), ("act_gelu", 1e-7)):
        true[FEATURES.index(name)] = v
    specs = calibration_specs()
    lat = [float(true @ features(s, 1, 128)) for s in specs]
    model = fit(specs, lat, 1, 128)
    assert model.fit["max_rel_err"] < 1e-3 and all(c >= 0 for c in model.coef)
    probe = ArchSpec(6, 384, 12, 1536)
    assert model.predict(probe) == pytest.approx(float(true @ features(probe, 1, 128)), rel=1e-3)
    assert model.predict(ArchSpec(7, 384, 12, 1536)) > model.predict(probe)  # monotone in depth
    assert LatencyModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model


def fake_timings(monkeypatch):
    """Calibration without compiling: latency = a fixed cost per parameter (the pin logic is under test, not XLA)."""

    def measure_many(specs, cfg, params=None, seed=0):
        return {k: {"latency_ms": 0.1 + s.num_params * 1e-6, "spread": 1.0} for k, s in specs.items()}

    monkeypatch.setattr(latency, "measure_many", measure_many)


def test_pinned_model_survives_a_cleared_machine_cache(tmp_path, monkeypatch):
    fake_timings(monkeypatch)
    c = cfg(tmp_path, timed_runs=3, cache_dir=str(tmp_path / "mc1"))
    pin = str(tmp_path / "nas" / "latency.json")
    first = SearchLatency(c, TEACHER, "t1", pin, measured_teacher_ms=1.0)
    assert first.model is not None and first.student(SPEC)["latency_source"] == "model"

    def fail(*a, **k):
        raise AssertionError("re-fitted a pinned model")

    monkeypatch.setattr("kdjax.latency_model.MachineCache.measure_specs", fail)
    c2 = cfg(tmp_path, timed_runs=3, cache_dir=str(tmp_path / "mc2"))  # an empty machine cache
    again = SearchLatency(c2, TEACHER, "t1", pin, measured_teacher_ms=9.0)
    assert again.teacher_ms == first.teacher_ms and again.student(SPEC) == first.student(SPEC)
    with pytest.raises(AssertionError, match="pinned"):
        SearchLatency(c2, TEACHER, "another-teacher", pin, measured_teacher_ms=1.0)  # pin is not reused
    with open(pin, "w") as f:
        f.write("{")
    monkeypatch.undo()
    fake_timings(monkeypatch)
    healed = SearchLatency(c, TEACHER, "t1", pin, measured_teacher_ms=1.0)  # damaged pin: machine model, re-pinned
    assert healed.teacher_ms == first.teacher_ms and json.load(open(pin))["teacher"] == "t1"


def test_measured_source_times_candidates_beside_the_teacher(tmp_path):
    c = cfg(tmp_path, source="measured", timed_runs=3)
    sl = SearchLatency(c, TEACHER, "t1", str(tmp_path / "pin.json"), measured_teacher_ms=4.0)
    assert sl.model is None and sl.teacher_ms == 4.0
    rec = sl.student(SPEC)
    assert rec["latency_source"] == "measured" and rec["latency_ms"] > 0 and rec["latency_spread"] >= 1.0
    assert sl.student(SPEC) == rec  # cached on the machine


@pytest.mark.slow
def test_same_seed_same_search_under_load(tiny_teacher, tmp_path, monkeypatch):
    """Two :tiny LSTM searches in two workdirs, each under a different burst pattern of load, sample the same
    architectures with the same rewards and pick the same winner."""
    from helpers import run_context

    from kdjax.nas import stage

    def search(name: str, noise_seed: int) -> list[tuple]:
        loaded_timer(monkeypatch, noise_seed, spike_rate=0.4)
        fields = {
            "stages": "nas",
            "nas.mini_kd_steps_per_epoch": 1,
            "nas.latency_cache_dir": str(tmp_path / "machine"),
            "nas.space.num_layers": "1,2",
            "nas.space.ffn_size": "64",
        }
        ctx = run_context(tmp_path / name, fields, teacher=tiny_teacher)
        stage.run(ctx)
        with open(os.path.join(ctx.workdir.root, "nas", "history.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        top = json.load(open(os.path.join(ctx.workdir.root, "nas", "top_k.json")))["top_k"][0]["arch_id"]
        keys = ("episode", "candidate", "arch_id", "latency_ms", "teacher_latency_ms", "loss", "reward")
        return [tuple(r.get(k) for k in keys) for r in rows] + [top]

    first = search("a", noise_seed=1)
    assert len(first) >= 3
    assert search("b", noise_seed=2) == first


@pytest.mark.parametrize("max_hidden", [64, 256, 384, 512, 768, 1024])
def test_calibration_pins_every_direction_of_the_cost_model_twice_over(max_hidden):
    """Every teacher's calibration set separates all the cost terms the features can tell apart, with at least twice
    as many shapes as terms: 9 shapes up to 384 wide (the set before) fitted 9 terms exactly and extrapolated a deep,
    narrow-FFN student 1.5x too fast. A cost model with an attention term is then recovered from noisy timings."""

    def rank(specs):
        a = np.stack([features(s, 1, 128) for s in specs])
        a = a / np.maximum(np.linalg.norm(a, axis=0), 1e-30)
        return np.linalg.matrix_rank(a, tol=1e-9 * np.linalg.norm(a, 2))

    grid = [
        ArchSpec(n, h, a, f, act)
        for n in (1, 3, 12)
        for h in (64, 768)
        for a in (1, 4)
        for f in (32, 3072)
        for act in ("gelu", "relu", "silu")
    ]
    specs = calibration_specs(max_hidden)
    assert rank(specs) == rank(grid) and len(specs) >= 2 * rank(grid)
    true = np.zeros(len(FEATURES))
    for name, v in (("call", 0.05), ("layer", 0.02), ("matmul", 4e-9), ("attention", 2e-8), ("act_gelu", 1e-6)):
        true[FEATURES.index(name)] = v
    noise = np.random.default_rng(0).uniform(0.97, 1.03, len(specs))  # +-3% timing noise
    model = fit(specs, [float(true @ features(s, 1, 128)) * e for s, e in zip(specs, noise)], 1, 128)
    assert model.fit["loo_median_rel_err"] < 0.05 and model.fit["loo_max_rel_err"] < 0.15
    deep = ArchSpec(6, min(384, max_hidden), 2, 32, "silu")  # deep, narrow FFN: attention and layers dominate
    assert model.predict(deep) == pytest.approx(float(true @ features(deep, 1, 128)), rel=0.1)
