"""Task distillation on tiny synthetic tasks: the student moves towards the teacher; augmentation is deterministic."""

import dataclasses

import jax
import numpy as np
import pytest

from kdjax import augment, glue_data
from kdjax.data.synthetic_glue import write_glue_dir
from kdjax.finetune import Recipe, finetune, predict_logits
from kdjax.finetune_steps import Head, init_params
from kdjax.sharding import make_mesh
from kdjax.steps import init_student
from kdjax.task_distill import DistillConfig, kl_to_teacher, prediction_loss, prepare


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return write_glue_dir(str(tmp_path_factory.mktemp("glue")), n_train=48, n_dev=8)


def _student(tiny_teacher):
    spec = tiny_teacher.spec.student(num_layers=1, hidden_size=32, num_heads=2, ffn_size=64)
    return spec, {"encoder": init_student(jax.random.PRNGKey(7), spec)}


def _teacher_logits_fn(tiny_teacher, num_labels, recipe, mesh):
    """A teacher whose predictions depend on the input (a random tiny BERT's barely do): a confident preference
    growing with sentence length (classification), or the gold overlap score plus a length term (STS-B)."""
    head = Head(tiny_teacher.spec, num_labels)
    params = init_params(jax.random.PRNGKey(3), head, tiny_teacher.params)

    def logits(enc):
        z = (enc.lengths - enc.lengths.mean()) / max(enc.lengths.std(), 1e-6)
        if num_labels == 1:
            return (enc.labels + 0.5 * z)[:, None].astype(np.float32)
        return np.stack([1.0 + 2.0 * z, -1.0 - 2.0 * z], axis=-1).astype(np.float32)

    return logits, params


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_student_moves_towards_teacher(tiny_teacher, glue_dir, task):
    recipe = Recipe(learning_rates=(1e-2,), per_device_batch_size=2, num_epochs=10, max_seq_len=32, bucket=16)
    mesh = make_mesh()
    data = glue_data.load_task(task, glue_dir)
    logits_fn, _ = _teacher_logits_fn(tiny_teacher, data.task.num_labels, recipe, mesh)
    train = glue_data.encode(tiny_teacher.tokenizer, data.train, recipe.max_seq_len)
    dd = prepare(DistillConfig(temperature=2.0), train, logits_fn)
    assert dd.hard.sum() == len(train) and dd.teacher_logits.shape == (len(train), data.task.num_labels)
    spec, pretrained = _student(tiny_teacher)
    head = Head(spec, data.task.num_labels)
    pad = tiny_teacher.tokenizer.pad_token_id
    before = init_params(jax.random.split(jax.random.PRNGKey(recipe.seed), 3)[0], head, pretrained)
    if head.regression:  # as the trainer starts it: at the teacher's mean score
        before["classifier"]["bias"] = before["classifier"]["bias"] + float(dd.teacher_logits.mean())
    out = finetune(
        spec=spec,
        pretrained=pretrained,
        tokenizer=tiny_teacher.tokenizer,
        task_data=data,
        recipe=recipe,
        mesh=mesh,
        progress=False,
        distill=dd,
        keep_params=True,
    )
    kl = [
        kl_to_teacher(predict_logits(p, head, train, 16, pad, recipe, mesh), dd.teacher_logits, 2.0)
        for p in (before, out["params"])
    ]
    assert kl[1] < 0.7 * kl[0], kl
    losses = out["train_loss_per_epoch"]
    assert losses[-1] < losses[0]


def test_alpha_mixes_hard_labels_on_originals_only():
    logits = jax.numpy.asarray([[2.0, 0.0], [0.0, 2.0]])
    batch = {
        "weights": jax.numpy.ones(2),
        "hard": jax.numpy.asarray([1.0, 0.0]),
        "labels": jax.numpy.asarray([1, 0]),
        "teacher_logits": logits,
    }
    soft_only, parts = prediction_loss(logits, batch, DistillConfig(alpha=0.0), False)
    assert float(soft_only) == pytest.approx(0.0, abs=1e-6)  # the student already is the teacher
    mixed, parts = prediction_loss(logits, batch, DistillConfig(alpha=0.5), False)
    # Only row 0 has a gold label (row 1 is an augmented copy): hard = CE(logits[0], 1).
    assert float(parts["hard"]) == pytest.approx(np.log1p(np.exp(2.0)), rel=1e-5)
    assert float(mixed) == pytest.approx(0.5 * float(parts["hard"]), rel=1e-5)


@pytest.mark.slow
def test_intermediate_losses_and_augmentation_run(tiny_teacher, glue_dir):
    recipe = Recipe(learning_rates=(1e-3,), per_device_batch_size=2, num_epochs=1, max_seq_len=32, bucket=16)
    mesh = make_mesh()
    data = glue_data.load_task("rte", glue_dir)
    logits_fn, t_params = _teacher_logits_fn(tiny_teacher, 2, recipe, mesh)
    cfg = DistillConfig(hidden_weight=1.0, attention_relation_weight=1.0, augment_factor=1, alpha=0.5)
    cfg = dataclasses.replace(cfg, teacher=tiny_teacher.spec)
    train = glue_data.encode(tiny_teacher.tokenizer, data.train, recipe.max_seq_len)
    dd = prepare(cfg, train, logits_fn, augment.for_teacher(tiny_teacher, cfg, seed=0))
    dd.teacher_encoder = t_params["bert"]
    assert len(dd.train) == 2 * len(train) and dd.hard.sum() == len(train)
    spec, pretrained = _student(tiny_teacher)
    out = finetune(
        spec=spec,
        pretrained=pretrained,
        tokenizer=tiny_teacher.tokenizer,
        task_data=data,
        recipe=recipe,
        mesh=mesh,
        progress=False,
        distill=dd,
    )
    assert out["num_augmented_examples"] == len(train) and out["num_train_examples"] == len(train)
    assert np.isfinite(out["final_train_loss"])


def _toy():
    ids = [np.asarray([2, 5, 6, 7, 3, 8, 9, 3]), np.asarray([2, 10, 11, 3])]
    return glue_data.Encoded(ids, [np.zeros_like(i) for i in ids], np.asarray([0, 1]))


def test_augmentation_is_deterministic_and_replaces_only_words():
    vocab = 20
    word = np.zeros(vocab, bool)
    word[5:] = True
    cont = np.zeros(vocab, bool)
    cont[7] = True  # token 7 continues token 6: 6 is not a whole word, 7 never is
    word[7] = False
    emb = np.random.default_rng(0).normal(size=(vocab, 8))
    cands = augment.embedding_neighbours(emb, word, top_k=3)
    kw = dict(seed=1, word=word, cont=cont)
    a = augment.augment(_toy(), 2, 1.0, cands, **kw)
    b = augment.augment(_toy(), 2, 1.0, cands, **kw)
    c = augment.augment(_toy(), 2, 1.0, cands, seed=2, word=word, cont=cont)
    assert all(np.array_equal(x, y) for x, y in zip(a.input_ids, b.input_ids))
    assert not all(np.array_equal(x, y) for x, y in zip(a.input_ids, c.input_ids))
    assert list(a.labels) == [0, 1, 0, 1] and len(a) == 4
    orig = _toy().input_ids
    for k, new in enumerate(a.input_ids):
        old = orig[k % 2]
        changed = np.flatnonzero(new != old)
        assert set(changed) == set(augment.eligible(old, word, cont))  # prob 1: every whole word, nothing else
        assert word[new[changed]].all()
    # Neighbours never propose the word itself.
    assert 5 not in cands([np.asarray([5])], [np.asarray([0])])[0]


def test_mlm_candidates_come_from_the_head(tiny_teacher):
    word, _ = augment.word_tokens(tiny_teacher.tokenizer)
    cands = augment.mlm_candidates(
        tiny_teacher.spec, tiny_teacher.params, tiny_teacher.tokenizer.mask_token_id, word, top_k=4
    )
    ids = np.asarray(tiny_teacher.tokenizer("alpha beta gamma")["input_ids"])
    (out,) = cands([ids], [np.asarray([1, 2])])
    assert out.shape == (2, 4) and word[out].all()
    assert ids[1] not in out[0] and ids[2] not in out[1]
