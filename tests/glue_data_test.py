"""Every GLUE task's local TSV layout parses; bad files fail with one line naming file and line."""

import numpy as np
import pytest

from kdjax import glue_data
from kdjax.data.synthetic_glue import HEADERS, write_glue_dir


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return write_glue_dir(str(tmp_path_factory.mktemp("glue")))


@pytest.mark.parametrize("task", list(glue_data.TASKS))
def test_every_task_layout_parses(glue_dir, task):
    data = glue_data.load_task(task, glue_dir)
    spec = glue_data.TASKS[task]
    assert len(data.train) == 24
    expected_dev = {"matched", "mismatched"} if task == "mnli" else {"dev"}
    assert set(data.dev) == expected_dev
    for split in data.dev.values():
        assert len(split) == 12
        assert len(split.texts) == len(spec.hub_text)
    if task == "stsb":
        assert spec.is_regression and data.train.labels.dtype == np.float32
        assert data.train.labels.min() >= 0 and data.train.labels.max() <= 5
    else:
        assert data.train.labels.dtype == np.int32
        assert set(np.unique(data.train.labels)) == set(range(spec.num_labels))
    if task == "mnli":  # label names map to nyu-mll/glue's indices: entailment 0, neutral 1, contradiction 2
        assert list(data.train.labels[:3]) == [0, 1, 2]
    if task == "cola":  # no header: the first line is data
        assert data.train.labels[0] == 0 and data.train.texts[0][0]


def _expect_error(path: str, text: str, task: str, match: str):
    with open(path, "w") as f:
        f.write(text)
    with pytest.raises(glue_data.GlueDataError, match=match) as e:
        glue_data.read_tsv(path, glue_data.TASKS[task])
    assert "\n" not in str(e.value) and path in str(e.value)


def test_bad_files_fail_with_one_line(tmp_path):
    p = str(tmp_path / "dev.tsv")
    _expect_error(
        p, "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n", "rte", r"dev.tsv:3: expected 4"
    )
    _expect_error(p, "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", "rte", r":2: label 'maybe'")
    _expect_error(p, "sentence\tlabels\nx\t1\n", "sst2", r":1: header has no column 'label'")
    _expect_error(p, "gj04\t1\n", "cola", r":1: expected at least 4")
    _expect_error(
        p, "\t".join(HEADERS["STS-B"]) + "\n" + "\t".join(["0"] * 9 + ["high"]) + "\n", "stsb", "not a number"
    )
    with pytest.raises(glue_data.GlueDataError, match="no such folder"):
        glue_data.load_task("mrpc", str(tmp_path))


def test_quotes_are_not_special(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text('sentence\tlabel\n" it \'s " odd\t1\n')
    split = glue_data.read_tsv(str(p), glue_data.TASKS["sst2"])
    assert split.texts[0][0] == '" it \'s " odd'


def test_batches_are_bucketed_and_padded(tiny_teacher, glue_dir):
    data = glue_data.load_task("rte", glue_dir)
    enc = glue_data.encode(tiny_teacher.tokenizer, data.train, 64)
    assert glue_data.bucket_length(1, 32, 128) == 32 and glue_data.bucket_length(33, 32, 128) == 64
    assert glue_data.bucket_length(200, 32, 128) == 128
    batches = list(glue_data.train_batches(enc, 10, 0, 0, 0, 32, 64))
    assert len(batches) == 3  # 24 examples -> 10 + 10 + 4 real rows
    assert all(b["input_ids"].shape[0] == 10 and b["input_ids"].shape[1] in (32, 64) for b in batches)
    assert batches[-1]["weights"].sum() == 4
    # Pairs get segment ids 1 on the second sentence.
    assert any(b["token_type_ids"].max() == 1 for b in batches)
    seen = np.concatenate([idx for idx, _ in glue_data.eval_batches(enc, 10, 0, 32, 64)])
    assert sorted(seen) == list(range(24))
    # The epoch order depends on (seed, epoch) only.
    again = next(glue_data.train_batches(enc, 10, 0, 0, 0, 32, 64))
    np.testing.assert_array_equal(again["input_ids"], batches[0]["input_ids"])
