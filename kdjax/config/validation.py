"""One-shot validation of a config: every field checked at start-up, the first bad one named in a `ConfigError`;
`validate` then returns the typed, frozen `Settings` that everything below it reads (kdjax/config/settings.py)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import ml_collections

from kdjax.config.schema import (
    DTYPES,
    GLUE_BI_ENCODER_TASKS,
    GLUE_POOLINGS,
    GLUE_TASKS,
    INITS,
    LATENCY_DEVICES,
    LOSS_SOURCES,
    STAGES,
    STRATEGIES,
    ConfigError,
    split_list,
)
from kdjax.config.variants import DATA_ENV, data_dir

if TYPE_CHECKING:
    from kdjax.config.settings import Settings


def _choice(value: str, field: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not one of: {', '.join(allowed)}")


def _positive(c: ml_collections.ConfigDict, field: str, allow_zero: bool = False) -> None:
    value = c
    for part in field.split("."):
        value = value[part]
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{field}={value} must be {'non-negative' if allow_zero else 'positive'}")


def _check_arch(arch_id: str, field: str) -> None:
    """Reject an impossible explicit student (bad syntax, heads not dividing hidden) before anything is loaded."""
    from kdjax.spec import ArchSpec, SpecError, parse_arch_id

    try:
        parse_arch_id(arch_id, ArchSpec(num_layers=1, hidden_size=1, num_heads=1, ffn_size=1))
    except SpecError as e:
        raise ConfigError(f"{field}={arch_id!r}: {e}") from e


def _finite_numbers(c: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Reject NaN and infinity anywhere: every range check below compares, and a NaN passes every comparison."""
    for key, value in c.items():
        field = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            _finite_numbers(value, field + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{field}={value} is not a finite number")


def usable_positions(spec) -> int:
    """Longest sequence the teacher's position embeddings cover (RoBERTa's start after padding_idx + 1)."""
    offset = spec.pad_token_id + 1 if spec.family == "roberta" else 0
    return int(spec.max_position_embeddings) - offset


def check_positions(s: Settings, spec) -> None:
    """Sequence lengths the teacher (and every student, which inherits its embeddings) cannot encode.

    Past the last position embedding the gather reads out of range and training reports a NaN loss instead.
    """
    limit = usable_positions(spec)
    lengths = {
        "data.max_seq_len": s.data.max_seq_len,
        "glue.max_seq_len": s.glue.recipe.max_seq_len,
        "nas.latency_seq_len": s.nas.latency.seq_len,
    }
    for field, value in lengths.items():
        if value > limit:
            raise ConfigError(
                f"{field}={value} is longer than the teacher's {limit} position embeddings; set it to at most {limit}"
            )


def validate(c: ml_collections.ConfigDict) -> Settings:
    """Check every field once, raising ConfigError naming the first bad one; return the typed settings."""
    _finite_numbers(c)
    if not 0 <= c.seed < 2**32:
        raise ConfigError(f"seed={c.seed} must be in [0, 2**32) (it seeds 32-bit PRNGs)")
    stages = split_list(c.stages)
    if not stages:
        raise ConfigError("stages is empty; expected a comma list of: " + ", ".join(STAGES))
    for s in stages:
        _choice(s, "stages", STAGES)
    if not str(c.teacher.name).strip():
        raise ConfigError("teacher.name is empty; give a hub id, a local folder or 'random-tiny-bert'")
    if not str(c.data.corpus).strip():
        raise ConfigError("data.corpus is empty; give a text file, folder, glob, hub id or 'synthetic'")
    if c.data.max_seq_len < 8:
        raise ConfigError(f"data.max_seq_len={c.data.max_seq_len} must be at least 8")
    if not 0.0 < c.data.mlm_probability < 1.0:
        raise ConfigError(f"data.mlm_probability={c.data.mlm_probability} must be in (0, 1)")
    _positive(c, "data.max_lines", allow_zero=True)

    _positive(c, "kd.num_train_steps", allow_zero=True)
    if c.kd.num_train_steps == 0:
        _positive(c, "kd.num_epochs")
    _positive(c, "kd.per_device_batch_size")
    _positive(c, "kd.learning_rate")
    _positive(c, "kd.checkpoint_every_steps")
    _positive(c, "kd.keep_checkpoints")
    _positive(c, "kd.log_every_steps")
    _positive(c, "kd.pdt_steps", allow_zero=True)
    if not 0.0 <= c.kd.dropout_rate < 1.0:
        raise ConfigError(f"kd.dropout_rate={c.kd.dropout_rate} must be in [0, 1)")
    _choice(c.kd.collapse_guard, "kd.collapse_guard", ("warn", "stop", "off"))
    if not 0.0 <= c.kd.collapse_std_ratio < 1.0:
        raise ConfigError(f"kd.collapse_std_ratio={c.kd.collapse_std_ratio} must be in [0, 1)")
    if not 0.0 < c.kd.collapse_cls_cosine <= 1.0:
        raise ConfigError(f"kd.collapse_cls_cosine={c.kd.collapse_cls_cosine} must be in (0, 1]")
    if not 0.0 <= c.kd.warmup_fraction < 1.0:
        raise ConfigError(f"kd.warmup_fraction={c.kd.warmup_fraction} must be in [0, 1)")
    _choice(c.kd.schedule, "kd.schedule", ("linear", "cosine", "constant"))
    _check_arch(str(c.kd.arch), "kd.arch")
    _choice(c.kd.init, "kd.init", INITS)
    _choice(c.kd.compute_dtype, "kd.compute_dtype", DTYPES)
    loss = c.kd.loss
    weights = ("hidden_weight", "attention_relation_weight", "logit_weight", "sentence_weight")
    for w in weights:
        _positive(c, f"kd.loss.{w}", allow_zero=True)
    if sum(loss[w] for w in weights) <= 0:
        raise ConfigError(f"kd.loss: at least one of {', '.join(weights)} must be > 0")
    _positive(c, "kd.loss.temperature")

    _choice(c.nas.strategy, "nas.strategy", STRATEGIES)
    for f in ("num_episodes", "candidates_per_episode", "num_trials", "mini_kd_epochs", "top_k"):
        _positive(c, f"nas.{f}")
    _positive(c, "nas.mini_kd_steps_per_epoch", allow_zero=True)
    _positive(c, "nas.teacher_cache_mb", allow_zero=True)
    _positive(c, "nas.heartbeat_interval_s")
    _positive(c, "nas.stop_after_evaluations", allow_zero=True)
    if c.nas.top_k_latency_gap < 1.0:
        raise ConfigError(f"nas.top_k_latency_gap={c.nas.top_k_latency_gap} must be >= 1")
    if not 0.0 < c.nas.proxy_fraction <= 1.0:
        raise ConfigError(f"nas.proxy_fraction={c.nas.proxy_fraction} must be in (0, 1]")
    _choice(c.nas.loss_source, "nas.loss_source", LOSS_SOURCES)
    _choice(c.nas.latency_device, "nas.latency_device", LATENCY_DEVICES)
    for f in ("latency_batch_size", "latency_seq_len", "latency_timed_runs"):
        _positive(c, f"nas.{f}")
    _positive(c, "nas.latency_warmup_runs", allow_zero=True)
    _choice(c.nas.latency_source, "nas.latency_source", ("model", "measured"))
    if not 0.0 <= c.nas.latency_percentile <= 100.0:
        raise ConfigError(f"nas.latency_percentile={c.nas.latency_percentile} must be in [0, 100]")
    if c.nas.reward.alpha > 0:
        raise ConfigError(
            f"nas.reward.alpha={c.nas.reward.alpha} must be <= 0: a positive alpha rewards slower students "
            "(0 ignores latency, -0.07 is the soft default, -1 a hard trade-off)"
        )
    if c.nas.reward.beta <= 0:
        raise ConfigError(f"nas.reward.beta={c.nas.reward.beta} must be positive")
    _positive(c, "nas.reward.latency_budget", allow_zero=True)
    if not 0.0 < c.nas.space.max_params_fraction <= 1.0:
        raise ConfigError(f"nas.space.max_params_fraction={c.nas.space.max_params_fraction} must be in (0, 1]")
    _positive(c, "nas.space.min_speedup", allow_zero=True)

    for t in split_list(c.glue.tasks):
        _choice(t, "glue.tasks", GLUE_TASKS)
    try:
        rates = [float(t) for t in str(c.glue.learning_rates).split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"glue.learning_rates={c.glue.learning_rates!r} is not a comma list of numbers") from None
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise ConfigError(f"glue.learning_rates={c.glue.learning_rates!r} must list positive, finite learning rates")
    for f in ("per_device_batch_size", "num_epochs", "max_seq_len", "seeds", "bucket"):
        _positive(c, f"glue.{f}")
    for f in ("small_task_examples", "length_window"):
        _positive(c, f"glue.{f}", allow_zero=True)
    d = c.glue.distill
    _positive(c, "glue.distill.temperature")
    if not 0.0 <= d.alpha <= 1.0:
        raise ConfigError(f"glue.distill.alpha={d.alpha} must be in [0, 1]")
    for f in ("hidden_weight", "attention_relation_weight", "augment_factor"):
        _positive(c, f"glue.distill.{f}", allow_zero=True)
    if not 0.0 < d.augment_prob <= 1.0:
        raise ConfigError(f"glue.distill.augment_prob={d.augment_prob} must be in (0, 1]")
    _positive(c, "glue.distill.augment_top_k")
    _positive(c, "glue.max_train_examples", allow_zero=True)
    _positive(c, "glue.num_random_baselines", allow_zero=True)
    if not 0.0 <= c.glue.dropout_rate < 1.0:
        raise ConfigError(f"glue.dropout_rate={c.glue.dropout_rate} must be in [0, 1)")
    _choice(c.glue.compute_dtype, "glue.compute_dtype", DTYPES)
    _choice(c.glue.pooling, "glue.pooling", GLUE_POOLINGS)
    if c.glue.bi_encoder_tasks != "auto":
        for t in split_list(c.glue.bi_encoder_tasks):
            _choice(t, "glue.bi_encoder_tasks", GLUE_BI_ENCODER_TASKS)

    # Imported here, not at the top: every configs/*.py imports this package while the flags are parsed, and the
    # settings hold the runtime types (jax-backed modules) that command-line errors and --print_config never need.
    from kdjax.config.settings import settings_from

    return settings_from(c)


def check_data(s: Settings) -> None:
    """Fail at start-up, naming the flag to pass, when a local corpus or GLUE folder that a selected stage reads is
    missing (otherwise the error would come only after the stages before it have run)."""
    from kdjax.data.corpus import DataError, corpus_files

    stages = set(s.stages)
    hint = f" or set {DATA_ENV} to a folder holding corpus/ and glue/"
    corpus = s.data.corpus
    if stages & {"nas", "kd"} and corpus != "synthetic":
        try:
            corpus_files(corpus)
        except DataError as e:
            raise ConfigError(
                f"data.corpus: {e}; pass --config.data.corpus=PATH (a text file, folder or glob)"
                + (hint if corpus.startswith(data_dir()) else "")
            ) from e
    glue_dir = s.data.glue_dir
    if "glue" in stages and glue_dir not in ("", "synthetic") and not os.path.isdir(os.path.expanduser(glue_dir)):
        raise ConfigError(
            f"data.glue_dir: folder {glue_dir} does not exist; pass --config.data.glue_dir=PATH (a folder with GLUE "
            "task folders such as SST-2/, or '' for the hub)" + (hint if glue_dir.startswith(data_dir()) else "")
        )
