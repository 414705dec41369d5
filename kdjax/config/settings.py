"""Typed, frozen settings: what `validate(config)` returns, and the only config everything below it reads.

The ConfigDict stays the user's surface (flags, `--print_config`, `W/config.json`); it is read here once, after
validation, with every cast and every derived setting in one place. Each section is a frozen dataclass, and where a
section (or a part of one) is exactly the settings object a module already works with (the KD loss, the search
reward, the latency protocol, the LSTM controller, the collapse guard, the GLUE recipe, task distillation), the
section holds that object itself, so no module restates the schema in a `from_config`.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from kdjax.collapse import GuardConfig
from kdjax.config.schema import split_list
from kdjax.finetune import Recipe
from kdjax.latency import LatencyConfig
from kdjax.losses import LossConfig
from kdjax.nas.controller import ControllerConfig
from kdjax.optim import OptimConfig
from kdjax.reward import RewardConfig
from kdjax.task_distill import DistillConfig


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
    name: str
    allow_pickle: bool


@dataclasses.dataclass(frozen=True)
class DataSettings:
    corpus: str
    text_column: str
    max_seq_len: int
    mlm_probability: float
    max_lines: int
    synthetic_lines: int
    # '' = the hub, 'synthetic' = generated TSVs, else a local folder of GLUE task folders.
    glue_dir: str


@dataclasses.dataclass(frozen=True)
class KdSettings:
    arch: str
    num_train_steps: int
    num_epochs: int
    per_device_batch_size: int
    learning_rate: float
    warmup_fraction: float
    schedule: str
    weight_decay: float
    grad_clip_norm: float
    checkpoint_every_steps: int
    keep_checkpoints: int
    log_every_steps: int
    init: str
    compute_dtype: str  # as configured: 'auto' is resolved on the device (kdjax.sharding.compute_dtype)
    pdt_steps: int
    dropout_rate: float
    guard: GuardConfig
    loss: LossConfig

    def num_steps(self, steps_per_epoch: int) -> int:
        """Training steps: `num_train_steps`, or `num_epochs` epochs of `steps_per_epoch` when it is 0."""
        return self.num_train_steps or self.num_epochs * steps_per_epoch

    def optim(self, total_steps: int) -> OptimConfig:
        """The AdamW settings of a run of `total_steps` steps (warm-up is a fraction of them)."""
        return OptimConfig(
            learning_rate=self.learning_rate,
            total_steps=total_steps,
            warmup_steps=int(self.warmup_fraction * total_steps),
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            grad_clip_norm=self.grad_clip_norm,
        )


@dataclasses.dataclass(frozen=True)
class SpaceSettings:
    """Overrides of the teacher-derived search space: comma lists ('' = derived), parsed by kdjax.search_space."""

    num_layers: str = ""
    hidden_size: str = ""
    num_heads: str = ""
    ffn_size: str = ""
    activation: str = ""
    max_params_fraction: float = 1.0
    min_speedup: float = 0.0


@dataclasses.dataclass(frozen=True)
class NasSettings:
    strategy: str
    num_episodes: int
    candidates_per_episode: int
    num_trials: int
    storage: str
    heartbeat_interval_s: int
    prune: bool
    multi_objective: bool
    proxy_fraction: float
    mini_kd_epochs: int
    mini_kd_steps_per_epoch: int
    teacher_cache_mb: int
    scan_layers: bool
    compile_ahead: bool
    loss_source: str
    top_k: int
    top_k_latency_gap: float
    stop_after_evaluations: int
    latency: LatencyConfig
    reward: RewardConfig
    space: SpaceSettings
    controller: ControllerConfig

    @property
    def budget(self) -> int:
        """Proposals the search makes: episodes x candidates for the LSTM, else the number of trials (a repeated
        proposal reuses its reward, so the distinct candidates trained can be fewer)."""
        if self.strategy == "lstm":
            return self.num_episodes * self.candidates_per_episode
        return self.num_trials


@dataclasses.dataclass(frozen=True)
class GlueDistillSettings:
    enabled: bool
    baseline: bool
    # The loss and augmentation settings; the stage adds the teacher's spec and dtype when it knows them.
    loss: DistillConfig


@dataclasses.dataclass(frozen=True)
class GlueSettings:
    tasks: tuple[str, ...]
    models: tuple[str, ...]
    num_random_baselines: int
    # The fine-tuning recipe with `compute_dtype` and `pooling` as configured: the glue stage resolves their 'auto'
    # (dtype on the device, pooling from the run's teacher; kdjax.glue_stage.recipe_of).
    recipe: Recipe
    distill: GlueDistillSettings
    # Tasks whose recipe has pair_encoding 'bi' (kdjax.glue_stage's recipe_for), or ('auto',), which the glue stage
    # resolves from the run's teacher (kdjax.classifier.resolve_bi_encoder_tasks); the others are 'cross'.
    bi_encoder_tasks: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    extra_workdirs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Settings:
    seed: int
    stages: tuple[str, ...]
    force: bool
    wait_for_lock: bool
    teacher: TeacherSettings
    data: DataSettings
    kd: KdSettings
    nas: NasSettings
    glue: GlueSettings
    report: ReportSettings


def settings_from(c: ml_collections.ConfigDict) -> Settings:
    """The typed settings of a config that `validate` accepted (call `validate`, which returns them)."""
    seed = int(c.seed)
    return Settings(
        seed=seed,
        stages=tuple(split_list(c.stages)),
        force=bool(c.force),
        wait_for_lock=bool(c.wait_for_lock),
        teacher=TeacherSettings(name=str(c.teacher.name), allow_pickle=bool(c.teacher.allow_pickle)),
        data=DataSettings(
            corpus=str(c.data.corpus),
            text_column=str(c.data.text_column),
            max_seq_len=int(c.data.max_seq_len),
            mlm_probability=float(c.data.mlm_probability),
            max_lines=int(c.data.max_lines),
            synthetic_lines=int(c.data.synthetic_lines),
            glue_dir=str(c.data.glue_dir),
        ),
        kd=_kd(c.kd),
        nas=_nas(c.nas),
        glue=glue_settings(c.glue, seed),
        report=ReportSettings(extra_workdirs=tuple(split_list(c.report.extra_workdirs))),
    )


def _kd(kd: ml_collections.ConfigDict) -> KdSettings:
    loss = kd.loss
    return KdSettings(
        arch=str(kd.arch),
        num_train_steps=int(kd.num_train_steps),
        num_epochs=int(kd.num_epochs),
        per_device_batch_size=int(kd.per_device_batch_size),
        learning_rate=float(kd.learning_rate),
        warmup_fraction=float(kd.warmup_fraction),
        schedule=str(kd.schedule),
        weight_decay=float(kd.weight_decay),
        grad_clip_norm=float(kd.grad_clip_norm),
        checkpoint_every_steps=int(kd.checkpoint_every_steps),
        keep_checkpoints=int(kd.keep_checkpoints),
        log_every_steps=int(kd.log_every_steps),
        init=str(kd.init),
        compute_dtype=str(kd.compute_dtype),
        pdt_steps=int(kd.pdt_steps),
        dropout_rate=float(kd.dropout_rate),
        guard=GuardConfig(
            mode=str(kd.collapse_guard),
            std_ratio=float(kd.collapse_std_ratio),
            cls_cosine=float(kd.collapse_cls_cosine),
        ),
        loss=LossConfig(
            hidden_weight=float(loss.hidden_weight),
            attention_relation_weight=float(loss.attention_relation_weight),
            logit_weight=float(loss.logit_weight),
            sentence_weight=float(loss.sentence_weight),
            temperature=float(loss.temperature),
            relation_heads=int(loss.relation_heads),
        ),
    )


def _nas(nas: ml_collections.ConfigDict) -> NasSettings:
    space, reward, ctl = nas.space, nas.reward, nas.controller
    return NasSettings(
        strategy=str(nas.strategy),
        num_episodes=int(nas.num_episodes),
        candidates_per_episode=int(nas.candidates_per_episode),
        num_trials=int(nas.num_trials),
        storage=str(nas.storage),
        heartbeat_interval_s=int(nas.heartbeat_interval_s),
        prune=bool(nas.prune),
        multi_objective=bool(nas.multi_objective),
        proxy_fraction=float(nas.proxy_fraction),
        mini_kd_epochs=int(nas.mini_kd_epochs),
        mini_kd_steps_per_epoch=int(nas.mini_kd_steps_per_epoch),
        teacher_cache_mb=int(nas.teacher_cache_mb),
        scan_layers=bool(nas.scan_layers),
        compile_ahead=bool(nas.compile_ahead),
        loss_source=str(nas.loss_source),
        top_k=int(nas.top_k),
        top_k_latency_gap=float(nas.top_k_latency_gap),
        stop_after_evaluations=int(nas.stop_after_evaluations),
        latency=LatencyConfig(
            device=str(nas.latency_device),
            batch_size=int(nas.latency_batch_size),
            seq_len=int(nas.latency_seq_len),
            warmup_runs=int(nas.latency_warmup_runs),
            timed_runs=int(nas.latency_timed_runs),
            percentile=float(nas.latency_percentile),
            source=str(nas.latency_source),
            cache_dir=str(nas.latency_cache_dir),
        ),
        reward=RewardConfig(
            alpha=float(reward.alpha),
            beta=float(reward.beta),
            latency_budget=float(reward.latency_budget),
            budget_penalty=float(reward.budget_penalty),
        ),
        space=SpaceSettings(
            num_layers=str(space.num_layers),
            hidden_size=str(space.hidden_size),
            num_heads=str(space.num_heads),
            ffn_size=str(space.ffn_size),
            activation=str(space.activation),
            max_params_fraction=float(space.max_params_fraction),
            min_speedup=float(space.min_speedup),
        ),
        controller=ControllerConfig(
            hidden_size=int(ctl.hidden_size),
            learning_rate=float(ctl.learning_rate),
            entropy_weight=float(ctl.entropy_weight),
            baseline_decay=float(ctl.baseline_decay),
        ),
    )


def glue_settings(g: ml_collections.ConfigDict, seed: int) -> GlueSettings:
    """The typed `glue` section of a validated config (also how kdjax.pipeline reads a request recorded in an older
    marker format, which held the raw section)."""
    d = g.distill
    return GlueSettings(
        tasks=tuple(split_list(g.tasks)),
        models=tuple(split_list(g.models)),
        num_random_baselines=int(g.num_random_baselines),
        recipe=Recipe(
            learning_rates=parse_rates(g.learning_rates),
            per_device_batch_size=int(g.per_device_batch_size),
            num_epochs=int(g.num_epochs),
            warmup_fraction=float(g.warmup_fraction),
            weight_decay=float(g.weight_decay),
            max_seq_len=int(g.max_seq_len),
            max_train_examples=int(g.max_train_examples),
            dropout_rate=float(g.dropout_rate),
            compute_dtype=str(g.compute_dtype),
            seed=seed,
            seeds=int(g.seeds),
            small_task_examples=int(g.small_task_examples),
            length_window=int(g.length_window),
            bucket=int(g.bucket),
            pooling=str(g.pooling),
        ),
        distill=GlueDistillSettings(
            enabled=bool(d.enabled),
            baseline=bool(d.baseline),
            loss=DistillConfig(
                temperature=float(d.temperature),
                alpha=float(d.alpha),
                hidden_weight=float(d.hidden_weight),
                attention_relation_weight=float(d.attention_relation_weight),
                augment_factor=int(d.augment_factor),
                augment_prob=float(d.augment_prob),
                augment_top_k=int(d.augment_top_k),
            ),
        ),
        bi_encoder_tasks=tuple(split_list(g.get("bi_encoder_tasks", ""))),
    )


def parse_rates(text) -> tuple[float, ...]:
    """'3e-4,1e-4' (or one number, as a command-line override may give) -> (3e-4, 1e-4)."""
    if isinstance(text, int | float):
        return (float(text),)
    return tuple(float(t) for t in str(text).split(",") if t.strip())
