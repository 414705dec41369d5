"""The config schema: every field of every `configs/*.py`, with its default and (in the comment above it) its meaning.

Each `configs/<teacher>_nas.py` calls `base_config(teacher_name, arg)`; the variant `arg` (`tiny`, `minilm`, `cpu`)
overrides fields (kdjax/config/variants.py). The comments are the `--print_config` help (kdjax/config_help.py).
"""

from __future__ import annotations

import ml_collections

from kdjax.config.variants import VARIANTS
from kdjax.errors import KdjaxError

STAGES = ("teacher", "nas", "kd", "glue", "report")
STRATEGIES = ("lstm", "optuna", "random")
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
LOSS_SOURCES = ("last", "mean", "min")
INITS = ("auto", "random", "teacher")
DTYPES = ("auto", "float32", "bfloat16")
LATENCY_DEVICES = ("cpu", "accelerator")
# glue.pooling: the heads of kdjax.classifier.POOLINGS, or 'auto' (resolved from the run's teacher).
GLUE_POOLINGS = ("auto", "pooler", "fresh_pooler", "mean", "cls")
# glue.bi_encoder_tasks: the sentence-pair regression tasks (a cosine head needs a score, not classes).
GLUE_BI_ENCODER_TASKS = ("stsb",)

# Built-in random teachers that need no download (tests, smoke runs). Name -> HF-style config overrides.
RANDOM_TEACHERS = {
    "random-tiny-bert": dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, intermediate_size=128),
}


class ConfigError(KdjaxError, ValueError):
    """A config field with an impossible value; the message names the field."""


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
    # Dropout on the student's hidden states and attention during KD (DistilBERT trains its student with 0.1). A student
    # distilled without it meets dropout for the first time when fine-tuned on GLUE (glue.dropout_rate).
    c.kd.dropout_rate = 0.0
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
    # Weight of 1 - cosine between the mean-pooled last layers (the sentence embedding of a mean-pooling
    # sentence-transformers teacher), the student's through the projection.
    c.kd.loss.sentence_weight = 0.0
    # Softmax temperature of the logit KL.
    c.kd.loss.temperature = 2.0

    c.nas = ml_collections.ConfigDict()
    # Search strategy: 'optuna' (TPE), 'lstm' (REINFORCE controller) or 'random'. Optuna is the default: over 60
    # candidates x 3 seeds it beat random search from ~20-30 candidates on, the LSTM did not (docs/nas_vs_random.md).
    c.nas.strategy = "optuna"
    # LSTM: episodes x candidates per episode (15 x 8, as the original pipeline).
    c.nas.num_episodes = 15
    c.nas.candidates_per_episode = 8
    # Optuna / random: number of trials (random draws distinct candidates; Optuna may repeat one, reusing its reward).
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
    # While a candidate trains, compile the next one's programs on a thread (random search, and the LSTM within an
    # episode: the strategies that know their next candidate; Optuna's next trial depends on this one's result).
    c.nas.compile_ahead = True
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
    # Keep only candidates this many times faster than the teacher by the fitted latency model (kdjax.latency_model,
    # the one the reward reads when nas.latency_source=model), e.g. 3.0 for ">= 3x"; 0 = no speed constraint. A speed
    # target as a constraint of the space: no mini-KD is spent on students that cannot meet it.
    c.nas.space.min_speedup = 0.0
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
    # Batches are padded to a multiple of this many tokens (capped at glue.max_seq_len): each length is one more
    # compiled program, and every padded token is computed. Speed only: scores made at another value stay current.
    c.glue.bucket = 16
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
    # GLUE head for every row: pooler, fresh_pooler, mean, cls (raw [CLS] state, no pooler), or auto (mean for a
    # mean-pooling ST teacher, else pooler).
    c.glue.pooling = "auto"
    # Comma list of pair tasks scored as a bi-encoder (each sentence encoded alone, score = 5 x the cosine of the two
    # sentence vectors; sentence-transformers' STS-B) instead of one [CLS] a [SEP] b [SEP] sequence: only stsb; or
    # auto: stsb when the teacher is a sentence-transformers model (a bi-encoder), none otherwise.
    c.glue.bi_encoder_tasks = "auto"
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
    # Augmented copies per training example (0 = off; TinyBERT uses 20): words replaced via the teacher's MLM head,
    # or embedding neighbours when it has none. Both on by default, as TinyBERT's second stage has them: x4 copies
    # took the `:cpu` student from 89.0% of the teacher's four-task average (one seed) to 93.4% (3 seeds), the
    # intermediate losses on top to 95.1% (3 seeds; docs/results.md, ":cpu recipe"), at ~5x the examples and 1.6-2.6x
    # the step time of each distilled row. `:cpu` turns them off for its hour; 0 turns each off.
    c.glue.distill.hidden_weight = 1.0
    c.glue.distill.attention_relation_weight = 1.0
    c.glue.distill.augment_factor = 4
    # Probability that an eligible word is replaced, and the number of candidates drawn from.
    c.glue.distill.augment_prob = 0.4
    c.glue.distill.augment_top_k = 15

    c.report = ml_collections.ConfigDict()
    # Comma list of sibling workdirs whose nas/history.jsonl is also plotted (e.g. one per strategy or alpha).
    c.report.extra_workdirs = ""

    if arg not in (None, ""):
        if arg not in VARIANTS:
            raise ConfigError(f"unknown config variant {arg!r}; expected one of: {', '.join(VARIANTS)}")
        VARIANTS[arg](c)
    return c


def split_list(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]
