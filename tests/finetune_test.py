"""GLUE fine-tuning on the tiny random teacher: STS-B as regression, classification, reproducibility, sharding."""

import functools

import jax
import numpy as np
import pytest

from kdjax import glue_data
from kdjax.data.synthetic_glue import write_glue_dir
from kdjax.finetune import Recipe, finetune
from kdjax.finetune_steps import Head, init_params, weighted_loss
from kdjax.sharding import make_mesh


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return write_glue_dir(str(tmp_path_factory.mktemp("glue")), n_train=64, n_dev=16)


def _recipe(**kw):
    base = dict(learning_rates=(1e-3,), per_device_batch_size=4, num_epochs=3, warmup_fraction=0.1, max_seq_len=64)
    return Recipe(**(base | kw))


def test_stsb_is_regression_and_loss_decreases(tiny_teacher, glue_dir):
    data = glue_data.load_task("stsb", glue_dir)
    head = Head(tiny_teacher.spec, data.task.num_labels)
    params = init_params(jax.random.PRNGKey(0), head, tiny_teacher.params)
    assert head.regression and params["classifier"]["kernel"].shape[-1] == 1
    out = finetune(
        spec=tiny_teacher.spec,
        pretrained=tiny_teacher.params,
        tokenizer=tiny_teacher.tokenizer,
        task_data=data,
        recipe=_recipe(),
        mesh=make_mesh(),
        progress=False,
    )
    assert jax.device_count() == 4 and out["global_batch_size"] == 16
    assert set(out["scores"]) == {"pearson", "spearman"}
    assert all(np.isfinite(v) for v in out["scores"].values())
    losses = out["train_loss_per_epoch"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert out["num_dev_examples"] == {"dev": 16} and out["num_train_examples"] == 64


def test_classification_runs_and_is_reproducible(tiny_teacher, glue_dir):
    data = glue_data.load_task("mnli", glue_dir)
    kw = dict(
        spec=tiny_teacher.spec,
        pretrained=tiny_teacher.params,
        tokenizer=tiny_teacher.tokenizer,
        task_data=data,
        recipe=_recipe(num_epochs=1, max_train_examples=40),
        progress=False,
    )
    a, b = finetune(**kw), finetune(**kw)
    assert set(a["scores"]) == {"matched_accuracy", "mismatched_accuracy"}
    assert a["num_train_examples"] == 40 and a["num_train_examples_available"] == 64
    assert a["scores"] == b["scores"] and a["train_loss_per_epoch"] == b["train_loss_per_epoch"]


def test_weighted_loss_ignores_filler_rows():
    logits = jax.numpy.asarray([[1.0, 0.0], [0.0, 5.0]])
    labels = jax.numpy.asarray([0, 0])
    full = weighted_loss(logits, labels, jax.numpy.asarray([1.0, 1.0]), False)
    first = weighted_loss(logits, labels, jax.numpy.asarray([1.0, 0.0]), False)
    assert first < full
    np.testing.assert_allclose(first, np.log(1 + np.exp(-1.0)), rtol=1e-5)
    reg = weighted_loss(
        jax.numpy.asarray([[2.0], [9.0]]), jax.numpy.asarray([1.0, 0.0]), jax.numpy.asarray([1.0, 0.0]), True
    )
    np.testing.assert_allclose(reg, 1.0)


def test_learning_rate_grid_records_every_point_and_compiles_once(tiny_teacher, glue_dir, monkeypatch):
    from kdjax import finetune as ft

    data = glue_data.load_task("sst2", glue_dir)
    rates = (3e-3, 1e-3, 1e-5)
    recipe = _recipe(learning_rates=rates, num_epochs=2, per_device_batch_size=2, bucket=8)
    ft.jitted_train_step.cache_clear()
    monkeypatch.setattr(ft, "jitted_train_step", functools.lru_cache(maxsize=8)(ft.jitted_train_step.__wrapped__))
    factory = ft.jitted_train_step
    out = finetune(
        spec=tiny_teacher.spec,
        pretrained=tiny_teacher.params,
        tokenizer=tiny_teacher.tokenizer,
        task_data=data,
        recipe=recipe,
        progress=False,
        keep_params=True,
    )
    assert [p["learning_rate"] for p in out["grid"]] == list(rates)
    assert all(len(p["train_loss_per_epoch"][0]) == 2 and "scores" in p for p in out["grid"])
    best = max(out["grid"], key=lambda p: p["score"])
    assert out["picked_lr"] == best["learning_rate"] and out["scores"] == best["scores"]
    # The grid points differ (the rate really reaches the optimiser)...
    assert len({tuple(p["train_loss_per_epoch"][0]) for p in out["grid"]}) == 3
    # ...yet share one jitted step (one factory call missed the cache for three rates), compiled once per bucketed
    # batch length, not once per rate.
    info = factory.cache_info()
    assert info.misses == 1 and info.hits == len(rates) - 1
    head = Head(tiny_teacher.spec, 2, recipe.compute_dtype, recipe.dropout_rate)
    fn = factory(head, _unit_opt(data, recipe), None, make_mesh())
    assert factory.cache_info().misses == 1
    train = glue_data.encode(tiny_teacher.tokenizer, data.train, recipe.max_seq_len)
    lengths = {
        glue_data.bucket_length(int(train.lengths[idx].max()), recipe.bucket, recipe.max_seq_len)
        for e in range(recipe.num_epochs)
        for idx in ft.epoch_order(train.lengths, 8, e, recipe.seed, recipe.length_window)
    }
    assert fn._cache_size() == len(lengths)
    assert set(out["params"]) == {"bert", "pooler", "classifier"}


def _unit_opt(data, recipe):
    """The optimiser config finetune builds for this run (peak 1: the rate is in the state)."""
    from kdjax.optim import OptimConfig

    total = glue_data.steps_per_epoch(len(data.train), 8) * recipe.num_epochs
    return OptimConfig(1.0, total, int(recipe.warmup_fraction * total), "linear", recipe.weight_decay, 1.0)


def test_seeds_for_small_tasks_only():
    r = Recipe(seeds=3, small_task_examples=100, seed=5)
    assert r.seeds_for(100) == [5, 6, 7] and r.seeds_for(101) == [5]
    assert Recipe(learning_rates=(1e-4,)).to_dict()["learning_rates"] == [1e-4]


def test_several_seeds_report_mean_and_spread(tiny_teacher, glue_dir):
    data = glue_data.load_task("rte", glue_dir)
    out = finetune(
        spec=tiny_teacher.spec,
        pretrained=tiny_teacher.params,
        tokenizer=tiny_teacher.tokenizer,
        task_data=data,
        recipe=_recipe(num_epochs=1, seeds=2, max_train_examples=16),
        progress=False,
    )
    (point,) = out["grid"]
    assert out["seeds"] == [0, 1] and len(point["seed_scores"]) == 2
    mean = np.mean([r["accuracy"] for r in point["seed_scores"]])
    assert out["scores"]["accuracy"] == pytest.approx(mean) and out["score_std"] >= 0


def test_runs_of_an_earlier_score_are_read_not_trained(tiny_teacher, glue_dir):
    """A grid and seeds grown after a score: the runs it made are read (kdjax.glue_runs), the rest trained, and the
    result is the one a score made from scratch gives."""
    from kdjax.glue_runs import runs_of

    kw = dict(
        spec=tiny_teacher.spec,
        pretrained=tiny_teacher.params,
        tokenizer=tiny_teacher.tokenizer,
        task_data=glue_data.load_task("rte", glue_dir),
        progress=False,
    )
    grown = _recipe(num_epochs=1, max_train_examples=16, learning_rates=(1e-3, 3e-4), seeds=2)
    scratch = finetune(**kw, recipe=grown)
    first = finetune(**kw, recipe=_recipe(num_epochs=1, max_train_examples=16, learning_rates=(1e-3,)))
    assert set(runs_of(first)) == {(1e-3, 0)}
    out = finetune(**kw, recipe=grown, earlier=runs_of(first), keep_params=True)
    assert out["reused_runs"] == 1 and scratch["reused_runs"] == 0
    for a, b in zip(out["grid"], scratch["grid"], strict=True):
        assert a["seed_scores"] == b["seed_scores"] and a["train_loss_per_epoch"] == b["train_loss_per_epoch"]
    assert (out["scores"], out["picked_lr"]) == (scratch["scores"], scratch["picked_lr"])
    assert out["train_tokens"] == 3 * scratch["train_tokens"] // 4  # three of the four runs trained
    # The picked run's weights exist only when it was trained here.
    assert (out["params"] is None) == (out["picked_lr"] == 1e-3)
