"""Bi-encoded pair regression (glue.bi_encoder_tasks): each sentence alone, the score 5 x their cosine."""

import jax
import numpy as np
import pytest

from kdjax import embedding_probe, glue_data
from kdjax.augment import augment
from kdjax.classifier import resolve_bi_encoder_tasks
from kdjax.config import ConfigError, base_config, validate
from kdjax.data.synthetic_glue import write_glue_dir
from kdjax.finetune import FinetuneError, Recipe, finetune
from kdjax.finetune_steps import Head, init_params, jitted_logits_step
from kdjax.sharding import make_mesh, shard_batch
from kdjax.workdir import write_json

A = ["the cat sat on the mat .", "a dull , lifeless film that goes on and on .", "it rains ."]
B = ["a cat is sitting on a mat .", "stocks fell .", "rain falls on the town all day long ."]


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return write_glue_dir(str(tmp_path_factory.mktemp("glue")), n_train=64, n_dev=16)


def _split():
    return glue_data.Split((A, B), np.array([4.5, 0.5, 2.0], np.float32))


def test_bi_encoding_tokenises_each_sentence_alone_and_interleaves_the_rows(tiny_teacher):
    tok = tiny_teacher.tokenizer
    cross, bi = glue_data.encode(tok, _split(), 64), glue_data.encode(tok, _split(), 64, bi=True)
    for i in range(3):
        assert list(bi.input_ids[i]) == tok(A[i])["input_ids"] and list(bi.pair_ids[i]) == tok(B[i])["input_ids"]
        assert len(cross.input_ids[i]) == len(bi.input_ids[i]) + len(bi.pair_ids[i]) - 1  # one [CLS] fewer
    assert list(bi.lengths) == [max(len(a), len(b)) for a, b in zip(bi.input_ids, bi.pair_ids)]
    batch = glue_data.make_batch(bi, np.array([2, 0]), 4, 0, 8, 64)
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].shape == (4,)
    assert list(batch["weights"]) == [1, 1, 0, 0] and list(batch["labels"][:2]) == [2.0, 4.5]
    for row, ids in enumerate([bi.input_ids[2], bi.pair_ids[2], bi.input_ids[0], bi.pair_ids[0]]):
        assert list(batch["input_ids"][row, : len(ids)]) == list(ids)
        assert batch["attention_mask"][row].sum() == len(ids)
    assert not batch["attention_mask"][4:].any()  # filler pairs
    with pytest.raises(ValueError):
        glue_data.encode(tok, glue_data.Split((A,), np.zeros(3, np.float32)), 64, bi=True)


def test_untrained_bi_encoder_scores_are_the_embedding_probe_cosines(tiny_teacher):
    # With the mean head and no training, the bi-encoder's score is the zero-shot probe's cosine, x 5.
    t = tiny_teacher
    head = Head(t.spec, 1, dropout_rate=0.0, pooling="mean", bi_encoder=True)
    params = init_params(jax.random.PRNGKey(0), head, t.params)
    assert "classifier" not in params  # nothing but the encoder
    data = glue_data.encode(t.tokenizer, _split(), 64, bi=True)
    mesh = make_mesh()
    batch = glue_data.make_batch(data, np.arange(3), 4, t.tokenizer.pad_token_id or 0, 8, 64)
    scores = np.asarray(jitted_logits_step(head, mesh)(params, shard_batch(batch, mesh)))[:3, 0]
    emb_a = embedding_probe.embed(t.spec, t.params, t.tokenizer, A, 64)
    emb_b = embedding_probe.embed(t.spec, t.params, t.tokenizer, B, 64)
    np.testing.assert_allclose(scores, 5 * embedding_probe.cosine(emb_a, emb_b), atol=1e-4)


def test_bi_encoder_fine_tunes_and_records_its_encoding(tiny_teacher, glue_dir):
    t = tiny_teacher
    kw = dict(
        spec=t.spec,
        pretrained=t.params,
        tokenizer=t.tokenizer,
        task_data=glue_data.load_task("stsb", glue_dir),
        mesh=make_mesh(),
        progress=False,
    )
    # 60 of 64 examples: the last batch of an epoch has filler pairs (all-pad rows, zero vectors), whose cosine
    # must not turn the gradient into NaN although their loss weight is 0.
    recipe = Recipe(
        learning_rates=(1e-3,),
        per_device_batch_size=4,
        num_epochs=3,
        max_seq_len=64,
        pooling="mean",
        max_train_examples=60,
    )
    bi = finetune(recipe=Recipe(**{**recipe.__dict__, "pair_encoding": "bi"}), **kw)
    losses = bi["train_loss_per_epoch"]
    assert len(losses) == 3 and losses[-1] < losses[0] and all(np.isfinite(v) for v in bi["scores"].values())
    cross = finetune(recipe=recipe, **kw)
    assert cross["scores"] != bi["scores"]  # another model, not the same one under another name


def test_only_pair_regression_can_be_bi_encoded(tiny_teacher, glue_dir):
    recipe = Recipe(learning_rates=(1e-3,), per_device_batch_size=4, num_epochs=1, pair_encoding="bi")
    with pytest.raises(FinetuneError, match="rte is not a sentence-pair regression task"):
        finetune(
            spec=tiny_teacher.spec,
            pretrained=tiny_teacher.params,
            tokenizer=tiny_teacher.tokenizer,
            task_data=glue_data.load_task("rte", glue_dir),
            recipe=recipe,
            progress=False,
        )
    c = base_config("random-tiny-bert", "tiny")
    c.glue.bi_encoder_tasks = "stsb,rte"
    with pytest.raises(ConfigError, match=r"glue\.bi_encoder_tasks='rte'"):
        validate(c)
    c.glue.bi_encoder_tasks = "stsb"
    assert validate(c).glue.bi_encoder_tasks == ("stsb",)


def test_augmenting_a_bi_encoded_pair_augments_both_sentences(tiny_teacher):
    data = glue_data.encode(tiny_teacher.tokenizer, _split(), 64, bi=True)

    def candidates(rows, positions):  # every replaced token becomes 7
        return [np.full((len(p), 1), 7, np.int32) for p in positions]

    out = augment(data, 2, 1.0, candidates, seed=0, special_ids=set(tiny_teacher.tokenizer.all_special_ids))
    assert len(out) == 6 and out.pair_ids is not None and list(out.labels) == [4.5, 0.5, 2.0] * 2
    for k in range(6):
        i = k % 3
        assert len(out.input_ids[k]) == len(data.input_ids[i]) and len(out.pair_ids[k]) == len(data.pair_ids[i])
        assert (out.input_ids[k] == 7).any() and (out.pair_ids[k] == 7).any()


def test_auto_bi_encodes_stsb_for_a_sentence_transformers_teacher_only(tmp_path):
    plain = str(tmp_path)
    assert resolve_bi_encoder_tasks(("auto",), plain)[0] == ()
    assert resolve_bi_encoder_tasks(("stsb",), plain)[0] == ("stsb",)  # an explicit list wins
    write_json(str(tmp_path / "modules.json"), [{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    (tmp_path / "1_Pooling").mkdir()
    write_json(str(tmp_path / "1_Pooling" / "config.json"), {"pooling_mode_mean_tokens": True})
    tasks, why = resolve_bi_encoder_tasks(("auto",), plain)
    assert tasks == ("stsb",) and "sentence-transformers" in why
    assert resolve_bi_encoder_tasks((), plain)[0] == ()  # an empty list is a choice too
    assert validate(base_config("random-tiny-bert", "tiny")).glue.bi_encoder_tasks == ("auto",)
