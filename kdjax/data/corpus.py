"""Corpus -> tokenized lines (`datasets.map`, cached) -> packed rows of `max_seq_len` tokens (cached .npy)."""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import zlib
from typing import TYPE_CHECKING

import numpy as np

from kdjax.data import synthetic
from kdjax.errors import KdjaxError

if TYPE_CHECKING:
    from kdjax.config.settings import DataSettings

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".gz", ".tokens", ".raw")


class DataError(KdjaxError, ValueError):
    """Missing, empty or unreadable data."""


def corpus_files(corpus: str) -> list[str]:
    """Expand a file, folder or glob into a sorted list of text files; [] when `corpus` looks like a hub id."""
    path = os.path.expanduser(corpus)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if f.endswith(TEXT_SUFFIXES))
        if not files:
            raise DataError(f"corpus folder {corpus} has no text files ({', '.join(TEXT_SUFFIXES)})")
        return files
    if any(ch in corpus for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"corpus glob {corpus} matches no files")
        return files
    if os.path.sep in corpus or corpus.startswith(".") or corpus.endswith(TEXT_SUFFIXES):
        raise DataError(f"corpus path {corpus} does not exist")
    return []


def _file_problem(path: str) -> str | None:
    """Why `datasets` could not read this text file: bytes that are not UTF-8, a truncated or corrupt gzip, or no text.

    Run only after a failed load (the happy path never reads the corpus twice); the answer names file, line and cause.
    """
    opener = gzip.open if path.endswith(".gz") else open
    line, has_text = 0, False
    try:
        with opener(path, "rb") as f:
            for line, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return (
                        f"{path}:{line}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8; "
                        "re-encode the corpus as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                    )
                has_text = has_text or bool(text.strip())
    except gzip.BadGzipFile:
        return f"{path}: not gzip data although the name ends in .gz; rename or re-compress it"
    except (EOFError, zlib.error) as e:
        return f"{path}:{line + 1}: truncated or corrupt gzip ({e}); re-create or re-download the file"
    return None if has_text else f"{path}: empty file (no text)"


def _load_problem(files: list[str], error: BaseException) -> str:
    """One line for a failed local load: the first file that explains it, else the innermost cause."""
    problems = [_file_problem(f) for f in files]
    hard = [p for p in problems if p and not p.endswith("empty file (no text)")]
    if hard:
        return hard[0]
    if all(problems):
        return str(problems[0]) if len(files) == 1 else f"corpus is empty: none of its {len(files)} files has text"
    root = error
    while (inner := root.__cause__ or root.__context__) is not None:
        root = inner
    return f"cannot read corpus files ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''}): " + (
        f"{type(root).__name__}: {root}"
    )


def _fingerprint(corpus: str, files: list[str], extra: dict) -> str:
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    h.update(corpus.encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_text(
    corpus: str, *, text_column: str = "text", max_lines: int = 0, synthetic_lines: int = 2000, seed: int = 0
):
    """A `datasets.Dataset` with one non-empty line per row in column 'text'."""
    import datasets

    datasets.disable_progress_bars()
    if corpus == "synthetic":
        ds = datasets.Dataset.from_dict({"text": synthetic.lines(synthetic_lines, seed)})
    else:
        files = corpus_files(corpus)
        try:
            if files:
                ds = datasets.load_dataset("text", data_files=files, split="train")
            else:
                name, _, subset = corpus.partition(":")
                ds = datasets.load_dataset(name, subset or None, split="train")
        except DataError:
            raise
        except Exception as e:
            if files:
                raise DataError(_load_problem(files, e)) from e
            raise DataError(f"cannot load corpus {corpus!r}: {type(e).__name__}: {e}") from e
        if text_column != "text":
            if text_column not in ds.column_names:
                raise DataError(f"corpus {corpus!r} has no column {text_column!r} (has {ds.column_names})")
            ds = ds.rename_column(text_column, "text")
        ds = ds.select_columns(["text"]).filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)
    if max_lines:
        ds = ds.select(range(min(max_lines, len(ds))))
    if len(ds) == 0:
        raise DataError(f"corpus {corpus!r} is empty (no non-empty lines)")
    return ds


def _plain_lines(corpus: str, files: list[str], max_lines: int, synthetic_lines: int, seed: int) -> list[str]:
    """The lines `load_text` would give for the synthetic or a local text corpus, read without `datasets`."""
    if corpus == "synthetic":
        texts = list(synthetic.lines(synthetic_lines, seed))
    else:
        texts = []
        for path in files:
            try:
                with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
                    texts += [t for t in f.read().splitlines() if t.strip()]
            except (OSError, EOFError, UnicodeDecodeError) as e:
                raise DataError(f"cannot read corpus file {path}: {e}") from e
    texts = texts[:max_lines] if max_lines else texts
    if not texts:
        raise DataError(f"corpus {corpus!r} is empty (no non-empty lines)")
    return texts


def pack_rows(token_lists, max_seq_len: int, cls_id: int, sep_id: int, pad_id: int) -> np.ndarray:
    """Pack whole sentences as `[CLS] s1 [SEP] s2 [SEP] ...` into rows of `max_seq_len` tokens, best-fit decreasing.

    A sentence longer than a row is split into row-sized pieces instead of being truncated, so no text is lost.
    Pieces are placed longest first into the row with the least free space that still fits them (rows are indexed
    by free space, so this is O(pieces x max_seq_len)); rows end up ~99% real tokens where in-order greedy packing
    leaves ~13% padding. The result is deterministic for a given corpus.
    """
    piece_len = max_seq_len - 2  # room for [CLS] and one [SEP]
    pieces = [ids[i : i + piece_len] for ids in map(list, token_lists) for i in range(0, len(ids), piece_len)]
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))
    rows: list[list[int]] = []
    by_free: list[list[int]] = [[] for _ in range(max_seq_len)]  # free slots -> row indices
    for i in order:
        need = len(pieces[i]) + 1
        row = next((by_free[f].pop() for f in range(need, max_seq_len) if by_free[f]), None)
        if row is None:
            row = len(rows)
            rows.append([cls_id])
        rows[row].extend(pieces[i])
        rows[row].append(sep_id)
        by_free[max_seq_len - len(rows[row])].append(row)
    out = np.full((len(rows), max_seq_len), pad_id, dtype=np.int32)
    for r, toks in enumerate(rows):
        out[r, : len(toks)] = toks
    return out


def packed_corpus(data: DataSettings, tokenizer, cache_dir: str | None, seed: int = 0) -> np.ndarray:
    """Tokenize and pack the configured corpus; the packed rows are cached in `cache_dir` by content fingerprint."""
    corpus = data.corpus
    files = [] if corpus == "synthetic" else corpus_files(corpus)
    extra = {
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "vocab": len(tokenizer),
        "max_seq_len": data.max_seq_len,
        "max_lines": data.max_lines,
        "text_column": data.text_column,
        "synthetic": data.synthetic_lines if corpus == "synthetic" else 0,
        "seed": seed if corpus == "synthetic" else 0,
        "version": 2,
    }
    key = _fingerprint(corpus, files, extra)
    path = os.path.join(cache_dir, f"packed-{key}.npy") if cache_dir else None
    if path and os.path.exists(path):
        rows = _cached_rows(path, data.max_seq_len)
        if rows is not None:
            return rows
    if importlib.util.find_spec("datasets") is None and (corpus == "synthetic" or files):
        # Local text needs no `datasets` (nor its pyarrow): machines without them still run from local corpora.
        texts = _plain_lines(corpus, files, data.max_lines, data.synthetic_lines, seed)
        token_lists = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        ds = load_text(
            corpus,
            text_column=data.text_column,
            max_lines=data.max_lines,
            synthetic_lines=data.synthetic_lines,
            seed=seed,
        )

        def tokenize(batch):
            return {"input_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]}

        token_lists = ds.map(tokenize, batched=True, batch_size=1000, remove_columns=["text"])["input_ids"]
    rows = pack_rows(
        token_lists,
        int(data.max_seq_len),
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.pad_token_id,
    )
    if len(rows) == 0:
        raise DataError(f"corpus {corpus!r} produced no tokens")
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npy"
        np.save(tmp, rows)
        os.replace(tmp, path)
    return rows


def _cached_rows(path: str, max_seq_len: int) -> np.ndarray | None:
    """The packed rows cached at `path`, or None (with a warning) when the file is damaged and must be rebuilt."""
    try:
        rows = np.load(path, allow_pickle=False)
        if rows.ndim != 2 or rows.shape[1] != max_seq_len or rows.dtype != np.int32 or len(rows) == 0:
            raise ValueError(f"holds a {rows.dtype} array of shape {rows.shape}")
        return rows
    except (OSError, ValueError, EOFError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        log.warning("packed-corpus cache %s is damaged (%s); rebuilding it", path, reason)
        with contextlib.suppress(OSError):
            os.remove(path)
        return None


def proxy_subset(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A fixed random `fraction` of the rows (at least one), the same for every candidate of a search."""
    if fraction >= 1.0:
        return rows
    n = max(1, int(round(len(rows) * fraction)))
    idx = np.sort(np.random.default_rng([seed, 7]).permutation(len(rows))[:n])
    return rows[idx]
