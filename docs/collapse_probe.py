"""Collapse check of exported students: std of the last hidden state across tokens and [CLS] cosine between sentences.

    python docs/collapse_probe.py TEACHER_OR_STUDENT_DIR [DIR ...]

A healthy encoder maps different tokens and sentences to different vectors; a collapsed one maps them all to about
one vector (token std near 0, cosine near 1). Used for the "projection collapse" table of docs/results.md.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np

from kdjax.models import Encoder
from kdjax.teacher import load_teacher

SENTENCES = [
    "the movie was wonderful and moving .",
    "a dull , lifeless film .",
    "i would not recommend this to anyone .",
    "the cast is great but the plot is thin .",
    "an absolute triumph of storytelling .",
]


def probe(path: str) -> dict:
    model = load_teacher(path)
    enc = model.tokenizer(SENTENCES, padding=True, return_tensors="np")
    mask = enc["attention_mask"]
    out = Encoder(model.spec).apply(
        {"params": model.params["encoder"]}, jnp.asarray(enc["input_ids"]), jnp.asarray(mask)
    )
    last = np.asarray(out["hidden_states"][-1])
    cls = last[:, 0] / np.linalg.norm(last[:, 0], axis=-1, keepdims=True)
    n = len(SENTENCES)
    return {
        "model": path,
        "arch": model.spec.arch_id,
        "token_std": float(last[mask.astype(bool)].std(axis=0).mean()),
        "mean_cls_cosine": float(((cls @ cls.T).sum() - n) / (n * (n - 1))),
    }


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(probe(p))
