"""GLUE tasks: their layouts, loading (local TSV folders or `nyu-mll/glue` from the hub), tokenisation, batching.

Local folders use the standard GLUE download layout (`<glue_dir>/<Folder>/{train,dev}.tsv`, MNLI with
`dev_matched.tsv`/`dev_mismatched.tsv`, CoLA without a header) and are read with tab delimiters and QUOTE_NONE, as
GLUE's own scripts do. Labels are mapped to the class indices of `nyu-mll/glue`, so both sources train the same head.
Batches are padded to the longest example rounded up to a multiple of `bucket` (capped at max_seq_len), so a task
compiles a handful of shapes instead of padding everything to 128.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import sys
from collections.abc import Iterator

import numpy as np

from kdjax.errors import KdjaxError

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class GlueDataError(KdjaxError, ValueError):
    """A GLUE file that cannot be read (missing, wrong columns, unknown label); the message names file and line."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Where a task's TSVs live, which columns hold text and label, and its label set (None = regression)."""

    name: str
    folder: str
    # Header names of the text and label columns; for header-less files (CoLA) their 0-based indices.
    text_columns: tuple
    label_column: str | int
    labels: tuple[str, ...] | None
    # Dev splits: short name -> (TSV file name, hub split name).
    dev_splits: tuple[tuple[str, str, str], ...] = (("dev", "dev.tsv", "validation"),)
    header: bool = True
    # Columns of the hub dataset, in the order of `text_columns`.
    hub_text: tuple[str, ...] = ("sentence",)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


# Explicit registry: task name -> layout. Label order = `nyu-mll/glue` class indices.
TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("cola", "CoLA", (3,), 1, ("0", "1"), header=False),
    "sst2": TaskSpec("sst2", "SST-2", ("sentence",), "label", ("0", "1")),
    "mrpc": TaskSpec(
        "mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), hub_text=("sentence1", "sentence2")
    ),
    "stsb": TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, hub_text=("sentence1", "sentence2")),
    "qqp": TaskSpec(
        "qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), hub_text=("question1", "question2")
    ),
    "mnli": TaskSpec(
        "mnli",
        "MNLI",
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        dev_splits=(
            ("matched", "dev_matched.tsv", "validation_matched"),
            ("mismatched", "dev_mismatched.tsv", "validation_mismatched"),
        ),
        hub_text=("premise", "hypothesis"),
    ),
    "qnli": TaskSpec(
        "qnli",
        "QNLI",
        ("question", "sentence"),
        "label",
        ("entailment", "not_entailment"),
        hub_text=("question", "sentence"),
    ),
    "rte": TaskSpec(
        "rte",
        "RTE",
        ("sentence1", "sentence2"),
        "label",
        ("entailment", "not_entailment"),
        hub_text=("sentence1", "sentence2"),
    ),
    "wnli": TaskSpec(
        "wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), hub_text=("sentence1", "sentence2")
    ),
}


@dataclasses.dataclass
class Split:
    """Raw examples of one split: one list of strings per text column, and labels (int classes or float scores)."""

    texts: tuple[list[str], ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Split:
        return Split(tuple(t[:n] for t in self.texts), self.labels[:n])


@dataclasses.dataclass
class TaskData:
    task: TaskSpec
    train: Split
    dev: dict[str, Split]  # split name -> examples (MNLI: matched, mismatched)
    source: str


def _read_text(path: str) -> str:
    """The file as text; bytes that are not UTF-8 raise GlueDataError naming the line (GLUE ships UTF-8)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise GlueDataError(
            f"{path}:{line}: byte 0x{data[e.start]:02x} at column {column} is not UTF-8; "
            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def read_tsv(path: str, task: TaskSpec) -> Split:
    """Read one GLUE TSV of `task`; any malformed row raises GlueDataError naming `path:line`."""
    if not os.path.exists(path):
        raise GlueDataError(f"{path}: file not found (expected the GLUE {task.folder} layout)")
    rows = list(csv.reader(io.StringIO(_read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    start, ncols = 0, None
    if task.header:
        if not rows:
            raise GlueDataError(f"{path}:1: empty file, expected a header row")
        header = rows[0]
        missing = [c for c in (*task.text_columns, task.label_column) if c not in header]
        if missing:
            raise GlueDataError(f"{path}:1: header has no column {missing[0]!r} (found: {', '.join(header)})")
        text_idx = [header.index(c) for c in task.text_columns]
        label_idx = header.index(str(task.label_column))
        start, ncols = 1, len(header)
    else:
        text_idx, label_idx = list(task.text_columns), int(task.label_column)
        needed = max(*text_idx, label_idx) + 1
    texts: tuple[list[str], ...] = tuple([] for _ in text_idx)
    labels: list = []
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if not row or row == [""]:
            continue
        if ncols is not None and len(row) != ncols:
            raise GlueDataError(f"{path}:{lineno}: expected {ncols} tab-separated columns, found {len(row)}")
        if ncols is None and len(row) < needed:
            raise GlueDataError(f"{path}:{lineno}: expected at least {needed} tab-separated columns, found {len(row)}")
        raw = row[label_idx].strip()
        if task.is_regression:
            try:
                score = float(raw)
            except ValueError:
                raise GlueDataError(f"{path}:{lineno}: label {raw!r} is not a number") from None
            # float() accepts 'nan' and 'inf'; one such score makes the regression loss NaN from the first step.
            if not math.isfinite(score):
                raise GlueDataError(f"{path}:{lineno}: label {raw!r} is not a finite number")
            labels.append(score)
        else:
            classes = task.labels or ()  # always set for a classification task
            if raw not in classes:
                raise GlueDataError(f"{path}:{lineno}: label {raw!r} is not one of {', '.join(classes)}")
            labels.append(classes.index(raw))
        for out, i in zip(texts, text_idx):
            out.append(row[i])
    if not labels:
        raise GlueDataError(f"{path}: no examples")
    dtype = np.float32 if task.is_regression else np.int32
    return Split(texts, np.asarray(labels, dtype))


def _hub_split(ds, task: TaskSpec) -> Split:
    labels = np.asarray(ds["label"], np.float32 if task.is_regression else np.int32)
    bad = np.flatnonzero(~np.isfinite(labels)) if task.is_regression else np.zeros(0, np.int64)
    if len(bad):
        raise GlueDataError(f"nyu-mll/glue {task.name} {ds.split}: row {bad[0]} has label {labels[bad[0]]}")
    return Split(tuple(list(ds[c]) for c in task.hub_text), labels)


def load_task(name: str, glue_dir: str = "") -> TaskData:
    """All splits of task `name` from a local GLUE folder, or from `nyu-mll/glue` when `glue_dir` is empty."""
    task = TASKS[name]
    if glue_dir:
        folder = os.path.join(os.path.expanduser(glue_dir), task.folder)
        if not os.path.isdir(folder):
            raise GlueDataError(f"{folder}: no such folder (data.glue_dir needs a {task.folder}/ sub-folder)")
        train = read_tsv(os.path.join(folder, "train.tsv"), task)
        dev = {s: read_tsv(os.path.join(folder, f), task) for s, f, _ in task.dev_splits}
        return TaskData(task, train, dev, folder)
    try:
        import datasets

        ds = datasets.load_dataset("nyu-mll/glue", name)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GlueDataError(
            f"cannot load GLUE task {name!r} from the hub (nyu-mll/glue): {first}; "
            "set --config.data.glue_dir to a local GLUE folder"
        ) from e
    dev = {s: _hub_split(ds[h], task) for s, _, h in task.dev_splits}
    return TaskData(task, _hub_split(ds["train"], task), dev, "hub:nyu-mll/glue")


@dataclasses.dataclass
class Encoded:
    """Tokenised examples: ragged token ids and segment ids, and the labels.

    Bi-encoded pairs (`encode(..., bi=True)`) keep each pair's first sentence in `input_ids` / `token_type_ids` and
    its second, tokenised on its own, in `pair_ids`; `make_batch` then interleaves them as rows a0, b0, a1, b1, ...
    """

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: np.ndarray
    pair_ids: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example (a bi-encoded pair: its longer sentence, the length its two rows are padded to)."""
        if self.pair_ids is None:
            return np.asarray([len(x) for x in self.input_ids])
        return np.asarray([max(len(a), len(b)) for a, b in zip(self.input_ids, self.pair_ids)])


def _token_types(enc, ids: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(x, np.int32) for x in enc.get("token_type_ids", [np.zeros(len(i)) for i in ids])]


def encode(tokenizer, split: Split, max_seq_len: int, bi: bool = False) -> Encoded:
    """Tokenise single sentences or pairs with [CLS] a [SEP] (b [SEP]), truncated longest-first to max_seq_len.

    `bi`: a pair's sentences are tokenised separately ([CLS] a [SEP] and [CLS] b [SEP], each truncated to
    max_seq_len), as a bi-encoder reads them (kdjax.classifier's `bi_encoder`)."""
    a = split.texts[0]
    b = split.texts[1] if len(split.texts) > 1 else None
    if bi:
        if b is None:
            raise ValueError("a bi-encoder needs sentence pairs")
        first = tokenizer(a, truncation=True, max_length=max_seq_len, return_token_type_ids=True)
        second = tokenizer(b, truncation=True, max_length=max_seq_len)
        ids = [np.asarray(x, np.int32) for x in first["input_ids"]]
        pair = [np.asarray(x, np.int32) for x in second["input_ids"]]
        return Encoded(ids, _token_types(first, ids), split.labels, pair)
    enc = tokenizer(a, b, truncation=True, max_length=max_seq_len, return_token_type_ids=True)
    ids = [np.asarray(x, np.int32) for x in enc["input_ids"]]
    return Encoded(ids, _token_types(enc, ids), split.labels)


def bucket_length(n: int, bucket: int, max_seq_len: int) -> int:
    """Round `n` up to a multiple of `bucket`, capped at `max_seq_len`."""
    return min(max_seq_len, -(-n // bucket) * bucket)


def make_batch(data: Encoded, idx: np.ndarray, batch_size: int, pad_id: int, bucket: int, max_seq_len: int) -> dict:
    """Examples `idx` padded to a [batch_size, bucketed length] batch; filler rows get weight 0.

    Bi-encoded pairs give [2 * batch_size, length] token arrays, the pair's sentences in adjacent rows (a data-axis
    shard then holds whole pairs), and [batch_size] labels and weights."""
    n = len(idx)
    length = bucket_length(max(int(data.lengths[idx].max()), 1), bucket, max_seq_len)
    per = 1 if data.pair_ids is None else 2
    ids = np.full((per * batch_size, length), pad_id, np.int32)
    types = np.zeros((per * batch_size, length), np.int32)
    mask = np.zeros((per * batch_size, length), np.int32)
    for r, i in enumerate(idx):
        k = len(data.input_ids[i])
        ids[per * r, :k], types[per * r, :k], mask[per * r, :k] = data.input_ids[i], data.token_type_ids[i], 1
        if data.pair_ids is not None:
            k = len(data.pair_ids[i])
            ids[2 * r + 1, :k], mask[2 * r + 1, :k] = data.pair_ids[i], 1
    labels = np.zeros((batch_size,), data.labels.dtype)
    labels[:n] = data.labels[idx]
    weights = np.zeros((batch_size,), np.float32)
    weights[:n] = 1.0
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels, "weights": weights}


def train_batches(
    data: Encoded, batch_size: int, epoch: int, seed: int, pad_id: int, bucket: int, max_seq_len: int
) -> Iterator[dict]:
    """One epoch in a shuffled order drawn from (seed, epoch); the last short batch is padded with weight-0 rows."""
    order = np.random.default_rng([seed, epoch]).permutation(len(data))
    for s in range(0, len(order), batch_size):
        yield make_batch(data, order[s : s + batch_size], batch_size, pad_id, bucket, max_seq_len)


def eval_order(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The example indices of each scoring batch: sorted by length, so short examples share short batches."""
    order = np.argsort(lengths, kind="stable")
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def padded_lengths(lengths: np.ndarray, batches: list[np.ndarray], bucket: int, max_seq_len: int) -> list[int]:
    """The padded length `make_batch` gives each batch of example indices (one compiled program per value)."""
    return [bucket_length(max(int(lengths[b].max()), 1), bucket, max_seq_len) for b in batches]


def eval_batches(data: Encoded, batch_size: int, pad_id: int, bucket: int, max_seq_len: int) -> Iterator[tuple]:
    """(example indices, batch) over the whole split, in `eval_order`."""
    for idx in eval_order(data.lengths, batch_size):
        yield idx, make_batch(data, idx, batch_size, pad_id, bucket, max_seq_len)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)
