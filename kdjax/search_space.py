"""The student search space, derived from the teacher's config and capped at its parameter count.

A space is five categorical dimensions decided in a fixed order (layers, hidden, heads, FFN, activation). Not every
combination is an architecture: heads must divide hidden, a student may not have more parameters than `max_params`,
and with `nas.space.min_speedup` its latency predicted by the fitted latency model may not exceed the teacher's
divided by that speed-up (`max_latency_ms`). Rather than letting strategies propose invalid points and then
repairing them by resampling (which makes the number of draws, and so the random stream, depend on luck), every
strategy decides dimension by dimension and is told which values still have at least one valid completion given the
earlier decisions (`allowed`). The LSTM controller masks its softmax with it; Optuna maps a disallowed suggestion
to the nearest allowed value (`nearest_allowed`); random search draws uniformly from the enumerated valid points. All
three are deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from kdjax.config import split_list
from kdjax.errors import KdjaxError
from kdjax.spec import ACTIVATIONS, ArchSpec

if TYPE_CHECKING:
    from kdjax.config.settings import SpaceSettings
    from kdjax.latency_model import LatencyModel

DIMENSIONS = ("num_layers", "hidden_size", "num_heads", "ffn_size", "activation")
# Short names used as Optuna parameter names and table headers.
SHORT = {"num_layers": "layers", "hidden_size": "hidden", "num_heads": "heads", "ffn_size": "ffn", "activation": "act"}

# Fractions of the teacher's depth / width / FFN offered to students (the teacher's own size included).
DEPTH_RATIOS = (0.25, 1 / 3, 0.5, 2 / 3, 0.75, 1.0)
WIDTH_RATIOS = (0.25, 1 / 3, 0.5, 2 / 3, 0.75, 1.0)
FFN_RATIOS = (0.125, 0.25, 1 / 3, 0.5, 2 / 3, 0.75, 1.0)
HEAD_DIMS = (32, 64)
WIDTH_MULTIPLE = 64
DEFAULT_ACTIVATIONS = ("gelu", "relu", "silu")


class SearchSpaceError(KdjaxError, ValueError):
    """A search-space override that cannot be parsed or leaves no valid architecture."""


def _round_to(x: float, multiple: int) -> int:
    return max(multiple, int(round(x / multiple)) * multiple)


def derived_values(teacher: ArchSpec) -> dict[str, tuple]:
    """Per-dimension value lists from the teacher's config (ratios of its depth and width)."""
    layers = sorted({max(1, int(teacher.num_layers * r + 0.5)) for r in DEPTH_RATIOS})
    # Hidden sizes are multiples of 64 (fast matmul tiles) unless the teacher itself is narrower.
    unit = min(WIDTH_MULTIPLE, teacher.hidden_size)
    hidden = sorted({_round_to(teacher.hidden_size * r, unit) for r in WIDTH_RATIOS})
    # Head counts that give 32- or 64-dim heads for some hidden size; pairs that do not divide are masked later.
    heads = sorted({h // d for h in hidden for d in HEAD_DIMS if h % d == 0 and h >= d} or {1})
    ffn_unit = min(WIDTH_MULTIPLE, teacher.ffn_size)
    ffn = sorted({_round_to(teacher.ffn_size * r, ffn_unit) for r in FFN_RATIOS})
    acts = list(DEFAULT_ACTIVATIONS)
    if teacher.activation not in acts:
        acts.insert(0, teacher.activation)
    return {
        "num_layers": tuple(layers),
        "hidden_size": tuple(hidden),
        "num_heads": tuple(heads),
        "ffn_size": tuple(ffn),
        "activation": tuple(acts),
    }


def _parse_override(field: str, text: str) -> tuple:
    items = split_list(text)
    if field == "activation":
        bad = [a for a in items if a not in ACTIVATIONS]
        if bad:
            raise SearchSpaceError(f"nas.space.activation: {bad} not in {ACTIVATIONS}")
        return tuple(dict.fromkeys(items))
    try:
        values = sorted({int(v) for v in items})
    except ValueError as e:
        raise SearchSpaceError(f"nas.space.{field}={text!r} must be a comma list of integers") from e
    if any(v <= 0 for v in values):
        raise SearchSpaceError(f"nas.space.{field}={text!r} must hold positive integers")
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Value lists per dimension (in `DIMENSIONS` order) plus the parameter cap; hashable."""

    base: ArchSpec  # the teacher: students inherit its vocabulary and family conventions
    values: tuple[tuple, ...]
    max_params: int
    # Allowed head sizes (hidden // heads); empty = any divisor (used when heads or hidden are overridden).
    head_dims: tuple[int, ...] = ()
    # Speed constraint (nas.space.min_speedup): the latency model's prediction must not exceed max_latency_ms.
    latency_model: LatencyModel | None = None
    max_latency_ms: float = 0.0

    @classmethod
    def from_teacher(
        cls, teacher: ArchSpec, overrides: SpaceSettings | None = None, latency_model: LatencyModel | None = None
    ) -> SearchSpace:
        """Derived from `teacher`; `overrides` (nas.space) may replace any dimension with a comma list, and with
        `min_speedup` > 0 keep only points `latency_model` predicts at least that many times faster than `teacher`."""
        values = derived_values(teacher)
        fraction, min_speedup = 1.0, 0.0
        head_dims: tuple[int, ...] = HEAD_DIMS
        if overrides is not None:
            for field in DIMENSIONS:
                text = getattr(overrides, field).strip()
                if text:
                    values[field] = _parse_override(field, text)
                    if field in ("num_heads", "hidden_size"):
                        head_dims = ()  # an explicit space (e.g. the original 1,200 points) keeps every dividing pair
            fraction, min_speedup = overrides.max_params_fraction, overrides.min_speedup
        max_latency_ms = 0.0
        if min_speedup > 0:
            if latency_model is None:
                raise SearchSpaceError("nas.space.min_speedup needs the fitted latency model (kdjax.latency_model)")
            max_latency_ms = latency_model.predict(teacher) / min_speedup
        base = teacher.student()
        space = cls(
            base=base,
            values=tuple(values[d] for d in DIMENSIONS),
            max_params=int(teacher.num_params * fraction),
            head_dims=head_dims,
            latency_model=latency_model if min_speedup > 0 else None,
            max_latency_ms=max_latency_ms,
        )
        if not space.points:
            raise SearchSpaceError(
                f"the search space has no valid architecture ({space.constraints()}); loosen nas.space"
            )
        return space

    def constraints(self) -> str:
        """What makes a point valid, in words (start-up table, errors, resume checks)."""
        text = f"heads divide hidden with head sizes {self.head_dims or 'any'}, params <= {self.max_params:,}"
        if self.latency_model is not None:
            speedup = self.latency_model.predict(self.base) / self.max_latency_ms
            text += f", modelled latency <= {self.max_latency_ms:.2f} ms (>= {speedup:g}x the teacher)"
        return text

    # ---- validity ---------------------------------------------------------------------------------------------------
    def params_of(self, choice: tuple) -> int:
        layers, hidden, _, ffn, _ = choice
        return dataclasses.replace(
            self.base, num_layers=layers, hidden_size=hidden, num_heads=1, ffn_size=ffn
        ).num_params

    def is_valid(self, choice: tuple) -> bool:
        hidden, heads = choice[1], choice[2]
        if hidden % heads or (self.head_dims and hidden // heads not in self.head_dims):
            return False
        if self.params_of(choice) > self.max_params:
            return False
        if self.latency_model is None:
            return True
        spec = self.base.student(**dict(zip(DIMENSIONS, choice, strict=True)))
        return self.latency_model.predict(spec) <= self.max_latency_ms

    @functools.cached_property
    def points(self) -> tuple[tuple, ...]:
        """Every valid point as a tuple of indices into `values`, in lexicographic order."""
        ranges = [range(len(v)) for v in self.values]
        return tuple(idx for idx in itertools.product(*ranges) if self.is_valid(self.decode_values(idx)))

    @functools.cached_property
    def _prefixes(self) -> frozenset:
        return frozenset(p[:d] for p in self.points for d in range(len(DIMENSIONS) + 1))

    @functools.cached_property
    def valid_tensor(self) -> np.ndarray:
        """Boolean array of shape (n_layers, n_hidden, n_heads, n_ffn, n_act): True at valid points."""
        t = np.zeros(self.num_choices, bool)
        for p in self.points:
            t[p] = True
        return t

    @property
    def num_choices(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.values)

    @property
    def size(self) -> int:
        return len(self.points)

    def allowed(self, prefix: tuple[int, ...]) -> list[bool]:
        """Which values of dimension len(prefix) keep at least one valid completion after `prefix` (indices)."""
        d = len(prefix)
        return [(*prefix, i) in self._prefixes for i in range(len(self.values[d]))]

    def nearest_allowed(self, prefix: tuple[int, ...], index: int) -> int:
        """`index` if allowed, else the closest allowed index (ties to the smaller value): a deterministic repair."""
        ok = self.allowed(prefix)
        if ok[index]:
            return index
        return min((i for i, a in enumerate(ok) if a), key=lambda i: (abs(i - index), i))

    # ---- conversions ------------------------------------------------------------------------------------------------
    def decode_values(self, idx: tuple[int, ...]) -> tuple:
        return tuple(self.values[d][i] for d, i in enumerate(idx))

    def spec(self, idx: tuple[int, ...]) -> ArchSpec:
        """The student ArchSpec at index tuple `idx` (must be valid)."""
        return self.base.student(**dict(zip(DIMENSIONS, self.decode_values(idx), strict=True)))

    def indices(self, spec: ArchSpec) -> tuple[int, ...]:
        dims = spec.searchable()
        try:
            return tuple(self.values[d].index(dims[name]) for d, name in enumerate(DIMENSIONS))
        except ValueError as e:
            raise SearchSpaceError(f"{spec.arch_id} is not in the search space") from e

    def all_specs(self) -> list[ArchSpec]:
        return [self.spec(p) for p in self.points]

    def table(self) -> str:
        """Human-readable summary printed at start-up."""
        rows = [f"{SHORT[d]:<7} {len(v):>3}  {', '.join(str(x) for x in v)}" for d, v in zip(DIMENSIONS, self.values)]
        total = int(np.prod(self.num_choices))
        return "\n".join(
            [
                "search space (dimension, #values, values):",
                *("  " + r for r in rows),
                f"  {self.size:,} valid architectures of {total:,} combinations ({self.constraints()})",
            ]
        )


def announcing(specs: list[ArchSpec], prepare: Callable[[ArchSpec], None] | None) -> Iterator[tuple[int, ArchSpec]]:
    """(i, spec) for each of `specs`, telling `prepare` (`CandidateEvaluator.prepare`) spec i+1 before spec i is
    yielded, so the next candidate compiles while the current one trains."""
    for i, spec in enumerate(specs):
        if prepare is not None and i + 1 < len(specs):
            prepare(specs[i + 1])
        yield i, spec
