"""KD trainer: learning happens, data-parallel step on 4 devices, checkpoint resume continues from the saved step."""

import jax
import numpy as np
import pytest

from kdjax.checkpoint import Checkpointer
from kdjax.data.batches import Batches, MaskingSpec
from kdjax.data.synthetic import lines
from kdjax.losses import LossConfig
from kdjax.train import NonFiniteLossError, OptimConfig, TeacherOutputCache, distill, make_mesh


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


def _run(setup, steps, *, batch=8, mesh=None, ckpt=None, loss=DEFAULT_LOSS, lr=3e-3, total=None):
    teacher, rows, masking, student = setup
    return distill(
        teacher_spec=teacher.spec,
        teacher_params=teacher.params,
        student=student,
        batches=Batches(rows, batch, masking, seed=0),
        loss_cfg=loss,
        opt=OptimConfig(learning_rate=lr, total_steps=total or steps, warmup_steps=2),
        num_steps=steps,
        seed=0,
        mesh=mesh,
        checkpointer=ckpt,
        checkpoint_every=4,
        progress=False,
    )


def test_loss_decreases_and_metrics_are_recorded(setup):
    r = _run(setup, 24)
    assert len(r.epoch_losses) >= 1 and np.isfinite(r.final_loss)
    first = _run(setup, 1, total=24).final_loss
    assert r.final_loss < 0.7 * first
    assert r.tokens > 0 and r.compile_s >= 0


def test_all_three_losses_with_mlm_teacher(setup):
    loss = LossConfig(hidden_weight=1.0, attention_relation_weight=1.0, logit_weight=0.5)
    r = _run(setup, 3, loss=loss)
    assert np.isfinite(r.final_loss)


def test_data_parallel_on_four_devices_matches_one(setup):
    assert jax.device_count() >= 4
    one = _run(setup, 3, mesh=make_mesh(jax.devices()[:1]))
    four = _run(setup, 3, mesh=make_mesh(jax.devices()[:4]))
    assert abs(one.final_loss - four.final_loss) <= 1e-5 * abs(one.final_loss)


def test_resume_continues_from_checkpoint(setup, tmp_path):
    full_ck = Checkpointer(str(tmp_path / "a"))
    full = _run(setup, 8, ckpt=full_ck)
    full_ck.close()
    ck = Checkpointer(str(tmp_path / "b"))
    _run(setup, 4, ckpt=ck, total=8)  # "stopped" after step 4 (same schedule as the 8-step run)
    ck.close()  # saves are written in the background: the owner waits for them before another manager opens
    assert ck.latest_step() == 4
    ck = Checkpointer(str(tmp_path / "b"))
    resumed = _run(setup, 8, ckpt=ck)
    ck.close()
    assert resumed.resumed_from == 4
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert resumed.final_loss == pytest.approx(full.final_loss, rel=1e-6)


def test_non_finite_loss_stops_with_clear_error(setup):
    teacher, rows, masking, student = setup
    bad = dict(teacher.params)
    bad["encoder"] = jax.tree.map(lambda x: x * np.nan, teacher.params["encoder"])
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        distill(
            teacher_spec=teacher.spec,
            teacher_params=bad,
            student=student,
            batches=Batches(rows, 4, masking, seed=0),
            loss_cfg=LossConfig(),
            opt=OptimConfig(learning_rate=1e-3, total_steps=2),
            num_steps=2,
            seed=0,
            progress=False,
        )


def test_teacher_output_cache_is_exact_and_shared_across_students(setup):
    """Two students on the same batches: the second reuses every teacher output and trains bit for bit the same."""
    teacher, rows, masking, student = setup
    other = teacher.spec.student(num_layers=1, hidden_size=32, num_heads=4, ffn_size=32)
    batches = Batches(rows, 8, masking, seed=0)

    def run(spec, cache):
        return distill(
            teacher_spec=teacher.spec,
            teacher_params=teacher.params,
            student=spec,
            batches=batches,
            loss_cfg=LossConfig(attention_relation_weight=1.0),
            opt=OptimConfig(learning_rate=3e-3, total_steps=5, warmup_steps=2),
            num_steps=5,
            seed=0,
            progress=False,
            teacher_cache=cache,
        )

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
    import types

    from kdjax import train

    monkeypatch.setattr(train, "MAX_COMPILED", 2)
    monkeypatch.setattr(train, "_COMPILED", collections.OrderedDict())
    lowered = []

    class Jitted:
        def lower(self, *args):
            lowered.append(args)
            return types.SimpleNamespace(compile=object)

    j = Jitted()
    for key in ("a", "b", "a", "c", "a"):
        train._compile(key, j)
    assert list(train._COMPILED) == ["c", "a"] and len(lowered) == 3  # "b" was evicted, "a" never recompiled
