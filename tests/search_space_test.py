"""Search space: derived from the teacher's config, capped at its parameter count, overridable by config."""

import ml_collections
import pytest

from kdjax.search_space import DIMENSIONS, SearchSpace, SearchSpaceError
from kdjax.spec import ArchSpec

BERT_BASE = ArchSpec(num_layers=12, hidden_size=768, num_heads=12, ffn_size=3072)
MINILM = ArchSpec(num_layers=6, hidden_size=384, num_heads=12, ffn_size=1536)


def space_cfg(**overrides):
    c = ml_collections.ConfigDict({d: "" for d in DIMENSIONS})
    c.max_params_fraction = 1.0
    c.min_speedup = 0.0
    c.update(overrides)
    return c


def check_invariants(space: SearchSpace, teacher: ArchSpec):
    assert space.size > 0
    for idx in space.points:
        spec = space.spec(idx)
        assert spec.hidden_size % spec.num_heads == 0
        assert spec.num_params <= space.max_params <= teacher.num_params
        assert spec.vocab_size == teacher.vocab_size and not spec.shared_layers


def test_derived_from_bert_base():
    space = SearchSpace.from_teacher(BERT_BASE, space_cfg())
    layers, hidden, heads, ffn, acts = space.values
    assert layers == (3, 4, 6, 8, 9, 12)
    assert hidden == (192, 256, 384, 512, 576, 768) and all(h % 64 == 0 for h in hidden)
    assert {6, 12} <= set(heads) and {384, 768, 1536, 3072} <= set(ffn)
    assert acts == ("gelu", "relu", "silu")
    check_invariants(space, BERT_BASE)
    # Excluded combinations exist (e.g. 9 heads with 384 hidden) and are not points.
    assert space.size < len(layers) * len(hidden) * len(heads) * len(ffn) * len(acts)
    assert "valid architectures" in space.table()


def test_derived_from_minilm_and_cap_fraction():
    space = SearchSpace.from_teacher(MINILM, space_cfg())
    assert max(space.values[0]) == 6 and max(space.values[1]) == 384
    check_invariants(space, MINILM)
    half = SearchSpace.from_teacher(MINILM, space_cfg(max_params_fraction=0.5))
    check_invariants(half, MINILM)
    assert half.size < space.size
    assert all(half.spec(p).num_params <= MINILM.num_params // 2 for p in half.points)


def test_seed_space_is_expressible():
    cfg = space_cfg(
        num_layers="3,4,6,10,12",
        num_heads="2,3,4,6,12",
        hidden_size="384,768",
        ffn_size="384,512,576,768,1024,1536,2048,3072",
        activation="gelu,relu,silu",
    )
    space = SearchSpace.from_teacher(BERT_BASE, cfg)
    assert space.size == 1200  # the original pipeline's hard-coded 1,200 points, all under BERT-base's size


def test_allowed_masks_and_repair_are_consistent():
    space = SearchSpace.from_teacher(BERT_BASE, space_cfg())
    hidden_384 = space.values[1].index(384)
    mask = space.allowed((0, hidden_384))
    for i, h in enumerate(space.values[2]):
        # Derived spaces keep 32- or 64-dim heads only.
        assert mask[i] == (384 % h == 0 and 384 // h in (32, 64))
    repaired = space.nearest_allowed((0, hidden_384), space.values[2].index(9))
    assert 384 // space.values[2][repaired] in (32, 64)
    # Walking the masks always ends on a valid point.
    prefix = ()
    for d in range(len(DIMENSIONS)):
        prefix = (*prefix, space.nearest_allowed(prefix, len(space.values[d]) - 1))
    assert prefix in set(space.points)


def test_bad_override_raises():
    with pytest.raises(SearchSpaceError, match=r"nas\.space\.num_layers"):
        SearchSpace.from_teacher(BERT_BASE, space_cfg(num_layers="a,b"))
    with pytest.raises(SearchSpaceError, match="no valid architecture"):
        SearchSpace.from_teacher(BERT_BASE, space_cfg(hidden_size="100", num_heads="3"))


def _latency_model():
    from kdjax.latency_model import FEATURES, LatencyModel

    # Only matmul FLOPs cost time (1 ms per GFLOP): predictions are proportional to the encoder's dense work.
    return LatencyModel(tuple(1e-9 if f == "matmul" else 0.0 for f in FEATURES), batch_size=1, seq_len=128)


def test_min_speedup_keeps_only_students_the_latency_model_calls_fast_enough():
    model = _latency_model()
    full = SearchSpace.from_teacher(MINILM, space_cfg())
    fast = SearchSpace.from_teacher(MINILM, space_cfg(min_speedup=3.0), model)
    teacher_ms = model.predict(MINILM)
    assert fast.max_latency_ms == pytest.approx(teacher_ms / 3.0)
    kept = {fast.spec(p).arch_id for p in fast.points}
    # Exactly the points of the unconstrained space whose predicted latency meets the target.
    expected = {s.arch_id for s in full.all_specs() if model.predict(s) <= teacher_ms / 3.0}
    assert kept == expected and 0 < len(kept) < full.size
    assert "3L-384H-12A-1536F-gelu" not in kept and "2L-384H-12A-384F-gelu" in kept  # 2x and 4.8x
    assert ">= 3x the teacher" in fast.table()
    # Strategies decide dimension by dimension: the masks must agree with the constraint.
    for p in fast.points:
        for d in range(len(DIMENSIONS)):
            assert fast.allowed(p[:d])[p[d]]
    # No model, no speed constraint to apply; an impossible target says what to loosen.
    with pytest.raises(SearchSpaceError, match="latency model"):
        SearchSpace.from_teacher(MINILM, space_cfg(min_speedup=3.0))
    with pytest.raises(SearchSpaceError, match=r"no valid architecture.*>= 1e\+06x"):
        SearchSpace.from_teacher(MINILM, space_cfg(min_speedup=1e6), model)
    # 0 leaves the space as it was.
    assert SearchSpace.from_teacher(MINILM, space_cfg(min_speedup=0.0), model).points == full.points
