"""STS-B zero-shot probe: mean-pooled embeddings independent of batching, and a correlation that can tell."""

import numpy as np
import pytest

from kdjax import embedding_probe
from kdjax.glue_data import Split

SENTENCES = [
    "the movie was wonderful and moving .",
    "a dull , lifeless film .",
    "i would not recommend this to anyone , not even to someone who likes long and slow films .",
    "the cast is great but the plot is thin .",
    "an absolute triumph .",
    "it rains .",
]


def test_an_embedding_does_not_depend_on_its_batch(tiny_teacher):
    t = tiny_teacher
    together = embedding_probe.embed(t.spec, t.params, t.tokenizer, SENTENCES, 64)
    for i, s in enumerate(SENTENCES):  # alone: no padding, another bucket length
        alone = embedding_probe.embed(t.spec, t.params, t.tokenizer, [s], 64)[0]
        np.testing.assert_allclose(together[i], alone, atol=1e-5)
    assert together.shape == (len(SENTENCES), t.spec.hidden_size)


def test_identical_pairs_scored_high_correlate(tiny_teacher):
    # Gold 5 for a sentence paired with itself (cosine 1), 0 for two different ones (cosine < 1): a perfect ranking.
    t = tiny_teacher
    a = SENTENCES + SENTENCES
    b = SENTENCES + SENTENCES[1:] + SENTENCES[:1]
    gold = np.array([5.0] * len(SENTENCES) + [0.0] * len(SENTENCES), np.float32)
    out = embedding_probe.zero_shot_sts(t.spec, t.params, t.tokenizer, Split((a, b), gold), 64)
    assert out["pairs"] == 12 and out["spearman"] > 80
    # Gold reversed: the same encoder now ranks them wrong.
    flipped = embedding_probe.zero_shot_sts(t.spec, t.params, t.tokenizer, Split((a, b), 5 - gold), 64)
    assert flipped["spearman"] == pytest.approx(-out["spearman"])


def test_cosine_of_a_zero_vector_is_zero():
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(embedding_probe.cosine(a, b), [1.0, 0.0])


def test_single_sentences_are_refused(tiny_teacher):
    t = tiny_teacher
    with pytest.raises(ValueError, match="sentence pairs"):
        embedding_probe.zero_shot_sts(t.spec, t.params, t.tokenizer, Split((SENTENCES,), np.zeros(6)), 64)
