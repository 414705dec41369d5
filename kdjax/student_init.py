"""Initialise a student from its teacher's weights instead of at random (`config.kd.init = 'teacher'`, or 'auto':
the teacher whenever the student fits inside it, see `resolve_init`).

Depth: the student takes evenly spaced teacher layers (DistilBERT takes every other one), always including the last.
Width: a narrower student keeps the teacher's most important pieces, scored by weight magnitude:
  - residual (hidden) dimensions by the L2 norm of their column in the word embeddings, kept in every matrix that
    reads or writes the residual stream so the sub-network stays consistent;
  - attention heads by the norm of their rows in the attention output projection (when head sizes match), otherwise
    the Q/K/V output columns with the largest norms;
  - FFN neurons by ||W_in[:, j]|| * ||W_out[j, :]||.
This is a structured-pruning init (as in the "keep important heads/neurons" literature), not a learned one.
"""

from __future__ import annotations

import logging

import numpy as np

from kdjax.errors import KdjaxError
from kdjax.spec import ArchSpec

log = logging.getLogger(__name__)
_told: set[tuple[str, str]] = set()  # (teacher, student) pairs whose random fallback was already logged


def teacher_layer_indices(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, ending at the last one (e.g. 12 -> 6: 1, 3, 5, 7, 9, 11)."""
    if student_layers >= teacher_layers:
        return [min(i, teacher_layers - 1) for i in range(student_layers)]
    step = teacher_layers / student_layers
    return [round((i + 1) * step) - 1 for i in range(student_layers)]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, in their original order (keeps positional structure)."""
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def _dense(p: dict, rows: np.ndarray | None, cols: np.ndarray | None) -> dict:
    kernel, bias = np.asarray(p["kernel"]), np.asarray(p["bias"])
    if rows is not None:
        kernel = kernel[rows]
    if cols is not None:
        kernel, bias = kernel[:, cols], bias[cols]
    return {"kernel": kernel, "bias": bias}


def _ln(p: dict, idx: np.ndarray) -> dict:
    return {"scale": np.asarray(p["scale"])[idx], "bias": np.asarray(p["bias"])[idx]}


def _head_columns(layer: dict, teacher: ArchSpec, student: ArchSpec) -> np.ndarray:
    """Q/K/V output columns to keep: whole heads when head sizes match, else the largest columns."""
    out_kernel = np.asarray(layer["attention"]["output"]["dense"]["kernel"])  # [H_t (heads*dim), H_t]
    if teacher.head_dim == student.head_dim and student.num_heads <= teacher.num_heads:
        per_head = np.linalg.norm(out_kernel.reshape(teacher.num_heads, teacher.head_dim, -1), axis=(1, 2))
        heads = _top(per_head, student.num_heads)
        return (heads[:, None] * teacher.head_dim + np.arange(teacher.head_dim)[None, :]).ravel()
    return _top(np.linalg.norm(out_kernel, axis=1), student.hidden_size)


def _layer(layer: dict, hid: np.ndarray, teacher: ArchSpec, student: ArchSpec) -> dict:
    att = layer["attention"]
    cols = _head_columns(layer, teacher, student)
    w_in = np.asarray(layer["intermediate"]["dense"]["kernel"])
    w_out = np.asarray(layer["output"]["dense"]["kernel"])
    ffn = _top(np.linalg.norm(w_in, axis=0) * np.linalg.norm(w_out, axis=1), student.ffn_size)
    return {
        "attention": {
            "self": {k: _dense(att["self"][k], hid, cols) for k in ("query", "key", "value")},
            "output": {
                "dense": _dense(att["output"]["dense"], cols, hid),
                "LayerNorm": _ln(att["output"]["LayerNorm"], hid),
            },
        },
        "intermediate": {"dense": _dense(layer["intermediate"]["dense"], hid, ffn)},
        "output": {
            "dense": _dense(layer["output"]["dense"], ffn, hid),
            "LayerNorm": _ln(layer["output"]["LayerNorm"], hid),
        },
    }


def why_not_teacher(teacher: ArchSpec, student: ArchSpec) -> str | None:
    """Why `student` cannot be cut out of `teacher` (None when it fits: no wider, no deeper, no larger FFN)."""
    if teacher.embedding_size is not None or teacher.shared_layers:
        return "the teacher factorises its embeddings or shares layers (ALBERT)"
    for dim, label in (("hidden_size", "hidden size"), ("ffn_size", "FFN size"), ("num_layers", "depth")):
        if getattr(student, dim) > getattr(teacher, dim):
            return f"its {label} {getattr(student, dim)} exceeds the teacher's {getattr(teacher, dim)}"
    return None


def resolve_init(init: str, teacher: ArchSpec, student: ArchSpec) -> str:
    """'random' or 'teacher' for `config.kd.init`: 'auto' is 'teacher' whenever the student fits inside the teacher
    (teacher-cut students distil better: docs/results.md), 'random' otherwise, saying why once per architecture."""
    if init != "auto":
        return init
    reason = why_not_teacher(teacher, student)
    if reason is None:
        return "teacher"
    if (teacher.arch_id, student.arch_id) not in _told:
        _told.add((teacher.arch_id, student.arch_id))
        log.warning("kd.init=auto: %s starts from random weights: %s", student.arch_id, reason)
    return "random"


def initial_params(init: str, teacher_params: dict, teacher: ArchSpec, student: ArchSpec) -> dict | None:
    """Student params for `config.kd.init`: None for 'random' (the trainer draws them), else cut from the teacher."""
    if resolve_init(init, teacher, student) == "random":
        return None
    try:
        return from_teacher(teacher_params, teacher, student)
    except ValueError as e:
        raise KdjaxError(str(e)) from e


def encoder_of(teacher_params: dict) -> dict:
    """The Encoder's params of a loaded model's params ({'encoder': ..., 'pooler': ...}) or of bare Encoder params."""
    if "encoder" in teacher_params and "embeddings" not in teacher_params:
        return teacher_params["encoder"]
    return teacher_params


def kept_dims(teacher_params: dict, hidden_size: int) -> np.ndarray:
    """The teacher residual dimensions a narrower student keeps: largest word-embedding column norms, in order."""
    word = np.asarray(encoder_of(teacher_params)["embeddings"]["word_embeddings"]["embedding"])
    return _top(np.linalg.norm(word, axis=0), hidden_size)


def initial_projection(init: str, teacher_params: dict, teacher: ArchSpec, student: ArchSpec) -> dict | None:
    """The KD projection Linear(Hs, 2*Ht) for `config.kd.init`: None for 'random' (drawn at random), else the map
    that puts student dimension j back on the teacher dimension it was cut from, in both halves of the target.

    A random projection scrambles what a teacher-cut student already knows: its first steps then lower the loss
    fastest by collapsing every token to the mean teacher state (measured: docs/results.md), which fine-tuning
    cannot recover from. With this map the cut student starts close to the teacher states it is matched to.
    """
    if resolve_init(init, teacher, student) == "random":
        return None
    hid = kept_dims(teacher_params, student.hidden_size)
    kernel = np.zeros((student.hidden_size, 2 * teacher.hidden_size), np.float32)
    rows = np.arange(student.hidden_size)
    kernel[rows, hid] = 1.0
    kernel[rows, teacher.hidden_size + hid] = 1.0
    return {"kernel": kernel, "bias": np.zeros((2 * teacher.hidden_size,), np.float32)}


def from_teacher(teacher_params: dict, teacher: ArchSpec, student: ArchSpec) -> dict:
    """Student Encoder params cut out of the teacher's `encoder` params (see module docstring)."""
    if teacher.embedding_size is not None or teacher.shared_layers:
        raise ValueError(
            "kd.init='teacher' needs a teacher without factorised embeddings or layer sharing (not ALBERT)"
        )
    if student.hidden_size > teacher.hidden_size or student.ffn_size > teacher.ffn_size:
        raise ValueError(f"kd.init='teacher' needs a student no wider than its teacher ({student.arch_id})")
    enc = encoder_of(teacher_params)
    emb = enc["embeddings"]
    hid = kept_dims(teacher_params, student.hidden_size)
    embeddings = {
        name: {"embedding": np.asarray(emb[name]["embedding"])[:, hid]}
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    }
    embeddings["LayerNorm"] = _ln(emb["LayerNorm"], hid)
    layers = enc["encoder"]["layer"]
    picked = teacher_layer_indices(teacher.num_layers, student.num_layers)
    return {
        "embeddings": embeddings,
        "encoder": {"layer": {str(i): _layer(layers[str(t)], hid, teacher, student) for i, t in enumerate(picked)}},
    }
