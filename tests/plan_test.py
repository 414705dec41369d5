"""The run plan (steps, examples, FLOPs per stage) and the ETA extrapolated from the first timed steps."""

from types import SimpleNamespace

import pytest
from helpers import run_main

from kdjax import plan
from kdjax.plan import Eta, EtaHook, StagePlan


def _eta():
    return Eta(
        [
            StagePlan("nas", "", 100, 1000, 2e12),
            StagePlan("kd", "", 50, 500, 4e12),
            StagePlan("glue", "", 10, 100, 1e12, units={"sst2": 3.0, "rte": 1.0}, models=2),
            StagePlan("report", "", 0, 0, 0.0),
        ],
        min_interval_s=0.0,
    )


def test_nothing_is_guessed_before_a_timing():
    eta = _eta()
    sec, measured = eta.estimate("kd")
    assert sec != sec and not measured  # NaN: no rate yet
    assert "overall ? left" in eta.line("nas")


def test_first_timing_extrapolates_later_stages_by_flops(capsys):
    eta = _eta()
    line = eta.timed("nas", done=0.25, work=0.25, elapsed_s=50.0)  # 5e11 FLOPs in 50 s = 1e10 FLOP/s
    assert line in capsys.readouterr().out
    assert eta.estimate("nas") == (pytest.approx(150.0), True)
    assert eta.estimate("kd") == (pytest.approx(400.0), False)  # 4e12 / 1e10
    assert eta.estimate("glue") == (pytest.approx(100.0), False)
    assert "nas 2 min" in line and "kd ~7 min" in line and "overall 11 min" in line
    # kd's own timing replaces the extrapolation; a finished stage costs nothing more.
    eta.done("nas")
    eta.timed("kd", done=0.5, work=0.5, elapsed_s=100.0)
    assert eta.estimate("kd") == (pytest.approx(100.0), True) and eta.estimate("nas") == (0.0, True)
    assert eta.estimate("glue")[0] == pytest.approx(1e12 / (2e12 / 100.0))


def test_glue_progress_by_weighted_units():
    eta = _eta()
    eta.unit_done("glue", "sst2", 30.0)  # 3 of 8 units of cost in 30 s
    assert eta.estimate("glue") == (pytest.approx(50.0), True)
    assert eta.unit_done("glue", "cola", 5.0) is None  # not planned: ignored


def test_eta_hook_times_from_its_first_report(monkeypatch):
    calls = []
    monkeypatch.setattr(plan, "timed", lambda *a: calls.append(a))
    clock = iter([10.0, 12.0, 16.0])
    monkeypatch.setattr(plan.time, "perf_counter", lambda: next(clock))
    hook = EtaHook("kd", steps_before=20, stage_steps=100)
    for step in (2, 4, 8):
        hook(SimpleNamespace(step=step))
    # The first report (after compilation) is not timed; then 2 steps in 2 s and 6 steps in 6 s.
    assert calls == [("kd", 0.24, 0.02, 2.0), ("kd", 0.28, 0.06, 6.0)]


@pytest.mark.slow
def test_tiny_run_prints_the_plan_and_an_eta(tmp_path):
    proc = run_main(["--config=configs/bert_nas.py:tiny", "--config.stages=teacher,nas,kd", "--config.kd.pdt_steps=2"],
                    tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "plan (" in out and "  nas      lstm, 4 candidates x mini-KD 4 steps" in out
    assert "PDT of 3 winner(s) x 2 steps" in out
    assert "eta (nas timed): nas" in out and "overall" in out


def test_glue_plan_counts_steps_as_training_does(tmp_path, tiny_teacher):
    """A partial last batch is a step per task, epoch, rate and model (10 examples in batches of 4 are 3 steps, not
    2.5 summed over tasks and floored)."""
    from helpers import run_context

    from kdjax import plan

    fields = {
        "glue.models": "teacher",
        "glue.tasks": "sst2,stsb",
        "glue.max_train_examples": 10,
        "glue.per_device_batch_size": 4,
        "glue.num_epochs": 2,
        "glue.learning_rates": "1e-3,1e-4",
    }
    ctx = run_context(tmp_path, fields, teacher=tiny_teacher)
    glue = next(p for p in plan.build(ctx, ["glue"]) if p.name == "glue")
    per_epoch = -(-10 // (4 * ctx.mesh.size))  # the global batch is per device x devices, as in training
    assert glue.steps == 2 * per_epoch * 2 * 2  # tasks x batches x epochs x rates
