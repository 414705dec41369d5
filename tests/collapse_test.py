"""Collapse guard: a healthy student passes, a collapsed one (zeroed / constant output) warns or stops the kd stage."""

import json
import os
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from kdjax.collapse import (
    CollapseError,
    CollapseGuard,
    CollapseHook,
    GuardConfig,
    diagnose,
    measure,
    probe_batch,
    spread,
)
from kdjax.student_init import from_teacher

TEACHER = {"token_std": 0.4, "mean_cls_cosine": 0.8}


def test_spread_of_constant_and_varied_states():
    mask = np.ones((3, 4), np.int32)
    const = np.tile(np.arange(8, dtype=np.float32), (3, 4, 1))
    std, cos = spread(const, mask)
    assert float(std) == pytest.approx(0.0, abs=1e-6) and float(cos) == pytest.approx(1.0, abs=1e-6)
    varied = np.random.default_rng(0).normal(size=(3, 4, 8)).astype(np.float32)
    std, cos = spread(varied, mask)
    assert float(std) > 0.5 and float(cos) < 0.9
    # Padding does not count: the varied states behind a zero mask leave the constant ones constant.
    mixed = const.copy()
    mixed[:, 3] = varied[:, 3]
    mask[:, 3] = 0
    assert float(spread(mixed, mask)[0]) == pytest.approx(0.0, abs=1e-6)


def test_diagnose_thresholds():
    cfg = GuardConfig()
    assert diagnose({"token_std": 0.3, "mean_cls_cosine": 0.9}, TEACHER, cfg) == []
    assert "token std" in diagnose({"token_std": 0.05, "mean_cls_cosine": 0.9}, TEACHER, cfg)[0]
    assert "[CLS] cosine" in diagnose({"token_std": 0.3, "mean_cls_cosine": 0.995}, TEACHER, cfg)[0]
    # A teacher whose own sentences look alike does not make a similar student count as collapsed.
    assert diagnose({"token_std": 0.3, "mean_cls_cosine": 0.995}, {**TEACHER, "mean_cls_cosine": 0.99}, cfg) == []


def _zeroed(params):
    return jax.tree.map(np.zeros_like, params)


@pytest.mark.parametrize("mode", ["warn", "stop"])
def test_guard_on_a_healthy_and_a_zeroed_student(tiny_teacher, tmp_path, capsys, mode):
    spec = tiny_teacher.spec.student(num_layers=2)
    healthy = from_teacher(tiny_teacher.params, tiny_teacher.spec, spec)
    guard = CollapseGuard(GuardConfig(mode=mode), tiny_teacher, spec, str(tmp_path), "kd test")
    ids, mask = probe_batch(tiny_teacher.tokenizer)
    assert measure(spec, healthy, ids, mask)["token_std"] > 0.2 * guard.teacher["token_std"]
    assert guard.check(3, healthy) == []

    hook = CollapseHook(guard, every=3)
    collapsed = SimpleNamespace(step=6, num_steps=10, state=SimpleNamespace(params={"student": _zeroed(healthy)}))
    hook(SimpleNamespace(step=5, num_steps=10, state=None))  # not a checkpoint step: nothing measured
    if mode == "stop":
        with pytest.raises(CollapseError, match="collapsed at step 6: token std"):
            hook(collapsed)
    else:
        hook(collapsed)
        assert "kdjax: WARNING: kd test collapsed at step 6" in capsys.readouterr().err
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "collapse.jsonl"))]
    assert [(r["step"], r["collapsed"]) for r in rows] == [(3, False), (6, True)]


@pytest.mark.slow
def test_kd_stage_stops_on_a_collapsed_student(tmp_path, monkeypatch):
    """The real kd stage with a student whose weights are all zero: one CollapseError at the first checkpoint."""
    from kdjax import kd_stage, pipeline
    from kdjax.config import base_config

    real = kd_stage.initial_params
    monkeypatch.setattr(kd_stage, "initial_params", lambda *a: _zeroed(real("teacher", *a[1:])))
    c = base_config("bert-base-uncased", "tiny")
    c.stages = "kd"
    c.kd.collapse_guard = "stop"
    c.kd.learning_rate = 1e-9  # stays collapsed
    with pytest.raises(CollapseError, match="collapsed at step 3"):
        pipeline.run(c, str(tmp_path))
    out = tmp_path / "kd" / "2L-32H-2A-64F-gelu"
    # SaveCheckpoints runs before the guard: the state is kept (beside it, the settings it was made with)
    assert sorted(os.listdir(out / "checkpoints")) == ["3", "settings.json"]
    assert not (tmp_path / ".stages" / "kd.json").exists()
