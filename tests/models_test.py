"""Encoder shapes and numerical equivalence with transformers' Flax BERT/RoBERTa/ALBERT on the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.models import (
    INIT_STD,
    STACKED,
    Encoder,
    random_params,
    stack_layers,
    unstack_layers,
)
from kdjax.spec import ArchSpec
from kdjax.teacher import convert_hf_params, spec_from_hf_config

SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48, vocab_size=99)


def _hf_model(family):
    import transformers as tf

    if family == "bert":
        return tf.FlaxBertForMaskedLM(tf.BertConfig(**SMALL), seed=1)
    if family == "roberta":
        cfg = tf.RobertaConfig(**SMALL, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1)
        return tf.FlaxRobertaForMaskedLM(cfg, seed=1)
    return tf.FlaxAlbertForMaskedLM(tf.AlbertConfig(**SMALL, embedding_size=16, hidden_act="gelu_new"), seed=1)


def _inputs(pad_id):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 99, size=(2, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[1, 8:], mask[1, 8:] = pad_id, 0
    return ids, mask


@pytest.mark.parametrize("family", ["bert", "roberta", "albert"])
def test_encoder_matches_transformers(family):
    hf = _hf_model(family)
    spec = spec_from_hf_config(hf.config.to_dict())
    params = convert_hf_params(family, hf.params)
    ids, mask = _inputs(spec.pad_token_id)
    ref = hf(ids, attention_mask=mask, output_hidden_states=True)
    out = Encoder(spec, with_mlm_head=True).apply(
        {"params": {**params["encoder"], "mlm_head": params["mlm_head"]}}, ids, mask
    )
    assert len(out["hidden_states"]) == len(ref.hidden_states) == spec.num_layers + 1
    m = mask[..., None].astype(bool)
    for ours, theirs in zip(out["hidden_states"], ref.hidden_states):
        np.testing.assert_allclose(np.where(m, ours, 0), np.where(m, theirs, 0), atol=2e-5)
    np.testing.assert_allclose(
        np.where(m, out["logits"], 0), np.where(m, ref.logits, 0), atol=2e-4, err_msg="MLM logits differ"
    )


def test_encoder_matches_flax_bert_model_on_real_minilm(minilm_dir):
    from transformers import FlaxBertModel

    from kdjax.teacher import load_teacher

    t = load_teacher(minilm_dir)
    ref = FlaxBertModel.from_pretrained(minilm_dir, from_pt=True)
    enc = t.tokenizer(["a real sentence about distillation", "short"], padding=True, return_tensors="np")
    theirs = ref(**enc, output_hidden_states=True).hidden_states
    ours = Encoder(t.spec).apply({"params": t.params["encoder"]}, enc["input_ids"], enc["attention_mask"])
    m = enc["attention_mask"][..., None].astype(bool)
    for a, b in zip(ours["hidden_states"], theirs):
        assert float(np.max(np.abs(np.where(m, a - b, 0)))) < 1e-4
    # The pretrained pooler is kept for GLUE fine-tuning.
    assert t.params["pooler"]["kernel"].shape == (384, 384)


def test_early_exit_and_qkv_shapes():
    spec = ArchSpec(num_layers=3, hidden_size=32, num_heads=4, ffn_size=64, vocab_size=50)
    ids = jnp.ones((2, 8), jnp.int32)
    model = Encoder(spec)
    params = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))["params"]
    full = model.apply({"params": params}, ids, jnp.ones_like(ids), return_qkv=True)
    part = model.apply({"params": params}, ids, jnp.ones_like(ids), num_layers=2)
    assert len(full["hidden_states"]) == 4 and len(part["hidden_states"]) == 3
    np.testing.assert_allclose(full["hidden_states"][2], part["hidden_states"][2], atol=1e-6)
    assert full["qkv"][0][0].shape == (2, 8, 4, 8)
    assert "logits" not in full


def test_param_count_matches_initialised_tree():
    for spec in [
        ArchSpec(num_layers=3, hidden_size=48, num_heads=4, ffn_size=80, vocab_size=70),
        ArchSpec(
            num_layers=2,
            hidden_size=32,
            num_heads=2,
            ffn_size=64,
            vocab_size=70,
            embedding_size=16,
            shared_layers=True,
            family="albert",
        ),
    ]:
        ids = jnp.ones((1, 4), jnp.int32)
        params = Encoder(spec).init(jax.random.PRNGKey(0), ids, ids)["params"]
        assert sum(x.size for x in jax.tree.leaves(params)) == spec.num_params


def test_bf16_compute_keeps_fp32_params_and_finite_outputs():
    spec = ArchSpec(num_layers=2, hidden_size=32, num_heads=4, ffn_size=64, vocab_size=50)
    ids = jnp.ones((2, 8), jnp.int32)
    model = Encoder(spec, dtype=jnp.bfloat16)
    params = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    out = model.apply({"params": params}, ids, jnp.ones_like(ids))["hidden_states"][-1]
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))


SCAN_SPEC = ArchSpec(num_layers=3, hidden_size=32, num_heads=4, ffn_size=48, vocab_size=99, max_position_embeddings=40)


def _per_layer_params(spec, seed=0, with_mlm_head=True):
    ids, mask = _inputs(0)
    return Encoder(spec, with_mlm_head=with_mlm_head).init(jax.random.PRNGKey(seed), ids, mask)["params"]


def test_stack_layers_round_trips_exactly_and_keeps_numpy():
    params = jax.device_get(_per_layer_params(SCAN_SPEC))
    stacked = stack_layers(params)
    layer = stacked["encoder"]["layer"]
    assert list(layer) == [STACKED]
    kernel = layer[STACKED]["layer"]["attention"]["self"]["query"]["kernel"]
    assert isinstance(kernel, np.ndarray) and kernel.shape == (3, 32, 32)
    np.testing.assert_array_equal(kernel[2], params["encoder"]["layer"]["2"]["attention"]["self"]["query"]["kernel"])
    back = unstack_layers(stacked)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    # Both are idempotent: already-converted params pass through.
    assert unstack_layers(params) is params and stack_layers(stacked) is stacked
    # The scanned module's own init has exactly the stacked layout.
    ids, mask = _inputs(0)
    shapes = jax.eval_shape(
        lambda: Encoder(SCAN_SPEC, with_mlm_head=True, scan_layers=True).init(jax.random.PRNGKey(0), ids, mask)
    )["params"]
    assert jax.tree.structure(shapes) == jax.tree.structure(stacked)
    assert jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, shapes, stacked)) == [True] * len(
        jax.tree.leaves(shapes)
    )


def _scan_loss(spec, scan_layers):
    """A loss that reads every hidden state, every layer's q/k/v and the logits, as the KD losses do."""
    ids, mask = _inputs(0)
    model = Encoder(spec, with_mlm_head=True, scan_layers=scan_layers)

    def loss(params):
        out = model.apply({"params": params}, ids, mask, return_qkv=True)
        total = sum(jnp.mean(jnp.sin(h) ** 2) for h in out["hidden_states"])
        total += sum(jnp.mean(q * k) + jnp.mean(v**2) for q, k, v in out["qkv"])
        return total + jnp.mean(jax.nn.log_softmax(out["logits"]))

    return model, loss, ids, mask


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_scanned_stack_matches_per_layer_outputs_and_gradients(activation):
    import dataclasses

    spec = dataclasses.replace(SCAN_SPEC, activation=activation)
    params = _per_layer_params(spec)
    plain, plain_loss, ids, mask = _scan_loss(spec, False)
    scanned, scanned_loss, _, _ = _scan_loss(spec, True)
    a = plain.apply({"params": params}, ids, mask, return_qkv=True)
    b = scanned.apply({"params": stack_layers(params)}, ids, mask, return_qkv=True)
    assert len(b["hidden_states"]) == spec.num_layers + 1 and len(b["qkv"]) == spec.num_layers
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    g_plain = jax.grad(plain_loss)(params)
    g_scanned = unstack_layers(jax.grad(scanned_loss)(stack_layers(params)))
    assert jax.tree.structure(g_plain) == jax.tree.structure(g_scanned)
    for x, y in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_scanned), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_random_params_follow_the_modules_initialisers(scan_layers):
    ids, mask = _inputs(0)
    model = Encoder(SCAN_SPEC, with_mlm_head=True, scan_layers=scan_layers)
    flax_init = model.init(jax.random.PRNGKey(0), ids, mask)["params"]
    ours = random_params(SCAN_SPEC, jax.random.PRNGKey(0), with_mlm_head=True, scan_layers=scan_layers)
    other = random_params(SCAN_SPEC, jax.random.PRNGKey(1), with_mlm_head=True, scan_layers=scan_layers)
    assert jax.tree.structure(ours) == jax.tree.structure(flax_init)
    flat_ref = jax.tree_util.tree_flatten_with_path(flax_init)[0]
    for (path, ref), mine, theirs in zip(flat_ref, jax.tree.leaves(ours), jax.tree.leaves(other), strict=True):
        name = jax.tree_util.keystr(path)
        assert mine.shape == ref.shape and mine.dtype == ref.dtype, name
        if np.all(ref == 0) or np.all(ref == 1):  # Flax's zeros/ones init: exactly the same
            np.testing.assert_array_equal(mine, ref, err_msg=name)
        else:  # normal(INIT_STD): same spread (on leaves large enough to tell), different values for another key
            assert float(np.max(np.abs(mine))) < 6 * INIT_STD, name
            if ref.size >= 1000:
                assert abs(float(np.std(mine)) - INIT_STD) < 0.1 * INIT_STD, name
                # 5 standard errors of a mean of `size` draws: a fixed fraction of INIT_STD fails by chance.
                assert abs(float(np.mean(mine))) < 5 * INIT_STD / np.sqrt(ref.size), name
            assert not np.array_equal(mine, theirs), name
    model.apply({"params": ours}, ids, mask)  # and the model runs on them
