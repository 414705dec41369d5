"""Random search, the baseline: `num_trials` distinct architectures drawn uniformly from the valid space.

The draw order is one seeded permutation of the enumerated valid points, so candidate i is the same in every run and
a resumed search (cache hits for the first ones) continues exactly where it stopped. Knowing every candidate up front,
it has the next one's programs compiled (`prepare`) while the current one trains.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kdjax.search_space import SearchSpace, announcing
from kdjax.spec import ArchSpec


def order(space: SearchSpace, num_trials: int, seed: int) -> list[tuple[int, ...]]:
    perm = np.random.default_rng([seed, 13]).permutation(space.size)[:num_trials]
    return [space.points[i] for i in perm]


def search(
    space: SearchSpace,
    evaluate: Callable[..., dict],
    *,
    num_trials: int,
    seed: int,
    prepare: Callable[[ArchSpec], None] | None = None,
) -> list[dict]:
    specs = [space.spec(idx) for idx in order(space, num_trials, seed)]
    return [evaluate(spec, trial=t) for t, spec in announcing(specs, prepare)]
