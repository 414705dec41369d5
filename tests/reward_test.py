"""Reward: hand-computed values of R = max(0.01, 1 - loss) * (lat_s / (beta * lat_t)) ** alpha, budget, loss source."""

import math

import pytest

from kdjax.reward import RewardConfig, reward, select_loss


def test_soft_latency_term_hand_computed():
    cfg = RewardConfig(alpha=-0.07, beta=0.6)
    # loss 0.2, student 10 ms, teacher 50 ms: 0.8 * (10 / 30) ** -0.07
    assert reward(0.2, 10.0, 50.0, cfg) == pytest.approx(0.8 * (1 / 3) ** -0.07)
    assert reward(0.2, 10.0, 50.0, cfg) == pytest.approx(0.86395, abs=1e-4)  # 0.8 * 3 ** 0.07
    # Loss floor: quality never below 0.01, also for a diverged (non-finite) loss.
    assert reward(1.5, 30.0, 50.0, cfg) == pytest.approx(0.01)
    assert reward(math.nan, 30.0, 50.0, cfg) == pytest.approx(0.01)


def test_hard_budget_penalises_slow_candidates():
    cfg = RewardConfig(alpha=0.0, beta=1.0, latency_budget=0.5, budget_penalty=0.1)
    assert reward(0.2, 20.0, 50.0, cfg) == pytest.approx(0.8)  # 0.4 x teacher: within budget
    assert reward(0.2, 30.0, 50.0, cfg) == pytest.approx(0.08)  # 0.6 x teacher: over budget


def test_loss_sources():
    losses = [0.5, 0.2, 0.3]
    assert select_loss(losses, "last") == 0.3
    assert select_loss(losses, "mean") == pytest.approx(1 / 3)
    assert select_loss(losses, "min") == 0.2
