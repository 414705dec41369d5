"""KD trainer: learning happens, data-parallel step on 4 devices, checkpoint resume continues from the saved step,
hooks run at report steps and a pruning hook stops the run cleanly."""

import dataclasses

import jax
import numpy as np
import pytest

from kdjax.checkpoint import Checkpointer
from kdjax.data.batches import Batches, MaskingSpec
from kdjax.data.synthetic import lines
from kdjax.hooks import LogMetrics, Prune, SaveCheckpoints
from kdjax.losses import LossConfig
from kdjax.optim import OptimConfig
from kdjax.sharding import make_mesh
from kdjax.steps import TeacherOutputCache
from kdjax.train import DistillSettings, NonFiniteLossError, Student, distill


@pytest.fixture(scope="module")
def setup(tiny_teacher):
    from kdjax.data.corpus import pack_rows

    tok = tiny_teacher.tokenizer
    rows = pack_rows(
        tok(lines(300), add_special_tokens=False)["input_ids"], 32, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    )
    masking = MaskingSpec.from_tokenizer(tok)
    student = tiny_teacher.spec.student(num_layers=2, hidden_size=32, num_heads=2, ffn_size=64)
    return tiny_teacher, rows, masking, student


DEFAULT_LOSS = LossConfig()


class Rows:
    """Metric sink for `LogMetrics`."""

    def __init__(self):
        self.rows: dict[int, dict] = {}

    def write(self, step, scalars):
        self.rows[int(step)] = dict(scalars)

    def truncate_after(self, step):
        self.rows = {s: r for s, r in self.rows.items() if s <= step}


def _settings(steps, *, mesh=None, loss=DEFAULT_LOSS, lr=3e-3, total=None, dropout_rate=0.0):
    opt = OptimConfig(learning_rate=lr, total_steps=total or steps, warmup_steps=2)
    return DistillSettings(loss=loss, opt=opt, num_steps=steps, seed=0, mesh=mesh, dropout_rate=dropout_rate)


def _run(setup, steps, *, batch=8, ckpt=None, hooks=(), report_every=20, **settings):
    teacher, rows, masking, student = setup
    hooks = [*hooks, SaveCheckpoints(ckpt, every=4)] if ckpt is not None else list(hooks)
    return distill(
        teacher,
        Student(student),
        Batches(rows, batch, masking, seed=0),
        _settings(steps, **settings),
        hooks=hooks,
        report_every=report_every,
        progress=False,
    )


def test_loss_decreases_and_metrics_are_recorded(setup):
    r = _run(setup, 24)
    assert len(r.epoch_losses) >= 1 and np.isfinite(r.final_loss)
    first = _run(setup, 1, total=24).final_loss
    assert r.final_loss < 0.7 * first
    assert r.tokens > 0 and r.compile_s >= 0


def test_student_dropout_is_seeded_and_changes_training(setup):
    # kd.dropout_rate: the student drops with the step's key, so two runs agree exactly and differ from no dropout.
    a, b = _run(setup, 4, dropout_rate=0.3), _run(setup, 4, dropout_rate=0.3)
    plain = _run(setup, 4)
    assert a.final_loss == b.final_loss and np.isfinite(a.final_loss)
    assert a.final_loss != plain.final_loss
    leaves = zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in leaves)


def test_all_three_losses_with_mlm_teacher(setup):
    loss = LossConfig(hidden_weight=1.0, attention_relation_weight=1.0, logit_weight=0.5)
    r = _run(setup, 3, loss=loss)
    assert np.isfinite(r.final_loss)


def test_data_parallel_on_four_devices_matches_one(setup):
    assert jax.device_count() >= 4
    one = _run(setup, 3, mesh=make_mesh(jax.devices()[:1]))
    four = _run(setup, 3, mesh=make_mesh(jax.devices()[:4]))
    assert abs(one.final_loss - four.final_loss) <= 1e-5 * abs(one.final_loss)


def test_resume_continues_from_checkpoint_and_logs_as_an_unbroken_run(setup, tmp_path):
    """Report steps are the union of report_every, each hook's `every` and the last step, so a checkpoint step
    always closes a logging window: a resumed run logs exactly the rows of an unbroken one."""
    full_rows, rows = Rows(), Rows()
    full_ck = Checkpointer(str(tmp_path / "a"), interval_steps=4, final_step=8)
    full = _run(setup, 8, ckpt=full_ck, hooks=[LogMetrics(full_rows)], report_every=3)
    full_ck.close()
    assert sorted(full_rows.rows) == [3, 4, 6, 8]  # 3, 6: report_every; 4, 8: checkpoints; 8: the last step
    ck = Checkpointer(str(tmp_path / "b"), interval_steps=4, final_step=8)
    # "Stopped" after step 4 (same schedule as the 8-step run) ...
    _run(setup, 4, ckpt=ck, total=8, hooks=[LogMetrics(rows)], report_every=3)
    ck.close()  # saves are written in the background: their owner waits for them before another manager opens
    assert ck.latest_step() == 4
    rows.rows[6] = {"loss": -1.0}  # ... after logging step 6, as a run killed at step 7 would have
    ck = Checkpointer(str(tmp_path / "b"), interval_steps=4, final_step=8)
    resumed = _run(setup, 8, ckpt=ck, hooks=[LogMetrics(rows)], report_every=3)
    ck.close()
    assert resumed.resumed_from == 4
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert resumed.final_loss == pytest.approx(full.final_loss, rel=1e-6)
    assert sorted(rows.rows) == sorted(full_rows.rows)
    for step, row in full_rows.rows.items():
        assert rows.rows[step]["loss"] == pytest.approx(row["loss"], rel=1e-6)


def test_non_finite_loss_stops_with_clear_error(setup):
    teacher, rows, masking, student = setup
    bad = dict(teacher.params)
    bad["encoder"] = jax.tree.map(lambda x: x * np.nan, teacher.params["encoder"])
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        distill(
            dataclasses.replace(teacher, params=bad),
            Student(student),
            Batches(rows, 4, masking, seed=0),
            _settings(2, lr=1e-3),
            progress=False,
        )


def test_teacher_output_cache_is_exact_and_shared_across_students(setup):
    """Two students on the same batches: the second reuses every teacher output and trains bit for bit the same."""
    teacher, rows, masking, student = setup
    other = teacher.spec.student(num_layers=1, hidden_size=32, num_heads=4, ffn_size=32)
    batches = Batches(rows, 8, masking, seed=0)

    def run(spec, cache):
        settings = _settings(5, loss=LossConfig(attention_relation_weight=1.0))
        return distill(teacher, Student(spec), batches, settings, teacher_cache=cache, progress=False)

    cache = TeacherOutputCache(max_bytes=2**30)
    first = run(other, cache)
    assert cache.stats()["cached_steps"] == 5 and cache.hits == 0 and cache.misses == 5
    cached = run(student, cache)
    assert cache.hits == 5 and cache.misses == 5
    plain = run(student, None)
    np.testing.assert_array_equal(cached.epoch_losses, plain.epoch_losses)
    for a, b in zip(jax.tree.leaves(cached.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert first.epoch_losses != plain.epoch_losses  # a different student, so the comparison above can fail

    # A budget of two steps' outputs keeps the first two steps and recomputes the rest.
    step_bytes = cache.nbytes // 5
    small = TeacherOutputCache(max_bytes=2 * step_bytes)
    run(student, small)
    run(student, small)
    assert small.stats()["cached_steps"] == 2 and small.hits == 2 and small.misses == 8

    # Another key (here other teacher params) empties the cache instead of serving outputs of other inputs.
    calls = []
    cache.get(("x",) + cache.key[1:], 0, lambda: calls.append(1) or {"h": jax.numpy.zeros(2)})
    assert calls == [1] and cache.stats()["cached_steps"] == 1


def test_compiled_programs_are_bounded_least_recently_used_first(monkeypatch):
    import collections

    from kdjax import steps

    monkeypatch.setattr(steps, "MAX_COMPILED", 2)
    monkeypatch.setattr(steps, "_COMPILED", collections.OrderedDict())
    built = []
    for key in ("a", "b", "a", "c", "a"):
        steps._compile(key, lambda key=key: built.append(key) or object())
    assert list(steps._COMPILED) == ["c", "a"] and built == ["a", "b", "c"]  # "b" was evicted, "a" never rebuilt


def test_a_program_compiling_on_one_thread_is_waited_for_by_another(monkeypatch):
    """The compile-ahead thread and the training thread ask for the same program: it is built once, both get it, and
    the waiting call counts its wait as compile time; a failed build reaches the waiter too, and is retried after."""
    import collections
    import threading

    from kdjax import steps

    monkeypatch.setattr(steps, "_COMPILED", collections.OrderedDict())
    started, release, built = threading.Event(), threading.Event(), []

    def slow_build():
        started.set()
        release.wait(10)
        built.append(1)
        return "program"

    got = {}
    thread = threading.Thread(target=lambda: got.setdefault("thread", steps._compile(("k",), slow_build)))
    thread.start()
    assert started.wait(10)
    threading.Timer(0.3, release.set).start()
    program, waited = steps._compile(("k",), lambda: built.append("again") or "other")
    thread.join(10)
    assert program == "program" and got["thread"][0] == "program" and built == [1] and waited >= 0.2

    started.clear()
    release.clear()

    def failing():
        started.set()
        release.wait(10)
        raise RuntimeError("no memory")

    errors = []
    thread = threading.Thread(target=lambda: errors.append(_raised(lambda: steps._compile(("bad",), failing))))
    thread.start()
    assert started.wait(10)
    threading.Timer(0.3, release.set).start()
    assert "no memory" in _raised(lambda: steps._compile(("bad",), lambda: "unused"))
    thread.join(10)
    assert "no memory" in errors[0] and ("bad",) not in steps._IN_FLIGHT
    assert steps._compile(("bad",), lambda: "fixed")[0] == "fixed"


def _raised(fn) -> str:
    try:
        fn()
    except RuntimeError as e:
        return str(e)
    return ""


def test_prune_hook_stops_after_an_epoch_with_the_state_of_a_shorter_run(setup):
    teacher, rows, masking, student = setup
    batches = Batches(rows, 8, masking, seed=0)
    batches.steps_per_epoch = spe = 3  # short epochs, as nas.minikd.CappedBatches makes them
    seen = []

    def should_stop(epoch, loss):
        seen.append((epoch, loss))
        return epoch == 1

    settings = _settings(4 * spe)
    pruned = distill(teacher, Student(student), batches, settings, hooks=[Prune(spe, should_stop)], progress=False)
    assert pruned.stopped == "pruned after epoch 2" and pruned.steps == 2 * spe
    assert [e for e, _ in seen] == [0, 1] and [x for _, x in seen] == pruned.epoch_losses
    # The same schedule (total 4 epochs) run for exactly two epochs: the stop left nothing half done.
    short = distill(
        teacher, Student(student), batches, dataclasses.replace(settings, num_steps=2 * spe), progress=False
    )
    assert short.stopped is None and short.epoch_losses == pruned.epoch_losses
    for a, b in zip(jax.tree.leaves(short.params), jax.tree.leaves(pruned.params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("init", ["random", "teacher"])
def test_scanned_layers_train_like_the_per_layer_stack(setup, init):
    """`scan_layers` changes how the student is compiled, not what it learns: same losses, same returned weights (in
    the per-layer layout), from a random or a teacher-cut start; the losses read per-layer outputs."""
    from kdjax.student_init import initial_params, initial_projection

    teacher, rows, masking, student = setup
    # The logit loss needs an MLM head, which a teacher cut does not carry.
    loss = LossConfig(hidden_weight=1.0, attention_relation_weight=1.0, logit_weight=0.5 if init == "random" else 0.0)
    start = Student(
        student,
        initial_params(init, teacher.params, teacher.spec, student),
        initial_projection(init, teacher.params, teacher.spec, student),
    )
    runs = []
    for scan in (False, True):
        settings = dataclasses.replace(_settings(4, loss=loss), scan_layers=scan)
        runs.append(distill(teacher, start, Batches(rows, 8, masking, seed=0), settings, progress=False))
    plain, scanned = runs
    np.testing.assert_allclose(scanned.epoch_losses, plain.epoch_losses, rtol=1e-5)
    assert jax.tree.structure(scanned.params) == jax.tree.structure(plain.params)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(scanned.params), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert scanned.compile_s > 0
