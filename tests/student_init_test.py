"""Teacher-initialised students: identity when the shapes match, consistent sub-networks when narrower."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.models import Encoder
from kdjax.spec import ArchSpec
from kdjax.student_init import from_teacher, teacher_layer_indices

TEACHER = ArchSpec(num_layers=4, hidden_size=32, num_heads=4, ffn_size=64, vocab_size=50)


@pytest.fixture(scope="module")
def teacher_params():
    ids = jnp.ones((1, 6), jnp.int32)
    return {"encoder": Encoder(TEACHER).init(jax.random.PRNGKey(0), ids, ids)["params"]}


def test_layer_indices():
    assert teacher_layer_indices(12, 6) == [1, 3, 5, 7, 9, 11]
    assert teacher_layer_indices(6, 3) == [1, 3, 5]
    assert teacher_layer_indices(12, 4)[-1] == 11
    assert teacher_layer_indices(4, 4) == [0, 1, 2, 3]


def test_same_shape_student_is_the_teacher(teacher_params):
    student = from_teacher(teacher_params, TEACHER, TEACHER)
    ids = jnp.array([[2, 5, 9, 11, 3, 0]])
    mask = (ids != 0).astype(jnp.int32)
    a = Encoder(TEACHER).apply({"params": teacher_params["encoder"]}, ids, mask)["hidden_states"][-1]
    b = Encoder(TEACHER).apply({"params": student}, ids, mask)["hidden_states"][-1]
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("dims", [(2, 32, 4, 64), (2, 16, 2, 32), (3, 24, 2, 48)])
def test_narrower_student_has_the_right_tree(teacher_params, dims):
    layers, hidden, heads, ffn = dims
    spec = TEACHER.student(num_layers=layers, hidden_size=hidden, num_heads=heads, ffn_size=ffn)
    got = from_teacher(teacher_params, TEACHER, spec)
    ids = jnp.ones((1, 6), jnp.int32)
    ref = Encoder(spec).init(jax.random.PRNGKey(1), ids, ids)["params"]
    assert jax.tree.structure(got) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        assert a.shape == b.shape
    out = Encoder(spec).apply({"params": got}, ids, ids)["hidden_states"][-1]
    assert bool(jnp.all(jnp.isfinite(out)))


def test_whole_heads_are_kept_when_head_sizes_match(teacher_params):
    spec = TEACHER.student(num_layers=1, hidden_size=16, num_heads=2, ffn_size=64)  # head_dim 8 == teacher's
    got = from_teacher(teacher_params, TEACHER, spec)
    q_t = np.asarray(teacher_params["encoder"]["encoder"]["layer"]["3"]["attention"]["self"]["query"]["bias"])
    q_s = np.asarray(got["encoder"]["layer"]["0"]["attention"]["self"]["query"]["bias"])
    blocks = [q_t[h * 8 : (h + 1) * 8] for h in range(4)]
    kept = [q_s[:8], q_s[8:]]
    assert all(any(np.array_equal(k, b) for b in blocks) for k in kept)


def test_wider_student_is_rejected(teacher_params):
    with pytest.raises(ValueError, match="no wider"):
        from_teacher(teacher_params, TEACHER, TEACHER.student(num_layers=2, hidden_size=64, num_heads=4, ffn_size=64))


def test_teacher_projection_puts_kept_dimensions_back(teacher_params):
    """A same-shape teacher-cut student with the teacher projection has zero hidden-state loss at step 0; a narrower
    one starts well below the loss of a random projection (the original pipeline's, which led to collapse)."""
    from kdjax.losses import hidden_mse, init_projection
    from kdjax.student_init import initial_projection, kept_dims

    ids = jnp.array([[2, 5, 9, 11, 3, 7, 8, 0]])
    mask = (ids != 0).astype(jnp.int32)
    t_hidden = Encoder(TEACHER).apply({"params": teacher_params["encoder"]}, ids, mask)["hidden_states"]
    assert initial_projection("random", teacher_params, TEACHER, TEACHER) is None

    def loss(student, proj):
        s_params = from_teacher(teacher_params, TEACHER, student)
        s_hidden = Encoder(student).apply({"params": s_params}, ids, mask)["hidden_states"]
        return float(hidden_mse(s_hidden, t_hidden, proj, mask))

    same = initial_projection("teacher", teacher_params, TEACHER, TEACHER)
    assert loss(TEACHER, same) == pytest.approx(0.0, abs=1e-10)
    narrow = TEACHER.student(num_layers=4, hidden_size=16, num_heads=2, ffn_size=32)
    proj = initial_projection("teacher", teacher_params, TEACHER, narrow)
    hid = kept_dims(teacher_params, 16)
    assert proj["kernel"].shape == (16, 64) and proj["kernel"].sum() == 32
    np.testing.assert_array_equal(np.nonzero(proj["kernel"][:, :32])[1], hid)
    random_proj = init_projection(jax.random.PRNGKey(1), 16, 32)
    assert loss(narrow, proj) < 0.5 * loss(narrow, random_proj)


def test_auto_init_is_teacher_when_the_student_fits_else_random_with_a_reason(teacher_params, caplog):
    from kdjax.config import base_config
    from kdjax.student_init import initial_params, initial_projection, resolve_init

    assert base_config("bert-base-uncased").kd.init == "auto"
    fits = TEACHER.student(num_layers=2, hidden_size=16, num_heads=2, ffn_size=32)
    assert resolve_init("auto", TEACHER, fits) == "teacher"
    assert initial_params("auto", teacher_params, TEACHER, fits) is not None
    assert initial_projection("auto", teacher_params, TEACHER, fits)["kernel"].shape == (16, 64)
    assert resolve_init("random", TEACHER, fits) == "random"
    for too_big, why in [
        (TEACHER.student(hidden_size=64, num_heads=4), "hidden size 64 exceeds the teacher's 32"),
        (TEACHER.student(ffn_size=128), "FFN size 128"),
        (TEACHER.student(num_layers=6), "depth 6"),
    ]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="kdjax.student_init"):
            assert resolve_init("auto", TEACHER, too_big) == "random"
            assert initial_params("auto", teacher_params, TEACHER, too_big) is None
        assert why in caplog.text and "starts from random weights" in caplog.text
        assert caplog.text.count("starts from random weights") == 1  # said once per architecture
    albert = ArchSpec(num_layers=4, hidden_size=32, num_heads=4, ffn_size=64, vocab_size=50, embedding_size=16)
    assert resolve_init("auto", albert, fits) == "random"
