"""Collapse check of exported students: std of the last hidden state across tokens and [CLS] cosine between sentences.

    python docs/collapse_probe.py TEACHER_OR_STUDENT_DIR [DIR ...]
    python docs/collapse_probe.py --mean-loss TEACHER_DIR PACKED_ROWS.npy STUDENT_LAYERS

The second form prints the hidden-state loss of a "student" that outputs the teacher's per-dimension mean state for
every token (on the first 16 packed rows, e.g. W/cache/packed-*.npy): the level a collapsed student sits at.

A healthy encoder maps different tokens and sentences to different vectors; a collapsed one maps them all to about
one vector (token std near 0, cosine near 1). Used for the "projection collapse" table of docs/results.md; the kd
stage checks the same numbers at every checkpoint (`kd.collapse_guard`, kdjax/collapse.py).
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np

from kdjax.collapse import measure, probe_batch
from kdjax.losses import uniform_last_mapping
from kdjax.models import Encoder
from kdjax.teacher import load_teacher


def probe(path: str) -> dict:
    """The collapse guard's numbers (kdjax/collapse.py) for one exported model or teacher."""
    model = load_teacher(path)
    ids, mask = probe_batch(model.tokenizer)
    return {"model": path, "arch": model.spec.arch_id, **measure(model.spec, model.params["encoder"], ids, mask)}


def mean_predictor_loss(teacher_dir: str, rows_path: str, student_layers: int) -> float:
    teacher = load_teacher(teacher_dir)
    rows = np.asarray(np.load(rows_path, mmap_mode="r")[:16])
    mask = (rows != teacher.tokenizer.pad_token_id).astype(np.int32)
    hidden = Encoder(teacher.spec).apply({"params": teacher.params["encoder"]}, jnp.asarray(rows), jnp.asarray(mask))
    states = [np.asarray(h)[mask.astype(bool)] for h in hidden["hidden_states"]]
    pairs = uniform_last_mapping(student_layers, teacher.spec.num_layers)
    return float(np.mean([np.concatenate([states[a + 1], states[b + 1]], -1).var(0).mean() for a, b in pairs]))


if __name__ == "__main__":
    if sys.argv[1] == "--mean-loss":
        print({"mean_predictor_loss": mean_predictor_loss(sys.argv[2], sys.argv[3], int(sys.argv[4]))})
    else:
        for p in sys.argv[1:]:
            print(probe(p))
