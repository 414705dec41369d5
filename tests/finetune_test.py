"""GLUE fine-tuning on the tiny random teacher: STS-B as regression, classification, reproducibility, sharding."""

import jax
import numpy as np
import pytest

from kdjax import glue_data
from kdjax.data.synthetic_glue import write_glue_dir
from kdjax.finetune import Head, Recipe, finetune, init_params, weighted_loss
from kdjax.sharding import make_mesh


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return write_glue_dir(str(tmp_path_factory.mktemp("glue")), n_train=64, n_dev=16)


def _recipe(**kw):
    base = dict(learning_rate=1e-3, per_device_batch_size=4, num_epochs=3, warmup_fraction=0.1, max_seq_len=64)
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
