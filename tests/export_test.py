"""A student exported as an HF folder reloads in transformers (Flax and PyTorch) with identical hidden states."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.export import export_hf
from kdjax.models import Encoder
from kdjax.teacher import load_teacher


def _teacher_config(family):
    import transformers as tf

    small = dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=70)
    if family == "bert":
        return tf.BertConfig(**small).to_dict()
    if family == "roberta":
        return tf.RobertaConfig(**small, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1).to_dict()
    return tf.AlbertConfig(**small, embedding_size=32).to_dict()


@pytest.mark.parametrize("family", ["bert", "roberta", "albert"])
def test_export_round_trip(tmp_path, tiny_teacher, family):
    from transformers import FlaxAutoModel

    from kdjax.teacher import spec_from_hf_config

    tspec = spec_from_hf_config(_teacher_config(family))
    spec = tspec.student(num_layers=2, hidden_size=32, num_heads=2, ffn_size=48, activation="relu")
    ids = np.array([[2, 10, 11, 12, 3, 1 if family == "roberta" else 0]], np.int32)
    if family == "roberta":
        ids[0, :5] += 2  # keep real tokens away from pad id 1
    mask = (ids != spec.pad_token_id).astype(np.int32)
    params = Encoder(spec).init(jax.random.PRNGKey(3), jnp.asarray(ids), jnp.asarray(mask))["params"]
    ours = Encoder(spec).apply({"params": params}, ids, mask)["hidden_states"]

    out = export_hf(
        str(tmp_path / "hf"),
        spec,
        params,
        _teacher_config(family),
        tiny_teacher.tokenizer,
        teacher_source="unit-test",
        info={"kd_steps": 0},
    )
    cfg = json.load(open(f"{out}/config.json"))
    assert cfg["model_type"] == ("roberta" if family == "roberta" else "bert")
    assert cfg["num_hidden_layers"] == 2 and cfg["kdjax"]["arch_id"] == spec.arch_id

    flax_model = FlaxAutoModel.from_pretrained(out, from_pt=True)
    theirs = flax_model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    m = mask[..., None].astype(bool)
    for a, b in zip(ours, theirs):
        assert float(np.max(np.abs(np.where(m, np.asarray(a) - np.asarray(b), 0)))) <= 1e-4

    # kdjax re-imports its own export (used by GLUE and by PDT).
    back = load_teacher(out)
    assert back.spec == dataclasses.replace(spec, family="bert" if family == "albert" else family)


def test_export_loads_in_pytorch(tmp_path, tiny_teacher):
    torch = pytest.importorskip("torch")
    from transformers import AutoModel

    spec = tiny_teacher.spec.student(num_layers=2, hidden_size=32, num_heads=2, ffn_size=48)
    ids = np.array([[2, 10, 11, 12, 3, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    params = Encoder(spec).init(jax.random.PRNGKey(0), ids, mask)["params"]
    ours = np.asarray(Encoder(spec).apply({"params": params}, ids, mask)["hidden_states"][-1])
    out = export_hf(str(tmp_path / "hf"), spec, params, tiny_teacher.hf_config, tiny_teacher.tokenizer)
    model = AutoModel.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    assert float(np.max(np.abs((ours - theirs)[mask.astype(bool)]))) <= 1e-4
