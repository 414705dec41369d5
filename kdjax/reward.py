"""The search reward: mini-KD loss traded against latency (MnasNet-style soft term plus an optional hard budget).

    R = max(0.01, 1 - loss) * (lat_student / (beta * lat_teacher)) ** alpha        (alpha < 0 rewards speed)

With alpha = -0.07 the latency term moves R by only ~15% between 1x and 10x speed-up, so the loss dominates;
`latency_budget` (a fraction of the teacher's latency) multiplies the reward of any slower candidate by
`budget_penalty`, which lets a user impose a real speed target.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

LOSS_FLOOR = 0.01


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    alpha: float = -0.07
    beta: float = 0.6
    latency_budget: float = 0.0  # fraction of teacher latency; 0 = no hard budget
    budget_penalty: float = 0.1


def select_loss(epoch_losses: Sequence[float], source: str) -> float:
    """The mini-KD loss that feeds the reward: 'last' epoch, 'mean' over epochs, or 'min'."""
    if not epoch_losses:
        return math.nan
    if source == "last":
        return float(epoch_losses[-1])
    if source == "mean":
        return float(sum(epoch_losses) / len(epoch_losses))
    if source == "min":
        return float(min(epoch_losses))
    raise ValueError(f"unknown loss source {source!r}")


def reward(loss: float, student_latency_ms: float, teacher_latency_ms: float, cfg: RewardConfig) -> float:
    """R as above; a non-finite loss (diverged candidate) gets the floor quality 0.01."""
    quality = max(LOSS_FLOOR, 1.0 - loss) if math.isfinite(loss) else LOSS_FLOOR
    r = quality * (student_latency_ms / (cfg.beta * teacher_latency_ms)) ** cfg.alpha
    if cfg.latency_budget > 0 and student_latency_ms > cfg.latency_budget * teacher_latency_ms:
        r *= cfg.budget_penalty
    return float(r)
