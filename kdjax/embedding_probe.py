"""STS-B zero-shot: how much of its teacher's sentence embedding a student keeps, with no fine-tuning and no seed.

Each sentence of an STS-B split is embedded as the mean of the encoder's last hidden states over its tokens (how
sentence-transformers models such as all-MiniLM-L6-v2 embed), and the cosine of each pair's embeddings is correlated
with the gold score (Spearman and Pearson, x100 as the GLUE tables show them). Fine-tuning a student on STS-B moves
its dev score by ~10 points from one GLUE seed to the next at the `:cpu` budget (docs/results.md), so that score
cannot rank students or KD variants; this one is a pure function of the encoder's weights. It reads the encoder as
distillation left it: a fine-tuned row and its fine-tune-only twin share the number.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import cast

import jax
import numpy as np

from kdjax import glue_data
from kdjax.classifier import masked_mean
from kdjax.metrics import pearson, spearman
from kdjax.models import Encoder
from kdjax.spec import ArchSpec
from kdjax.student_init import encoder_of
from kdjax.workdir import Workdir, read_json, write_json

BATCH = 64
BUCKET = 16


@functools.cache
def _embed_fn(spec: ArchSpec):
    model = Encoder(spec)

    @jax.jit
    def embed(params, ids, types, mask):
        out = cast(dict, model.apply({"params": params}, ids, mask, types))
        last = out["hidden_states"][-1]
        return masked_mean(last, mask)

    return embed


def encoder_params(params: dict) -> dict:
    """The encoder's params (hidden states only: no MLM head) from a loaded model's or a student's params."""
    return {k: v for k, v in encoder_of(params).items() if k != "mlm_head"}


def embed(spec: ArchSpec, params: dict, tokenizer, sentences: list[str], max_seq_len: int) -> np.ndarray:
    """[N, hidden] mean-pooled last hidden states of `sentences` (length-bucketed batches, pad rows dropped)."""
    split = glue_data.Split((list(sentences),), np.zeros(len(sentences), np.float32))
    data = glue_data.encode(tokenizer, split, max_seq_len)
    fn, enc = _embed_fn(spec), encoder_params(params)
    out = np.zeros((len(sentences), spec.hidden_size), np.float32)
    pad = tokenizer.pad_token_id or 0
    for idx, batch in glue_data.eval_batches(data, BATCH, pad, BUCKET, max_seq_len):
        vecs = fn(enc, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        out[idx] = np.asarray(vecs)[: len(idx)]
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; a zero vector (a fully collapsed encoder) counts as cosine 0."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-12), 0.0)


def zero_shot_sts(spec: ArchSpec, params: dict, tokenizer, split: glue_data.Split, max_seq_len: int) -> dict:
    """{'spearman', 'pearson'} (x100) of the pairs' embedding cosines against the gold scores of `split`."""
    if len(split.texts) != 2 or len(split) < 2:
        raise ValueError("the STS-B zero-shot probe needs sentence pairs with scores")
    a = embed(spec, params, tokenizer, split.texts[0], max_seq_len)
    b = embed(spec, params, tokenizer, split.texts[1], max_seq_len)
    sims, gold = cosine(a, b), np.asarray(split.labels, np.float64)
    return {"spearman": 100 * spearman(sims, gold), "pearson": 100 * pearson(sims, gold), "pairs": len(split)}


# --- the glue stage's record, and the report's table -------------------------------------------------------------

FILE = "stsb-zeroshot.json"  # beside the row's GLUE scores: W/glue/<model>/stsb-zeroshot.json


def is_current(path: str, weights: str | None, same_source: Callable[[dict], bool], data: str) -> bool:
    """Whether `path` holds the probe of these weights (or this teacher source: `same_source` of the record) on this
    STS-B data."""
    if not os.path.exists(path):
        return False
    try:
        old = read_json(path)
    except ValueError:  # damaged: measured again
        return False
    return old.get("weights") == weights and same_source(old) and old.get("data") == data


def record(path: str, row: dict, model: tuple, split: glue_data.Split, max_seq_len: int) -> dict:
    """Probe `model` = (spec, params, tokenizer) on `split` and write `row` + the scores to `path`."""
    spec, params, tokenizer = model
    out = {**row, **zero_shot_sts(spec, params, tokenizer, split, max_seq_len), "max_seq_len": max_seq_len}
    write_json(path, out)
    return out


def load_records(root: str) -> list[dict]:
    """Every W/glue/<model>/stsb-zeroshot.json, the teacher's first."""
    wd = Workdir(root, create=False)
    found = []
    for model in wd.glue_models():
        path = os.path.join(os.path.dirname(wd.glue_result(model, "stsb")), FILE)
        if os.path.exists(path):
            try:
                found.append(read_json(path))
            except ValueError:
                continue  # damaged: the next glue run measures it again
    return sorted(found, key=lambda r: (r.get("kind") != "teacher", r.get("model", "")))


def table(records: list[dict]) -> str:
    """Markdown table of the probe per model, with the share of the teacher's Spearman."""
    if not records:
        return ""
    teacher = next((r["spearman"] for r in records if r.get("kind") == "teacher"), None)
    lines = [
        "### STS-B zero-shot: sentence embeddings, no fine-tuning",
        "",
        "Spearman / Pearson (x100) of the cosine between the pairs' mean-pooled last hidden states and the gold "
        "scores, full dev set; a pure function of the encoder's weights (no classifier, no seed), read before "
        "fine-tuning (a student's `-ft` twin has the same encoder).",
        "",
        "| model | spearman | pearson | % of teacher (spearman) |",
        "|---|---|---|---|",
    ]
    for r in records:
        share = f"{100 * r['spearman'] / teacher:.1f}%" if teacher else "-"
        lines.append(f"| {r['model']} | {r['spearman']:.2f} | {r['pearson']:.2f} | {share} |")
    return "\n".join(lines) + "\n"
