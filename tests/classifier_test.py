"""The GLUE head's pooling choices on the tiny teacher: each trains and scores, mean pooling ignores pad tokens, a
fresh pooler is not the checkpoint's, and `auto` reads a sentence-transformers folder."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import glue_data
from kdjax.classifier import (
    POOLINGS,
    SequenceClassifier,
    masked_mean,
    resolve_bi_encoder_tasks,
    resolve_pooling,
    sentence_transformers_pooling,
)
from kdjax.data.synthetic_glue import write_glue_dir
from kdjax.finetune import Recipe, finetune
from kdjax.finetune_steps import FinetuneError, Head, init_params
from kdjax.spec import ArchSpec


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return write_glue_dir(str(tmp_path_factory.mktemp("glue")), n_train=32, n_dev=12)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_sequence_classifier_regression_head(pooling):
    spec = ArchSpec(num_layers=1, hidden_size=16, num_heads=2, ffn_size=32, vocab_size=30)
    ids = jnp.ones((3, 5), jnp.int32)
    model = SequenceClassifier(spec, num_labels=1, pooling=pooling)
    params = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))["params"]
    assert model.apply({"params": params}, ids, jnp.ones_like(ids)).shape == (3, 1)
    assert ("pooler" in params) == (pooling in ("pooler", "fresh_pooler"))


def _with_pooler(tiny_teacher):
    """The tiny teacher's weights plus a recognisable pretrained pooler (the random tiny BERT has none)."""
    h = tiny_teacher.spec.hidden_size
    pooler = {"kernel": np.full((h, h), 0.5, np.float32), "bias": np.ones((h,), np.float32)}
    return {**tiny_teacher.params, "pooler": pooler}


@pytest.mark.parametrize(("pooling", "task"), [*((p, "sst2") for p in POOLINGS), ("mean", "stsb")])
def test_each_head_trains_and_scores(tiny_teacher, glue_dir, pooling, task):
    recipe = Recipe(
        learning_rates=(1e-3,), per_device_batch_size=4, num_epochs=2, max_seq_len=32, bucket=16, pooling=pooling
    )
    out = finetune(
        spec=tiny_teacher.spec,
        pretrained=_with_pooler(tiny_teacher),
        tokenizer=tiny_teacher.tokenizer,
        task_data=glue_data.load_task(task, glue_dir),
        recipe=recipe,
        progress=False,
        keep_params=True,
    )
    assert out["scores"] and all(np.isfinite(v) for v in out["scores"].values())
    assert all(np.isfinite(x) for x in out["train_loss_per_epoch"])
    pooler = {"pooler"} if pooling in ("pooler", "fresh_pooler") else set()
    assert set(out["params"]) == {"bert", "classifier", *pooler}


def test_unresolved_pooling_is_refused(tiny_teacher, glue_dir):
    with pytest.raises(FinetuneError, match="auto"):
        finetune(
            spec=tiny_teacher.spec,
            pretrained=tiny_teacher.params,
            tokenizer=tiny_teacher.tokenizer,
            task_data=glue_data.load_task("sst2", glue_dir),
            recipe=Recipe(pooling="auto"),
            progress=False,
        )


def test_cls_reads_the_first_tokens_state_without_a_pooler(tiny_teacher):
    head = Head(tiny_teacher.spec, 3, pooling="cls")
    params = init_params(jax.random.PRNGKey(0), head, _with_pooler(tiny_teacher))
    assert set(params) == {"bert", "classifier"}  # the checkpoint's pooler is not read
    ids = np.arange(10, 34, dtype=np.int32).reshape(2, 12)
    mask = np.ones_like(ids)
    logits, enc = head.module().apply({"params": params}, ids, mask, np.zeros_like(ids), return_encoder=True)
    c = params["classifier"]
    expected = np.asarray(enc["hidden_states"][-1][:, 0]) @ np.asarray(c["kernel"]) + np.asarray(c["bias"])
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_mean_ignores_pad_tokens(tiny_teacher):
    head = Head(tiny_teacher.spec, 2, pooling="mean")
    params = init_params(jax.random.PRNGKey(0), head, tiny_teacher.params)
    real = 7
    ids = np.full((2, 12), tiny_teacher.tokenizer.pad_token_id, np.int32)
    ids[:, :real] = np.arange(10, 10 + 2 * real).reshape(2, real)
    mask = np.zeros_like(ids)
    mask[:, :real] = 1
    other = ids.copy()
    other[:, real:] = 40 + np.arange(12 - real)  # other tokens where the pads were, still masked out

    def run(x, m):
        return head.module().apply({"params": params}, x, m, np.zeros_like(x), return_encoder=True)

    logits, enc = run(ids, mask)
    logits_other, enc_other = run(other, mask)
    pad_change = np.abs(np.asarray(enc["hidden_states"][-1] - enc_other["hidden_states"][-1]))[:, real:]
    assert pad_change.max() > 1e-2, "the pad positions' hidden states must really change"
    np.testing.assert_allclose(logits, logits_other, atol=1e-6)
    # The same sentences without padding score the same.
    short, _ = run(ids[:, :real], mask[:, :real])
    np.testing.assert_allclose(logits, short, atol=1e-5)
    # The mean itself, on a known input.
    h = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    np.testing.assert_allclose(masked_mean(h, jnp.asarray([[1, 1, 0], [1, 0, 0]])), [[1.0, 2.0], [6.0, 7.0]])
    assert np.all(np.asarray(masked_mean(h, jnp.zeros((2, 3)))) == 0.0)  # all-pad filler rows: no NaN


def test_fresh_pooler_differs_from_the_checkpoints(tiny_teacher):
    pretrained = _with_pooler(tiny_teacher)
    key = jax.random.PRNGKey(0)
    kept = init_params(key, Head(tiny_teacher.spec, 2, pooling="pooler"), pretrained)
    fresh = init_params(key, Head(tiny_teacher.spec, 2, pooling="fresh_pooler"), pretrained)
    np.testing.assert_array_equal(kept["pooler"]["kernel"], pretrained["pooler"]["kernel"])
    assert not np.allclose(fresh["pooler"]["kernel"], pretrained["pooler"]["kernel"])
    assert float(np.std(fresh["pooler"]["kernel"])) == pytest.approx(0.02, rel=0.3)  # BERT's init, freshly drawn
    assert not np.any(np.asarray(fresh["pooler"]["bias"]))
    # Everything else starts the same: the encoder is the checkpoint's, the classifier the same draw.
    for a, b in zip(jax.tree.leaves(kept["bert"]), jax.tree.leaves(fresh["bert"]), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(kept["classifier"]["kernel"], fresh["classifier"]["kernel"])
    # Without a pretrained pooler the two are the same fresh draw.
    none_kept = init_params(key, Head(tiny_teacher.spec, 2, pooling="pooler"), tiny_teacher.params)
    np.testing.assert_array_equal(none_kept["pooler"]["kernel"], fresh["pooler"]["kernel"])


def _st_folder(root, modes: dict, pooling_path: str = "1_Pooling"):
    os.makedirs(os.path.join(root, pooling_path), exist_ok=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": pooling_path, "type": "sentence_transformers.models.Pooling"},
    ]
    with open(os.path.join(root, "modules.json"), "w") as f:
        json.dump(modules, f)
    cfg = {"word_embedding_dimension": 64, **{f"pooling_mode_{k}": v for k, v in modes.items()}}
    with open(os.path.join(root, pooling_path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return str(root)


def test_auto_resolves_from_the_teacher_folder(tmp_path, tiny_teacher):
    mean = _st_folder(tmp_path / "mean", {"cls_token": False, "mean_tokens": True, "max_tokens": False})
    cls = _st_folder(tmp_path / "cls", {"cls_token": True, "mean_tokens": False}, "2_Pooling")
    assert sentence_transformers_pooling(mean) == "mean" and sentence_transformers_pooling(cls) == "cls_token"
    assert resolve_pooling("auto", mean)[0] == "mean"
    head, why = resolve_pooling("auto", cls)
    assert head == "pooler" and "cls_token" in why
    # A plain BERT folder (the tiny teacher), no folder, and a damaged modules.json: BERT's head.
    assert resolve_pooling("auto", tiny_teacher.folder)[0] == "pooler"
    assert resolve_pooling("auto", "")[0] == "pooler"
    (tmp_path / "mean" / "modules.json").write_text("{not json")
    assert resolve_pooling("auto", mean)[0] == "pooler"
    # A named head is kept whatever the teacher.
    assert resolve_pooling("fresh_pooler", cls) == ("fresh_pooler", "glue.pooling")


def test_auto_is_mean_for_the_packaged_minilm(minilm_dir):
    # The offline teacher ships modules.json and 1_Pooling/config.json (pooling_mode_mean_tokens), as the hub repo.
    assert sentence_transformers_pooling(minilm_dir) == "mean"
    assert resolve_pooling("auto", minilm_dir)[0] == "mean"
    assert resolve_bi_encoder_tasks(("auto",), minilm_dir)[0] == ("stsb",)  # and STS-B bi-encoded, as it was trained
