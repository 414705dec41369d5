"""Corpus loading, packing, masking and deterministic batches."""

import gzip

import numpy as np
import pytest

from kdjax.config.settings import DataSettings
from kdjax.data import corpus
from kdjax.data.batches import Batches, MaskingSpec, mask_tokens


def test_pack_rows_keeps_every_token_and_splits_long_sentences():
    sents = [[5, 6, 7], [8, 9], list(range(10, 25)), [30]]
    rows = corpus.pack_rows(sents, max_seq_len=8, cls_id=1, sep_id=2, pad_id=0)
    assert rows.shape[1] == 8 and np.all(rows[:, 0] == 1)
    body = sorted(t for t in rows.ravel().tolist() if t not in (0, 1, 2))
    assert body == sorted(t for s in sents for t in s)  # nothing lost
    # Each sentence (or piece) stays contiguous and ends with [SEP].
    text = " ".join(map(str, rows.ravel().tolist()))
    for piece in ([5, 6, 7], [8, 9], [30], list(range(10, 16)), list(range(16, 22)), list(range(22, 25))):
        assert " ".join(map(str, piece + [2])) in text
    # Best-fit decreasing: 15+ pieces of 6 fill rows, short sentences fill the gaps -> 4 rows, not 5.
    assert len(rows) == 4


def test_pack_rows_fills_rows_on_realistic_lengths():
    rng = np.random.default_rng(0)
    sents = [list(range(3, 3 + int(n))) for n in rng.integers(5, 40, size=2000)]
    rows = corpus.pack_rows(sents, max_seq_len=128, cls_id=1, sep_id=2, pad_id=0)
    assert (rows != 0).mean() > 0.98


def test_masking_80_10_10_and_specials_untouched():
    m = MaskingSpec(mask_id=4, pad_id=0, vocab_size=100, special_ids=(0, 1, 2, 3, 4), probability=0.15)
    rows = np.random.default_rng(0).integers(5, 100, size=(200, 64)).astype(np.int32)
    rows[:, 0], rows[:, -1] = 1, 0
    out = mask_tokens(rows, m, np.random.default_rng(1))
    picked = out["mlm_mask"].astype(bool)
    assert 0.13 < picked.mean() < 0.17
    assert not picked[:, 0].any() and not picked[:, -1].any()
    frac_mask = (out["input_ids"][picked] == 4).mean()
    frac_kept = (out["input_ids"][picked] == rows[picked]).mean()
    assert 0.77 < frac_mask < 0.83 and 0.08 < frac_kept < 0.13
    assert np.array_equal(out["input_ids"][~picked], rows[~picked])


def test_batches_are_a_function_of_the_step():
    m = MaskingSpec(mask_id=4, pad_id=0, vocab_size=50, special_ids=(0, 1, 2, 3, 4))
    rows = np.random.default_rng(0).integers(5, 50, size=(10, 8)).astype(np.int32)
    a, b = Batches(rows, 3, m, seed=7), Batches(rows, 3, m, seed=7)
    assert a.steps_per_epoch == 3
    for step in [4, 0, 5, 4]:  # random access, any order
        np.testing.assert_array_equal(a.get(step)["input_ids"], b.get(step)["input_ids"])
    assert not np.array_equal(a.get(0)["labels"], a.get(3)["labels"])  # new epoch, new order
    with pytest.raises(corpus.DataError, match="fewer than one batch"):
        Batches(rows, 11, m, seed=0)


def _data_cfg(path, **kw):
    base = dict(corpus=str(path), text_column="text", max_seq_len=16, max_lines=0, synthetic_lines=50)
    return DataSettings(**(base | kw), mlm_probability=0.15, glue_dir="")


def test_packed_corpus_from_txt_gz_folder_and_cache(tmp_path, tiny_teacher):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("the cat sees the book .\n\n  \nthe dog likes the tree .\n")
    with gzip.open(d / "b.txt.gz", "wt") as f:
        f.write("my friend reads the story .\n")
    cache = tmp_path / "cache"
    rows = corpus.packed_corpus(_data_cfg(d), tiny_teacher.tokenizer, str(cache))
    tok = tiny_teacher.tokenizer
    assert rows.shape[1] == 16 and rows[0, 0] == tok.cls_token_id
    assert (rows == tok.sep_token_id).sum() == 3  # three non-empty lines
    assert len(list(cache.glob("packed-*.npy"))) == 1
    again = corpus.packed_corpus(_data_cfg(d), tiny_teacher.tokenizer, str(cache))
    np.testing.assert_array_equal(rows, again)


def test_corpus_errors(tmp_path, tiny_teacher):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(corpus.DataError, match="empty"):
        corpus.packed_corpus(_data_cfg(empty), tiny_teacher.tokenizer, None)
    with pytest.raises(corpus.DataError, match="does not exist"):
        corpus.corpus_files(str(tmp_path / "nope.txt"))
    with pytest.raises(corpus.DataError, match="no text files"):
        corpus.corpus_files(str(_empty_dir(tmp_path)))


def _empty_dir(tmp_path):
    d = tmp_path / "nothing"
    d.mkdir()
    return d


def test_proxy_subset_is_fixed_fraction():
    rows = np.arange(100).reshape(100, 1)
    a = corpus.proxy_subset(rows, 0.3, seed=1)
    assert len(a) == 30 and np.array_equal(a, corpus.proxy_subset(rows, 0.3, seed=1))
    assert corpus.proxy_subset(rows, 1.0, seed=1) is rows
