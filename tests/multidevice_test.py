"""Data parallelism changes nothing but speed: 4 fake CPU devices give the 1-device losses for the same global batch."""

import jax
import numpy as np
import pytest

from kdjax.data.batches import Batches, MaskingSpec
from kdjax.data.synthetic import lines
from kdjax.hooks import LogMetrics
from kdjax.losses import LossConfig
from kdjax.optim import OptimConfig
from kdjax.sharding import make_mesh
from kdjax.train import DistillSettings, Student, distill

GLOBAL_BATCH = 8
STEPS = 5
RTOL = 1e-5


class StepLosses:
    """Metric sink for `LogMetrics`: keeps every logged step's metrics."""

    def __init__(self):
        self.rows: dict[int, dict] = {}

    def write(self, step, scalars):
        self.rows[int(step)] = {k: float(v) for k, v in scalars.items()}

    def truncate_after(self, step):
        self.rows = {s: r for s, r in self.rows.items() if s <= step}


@pytest.fixture(scope="module")
def kd_setup(tiny_teacher):
    from kdjax.data.corpus import pack_rows

    tok = tiny_teacher.tokenizer
    ids = tok(lines(200, seed=3), add_special_tokens=False)["input_ids"]
    rows = pack_rows(ids, 32, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    student = tiny_teacher.spec.student(num_layers=2, hidden_size=32, num_heads=2, ffn_size=64)
    return tiny_teacher, rows, MaskingSpec.from_tokenizer(tok), student


def kd_losses(kd_setup, devices, loss=None):
    teacher, rows, masking, student = kd_setup
    writer = StepLosses()
    distill(
        teacher,
        Student(student),
        Batches(rows, GLOBAL_BATCH, masking, seed=0),
        DistillSettings(
            loss=loss or LossConfig(),
            opt=OptimConfig(learning_rate=3e-3, total_steps=STEPS, warmup_steps=1),
            num_steps=STEPS,
            seed=0,
            mesh=make_mesh(devices),
        ),
        hooks=[LogMetrics(writer)],
        report_every=1,
        progress=False,
    )
    return writer.rows


def assert_close_rows(one: dict, four: dict, keys=("loss", "grad_norm")) -> None:
    assert sorted(one) == sorted(four) == list(range(1, STEPS + 1))
    for step in one:
        for k in keys:
            a, b = one[step][k], four[step][k]
            assert abs(a - b) <= RTOL * abs(a), f"step {step} {k}: 1 device {a!r} vs 4 devices {b!r}"


def test_kd_step_on_four_devices_matches_one(kd_setup):
    assert jax.device_count() >= 4, "conftest must set --xla_force_host_platform_device_count=4"
    one = kd_losses(kd_setup, jax.devices()[:1])
    four = kd_losses(kd_setup, jax.devices()[:4])
    assert_close_rows(one, four, ("loss", "grad_norm", "hidden_mse"))
    assert one[STEPS]["loss"] < one[1]["loss"]  # it learns, so equality is not two constant curves


def test_glue_step_on_four_devices_matches_one(tiny_teacher, tmp_path):
    from kdjax import glue_data
    from kdjax.data.synthetic_glue import write_glue_dir
    from kdjax.finetune import Recipe, finetune

    data = glue_data.load_task("sst2", write_glue_dir(str(tmp_path), n_train=48, n_dev=16))
    out = {}
    for n in (1, 4):
        recipe = Recipe(
            learning_rates=(1e-3,),
            per_device_batch_size=GLOBAL_BATCH // n,
            num_epochs=2,
            warmup_fraction=0.1,
            max_seq_len=64,
            dropout_rate=0.1,
        )
        out[n] = finetune(
            spec=tiny_teacher.spec,
            pretrained=tiny_teacher.params,
            tokenizer=tiny_teacher.tokenizer,
            task_data=data,
            recipe=recipe,
            mesh=make_mesh(jax.devices()[:n]),
            progress=False,
        )
    assert out[1]["global_batch_size"] == out[4]["global_batch_size"] == GLOBAL_BATCH
    np.testing.assert_allclose(out[4]["train_loss_per_epoch"], out[1]["train_loss_per_epoch"], rtol=RTOL)
    for metric, value in out[1]["scores"].items():
        assert out[4]["scores"][metric] == pytest.approx(value, rel=RTOL, abs=1e-6)
