"""Collapse guard: is the student still telling tokens and sentences apart, as its teacher does?

A collapsed student maps every token to about one vector (the teacher's mean state): its KD loss still falls, but no
fine-tuning recovers it (docs/results.md, "projection collapse"). Two numbers on the last hidden state of a fixed
five-sentence batch show it: the token spread (std across tokens, mean over dimensions) and the mean pairwise [CLS]
cosine between sentences. The kd stage measures the student at every checkpoint against the teacher's values
(`kd.collapse_guard`, a `CollapseHook` of `distill`): warn loudly, stop with one `kdjax: error:` line, or off.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.errors import KdjaxError
from kdjax.hooks import Hook, Report
from kdjax.models import Encoder
from kdjax.spec import ArchSpec

log = logging.getLogger(__name__)

# Five unrelated SST-2-like sentences: the batch docs/results.md's collapse table was measured on.
SENTENCES = [
    "the movie was wonderful and moving .",
    "a dull , lifeless film .",
    "i would not recommend this to anyone .",
    "the cast is great but the plot is thin .",
    "an absolute triumph of storytelling .",
]
MODES = ("warn", "stop", "off")


class CollapseError(KdjaxError, RuntimeError):
    """The student collapsed and kd.collapse_guard=stop; its checkpoint is kept."""


def probe_batch(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) of SENTENCES, padded to the longest."""
    enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    return np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)


def spread(last: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(token std: std across valid tokens, mean over dims; mean pairwise [CLS] cosine between sentences)."""
    last = last.astype(jnp.float32)
    m = mask.astype(jnp.float32)[..., None]
    n = m.sum()
    mean = (last * m).sum((0, 1)) / n
    std = jnp.sqrt(((last - mean) ** 2 * m).sum((0, 1)) / n).mean()
    # All-zero [CLS] vectors (a zeroed student) count as cosine 0, not NaN; the token std catches them.
    cls = last[:, 0] / jnp.maximum(jnp.linalg.norm(last[:, 0], axis=-1, keepdims=True), 1e-12)
    b = cls.shape[0]
    cos = ((cls @ cls.T).sum() - jnp.trace(cls @ cls.T)) / (b * (b - 1))
    return std, cos


@functools.lru_cache(maxsize=32)
def _probe_fn(spec: ArchSpec):
    """One jitted forward + statistics per architecture (compiled once, reused at every checkpoint)."""

    def fn(params, ids, mask):
        out = cast(dict, Encoder(spec).apply({"params": params}, ids, mask))
        return spread(out["hidden_states"][-1], mask)

    return jax.jit(fn)


def measure(spec: ArchSpec, encoder_params: dict, ids: np.ndarray, mask: np.ndarray) -> dict:
    """{'token_std', 'mean_cls_cosine'} of an encoder (student params or a teacher's `params['encoder']`)."""
    params = {k: v for k, v in encoder_params.items() if k != "mlm_head"}  # the probe reads hidden states only
    std, cos = jax.device_get(_probe_fn(spec)(params, jnp.asarray(ids), jnp.asarray(mask)))
    return {"token_std": float(std), "mean_cls_cosine": float(cos)}


@dataclasses.dataclass(frozen=True)
class GuardConfig:
    mode: str = "warn"
    std_ratio: float = 0.2
    cls_cosine: float = 0.98


def diagnose(student: dict, teacher: dict, cfg: GuardConfig) -> list[str]:
    """Why `student` counts as collapsed against `teacher` (empty when healthy)."""
    why = []
    if student["token_std"] < cfg.std_ratio * teacher["token_std"]:
        why.append(
            f"token std {student['token_std']:.3g} < {cfg.std_ratio:g} x the teacher's {teacher['token_std']:.3g}"
        )
    # Only meaningful when the teacher itself tells the sentences apart.
    if student["mean_cls_cosine"] > cfg.cls_cosine > teacher["mean_cls_cosine"]:
        why.append(
            f"[CLS] cosine {student['mean_cls_cosine']:.4f} > {cfg.cls_cosine:g} "
            f"(teacher {teacher['mean_cls_cosine']:.4f})"
        )
    return why


class CollapseGuard:
    """Measures the student at each checkpoint; records to `<out_dir>/collapse.jsonl`; warns or stops."""

    def __init__(self, cfg: GuardConfig, teacher, student: ArchSpec, out_dir: str, desc: str):
        self.cfg, self.student, self.desc = cfg, student, desc
        self.path = os.path.join(out_dir, "collapse.jsonl")
        self.ids, self.mask = probe_batch(teacher.tokenizer)
        self.teacher = measure(teacher.spec, teacher.params["encoder"], self.ids, self.mask)

    def check(self, step: int, student_params: dict) -> list[str]:
        stats = measure(self.student, student_params, self.ids, self.mask)
        why = diagnose(stats, self.teacher, self.cfg)
        row = {
            "step": int(step),
            **stats,
            **{f"teacher_{k}": v for k, v in self.teacher.items()},
            "collapsed": bool(why),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if not why:
            log.info("%s step %d: token std %.3g, [CLS] cosine %.3f: not collapsed", self.desc, step, *stats.values())
            return why
        msg = f"{self.desc} collapsed at step {step}: " + "; ".join(why)
        hint = "try kd.init=teacher or a lower kd.learning_rate (docs/results.md, 'projection collapse')"
        if self.cfg.mode == "stop":
            raise CollapseError(
                f"{msg}; its checkpoint is kept; {hint}, or set kd.collapse_guard=warn to continue anyway"
            )
        print(f"kdjax: WARNING: {msg}; the student is no longer telling tokens apart; {hint}", file=sys.stderr)
        return why


@dataclasses.dataclass
class CollapseHook(Hook):
    """Runs the guard at every checkpoint step of `distill` (listed after `SaveCheckpoints`, so the checkpoint of a
    collapsed student is written before a stop)."""

    guard: CollapseGuard
    every: int = 0

    def __call__(self, report: Report) -> None:
        if report.step == report.num_steps or (self.every and report.step % self.every == 0):
            self.guard.check(report.step, report.state.params["student"])
