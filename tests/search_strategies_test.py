"""Strategies on a synthetic reward (no training): they find the optimum's neighbourhood and resume deterministically.

The reward is an analytic function of the spec's indices with a fixed optimum, so a whole search takes well under a
second once the controller's two small programs are compiled.
"""

import numpy as np
import pytest

from kdjax.config.settings import SpaceSettings
from kdjax.nas import controller, optuna_search, random_search
from kdjax.search_space import SearchSpace
from kdjax.spec import ArchSpec

BERT_BASE = ArchSpec(num_layers=12, hidden_size=768, num_heads=12, ffn_size=3072)
SEEDS = range(5)
BUDGET_EPISODES, PER_EPISODE = 6, 8
BUDGET = BUDGET_EPISODES * PER_EPISODE


@pytest.fixture(scope="module")
def space():
    cfg = SpaceSettings()
    return SearchSpace.from_teacher(BERT_BASE, cfg)


class Synthetic:
    """1 - mean normalised L1 distance of the indices to a fixed target; records every call."""

    def __init__(self, space, target=(3, 2, 4, 3, 1)):
        self.space, self.target = space, np.asarray(target)
        self.calls = []

    def score(self, idx) -> float:
        n = np.asarray(self.space.num_choices)
        return float(1.0 - np.mean(np.abs(np.asarray(idx) - self.target) / np.maximum(n - 1, 1)))

    def __call__(self, spec, on_epoch=None, **where):
        r = self.score(self.space.indices(spec))
        self.calls.append((spec.arch_id, where))
        return {"reward": r, "loss": 1.0 - r, "latency_ms": float(spec.num_params) / 1e6}

    @property
    def best(self) -> float:
        return max(self.score(self.space.indices(self.space.base.student(**_dims(a)))) for a, _ in self.calls)


def _dims(arch_id):
    layers, hidden, heads, ffn, act = arch_id.split("-")
    return dict(
        num_layers=int(layers[:-1]),
        hidden_size=int(hidden[:-1]),
        num_heads=int(heads[:-1]),
        ffn_size=int(ffn[:-1]),
        activation=act,
    )


def run(strategy, space, seed):
    ev = Synthetic(space)
    if strategy == "lstm":
        controller.search(space, ev, num_episodes=BUDGET_EPISODES, candidates_per_episode=PER_EPISODE, seed=seed)
    elif strategy == "optuna":
        optuna_search.search(space, ev, num_trials=BUDGET, seed=seed)
    else:
        random_search.search(space, ev, num_trials=BUDGET, seed=seed)
    return ev


@pytest.mark.parametrize("strategy", ["lstm", "optuna"])
def test_strategy_reaches_top_5_percent_and_beats_random(space, strategy):
    scores = np.array([Synthetic(space).score(p) for p in space.points])
    top5 = np.quantile(scores, 0.95)
    found = [run(strategy, space, s).best for s in SEEDS]
    baseline = [run("random", space, s).best for s in SEEDS]
    assert sum(b >= top5 for b in found) >= 4, (found, top5)
    assert np.mean(found) > np.mean(baseline), (found, baseline)


def test_every_proposal_is_valid_and_budget_respected(space):
    for strategy in ("lstm", "optuna", "random"):
        ev = run(strategy, space, 0)
        assert len(ev.calls) == BUDGET
        valid = {space.spec(p).arch_id for p in space.points}
        assert all(a in valid for a, _ in ev.calls)


def test_lstm_resume_from_checkpoint_matches_unbroken(space, tmp_path):
    from kdjax.checkpoint import Checkpointer

    full = Synthetic(space)
    controller.search(space, full, num_episodes=3, candidates_per_episode=PER_EPISODE, seed=1)
    ckpt = Checkpointer(str(tmp_path / "controller"))
    part = Synthetic(space)
    controller.search(space, part, num_episodes=1, candidates_per_episode=PER_EPISODE, seed=1, checkpointer=ckpt)
    controller.search(space, part, num_episodes=3, candidates_per_episode=PER_EPISODE, seed=1, checkpointer=ckpt)
    ckpt.close()
    assert part.calls == full.calls


def test_optuna_resume_matches_unbroken(space, tmp_path):
    full = Synthetic(space)
    optuna_search.search(space, full, num_trials=14, seed=3, storage=f"sqlite:///{tmp_path}/a.db", n_startup_trials=4)
    part = Synthetic(space)
    url = f"sqlite:///{tmp_path}/b.db"
    optuna_search.search(space, part, num_trials=6, seed=3, storage=url, n_startup_trials=4)
    optuna_search.search(space, part, num_trials=14, seed=3, storage=url, n_startup_trials=4)
    assert part.calls == full.calls


def test_random_order_is_seeded(space):
    assert random_search.order(space, 10, 0) == random_search.order(space, 10, 0)
    assert random_search.order(space, 10, 0) != random_search.order(space, 10, 1)
    assert len(set(random_search.order(space, 10, 0))) == 10


class _Logged(Synthetic):
    """Synthetic, also logging each evaluation into `events` (beside what `prepare` logs there)."""

    def __init__(self, space, events: list):
        super().__init__(space)
        self.events = events

    def __call__(self, spec, on_epoch=None, **where):
        self.events.append(("evaluate", spec.arch_id))
        return super().__call__(spec, on_epoch, **where)


@pytest.mark.parametrize("strategy", ["random", "lstm"])
def test_strategies_announce_the_next_candidate_before_evaluating_this_one(space, strategy):
    """`prepare` gets candidate i+1 before candidate i is evaluated (within an LSTM episode), and the proposals are the
    same as without it: compiling ahead must not change what is searched."""
    events: list[tuple[str, str]] = []
    ev, plain, prepare = _Logged(space, events), Synthetic(space), lambda spec: events.append(("prepare", spec.arch_id))
    if strategy == "lstm":
        controller.search(space, ev, num_episodes=2, candidates_per_episode=4, seed=0, prepare=prepare)
        controller.search(space, plain, num_episodes=2, candidates_per_episode=4, seed=0)
        groups = [ev.calls[:4], ev.calls[4:]]
    else:
        random_search.search(space, ev, num_trials=6, seed=0, prepare=prepare)
        random_search.search(space, plain, num_trials=6, seed=0)
        groups = [ev.calls]
    assert ev.calls == plain.calls
    expected = []
    for group in groups:
        ids = [a for a, _ in group]
        for i, arch in enumerate(ids):
            expected += [("prepare", ids[i + 1])] if i + 1 < len(ids) else []
            expected.append(("evaluate", arch))
    assert events == expected


def test_optuna_announces_its_random_start_up_trials_ahead(space):
    """During TPE's start-up trials (drawn from the seed alone) `prepare` gets trial i+1 before trial i trains, and it
    is the architecture trial i+1 then draws; after them nothing is announced. The study is the same either way."""
    events: list[tuple[str, str]] = []
    ev, plain, prepare = _Logged(space, events), Synthetic(space), lambda spec: events.append(("prepare", spec.arch_id))
    optuna_search.search(space, ev, num_trials=7, seed=3, n_startup_trials=4, prepare=prepare)
    optuna_search.search(space, plain, num_trials=7, seed=3, n_startup_trials=4)
    assert ev.calls == plain.calls
    ids = [a for a, _ in ev.calls]
    expected = []
    for i, arch in enumerate(ids):
        expected += [("prepare", ids[i + 1])] if i + 1 < 4 else []
        expected.append(("evaluate", arch))
    assert events == expected
