#!/usr/bin/env bash
# One-shot GPU check (about 8 minutes on one NVIDIA GPU): the :minilm pipeline at a small size through every stage,
# then bench/gpu_mfu.py (bf16 MFU, tokens/s, bf16 vs fp32 loss agreement). The last line printed is one JSON object.
#
#   bash bench/gpu_check.sh [CORPUS] [GLUE_DIR] [TEACHER]
#
# CORPUS / GLUE_DIR default to .gpudata/corpus and .gpudata/glue when present (bench/gpu_wheels.sh fills them), else
# the synthetic ones. TEACHER defaults to the all-MiniLM-L6-v2 package when installed, else a MiniLM-shaped BERT with
# random weights and MiniLM's tokenizer (.gpudata/minilm), else the built-in random tiny BERT: throughput and MFU
# depend on shapes only; the GLUE scores of a random teacher mean nothing.
# Wheels in .whl/ (bench/gpu_wheels.sh; GPU_CHECK_WHL=dir for another folder) are installed into /tmp/site first
# and put on PYTHONPATH.
# GPU_CHECK_SIZE=cpu shrinks everything to a CPU smoke run of the same flow (minutes on 2 cores).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE="${GPU_CHECK_SIZE:-gpu}"
OUT="${GPU_CHECK_OUT:-/tmp/kdjax-gpu-check}"
rm -rf "$OUT" && mkdir -p "$OUT"
T0=$(date +%s)
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export KDJAX_CACHE_DIR="$OUT/cache"
PY="${PYTHON:-$(command -v python3 || command -v python)}"

WHL="${GPU_CHECK_WHL:-.whl}"
if [ -d "$WHL" ] && ls "$WHL"/*.whl >/dev/null 2>&1; then
  if ! "$PY" -m pip install -q --upgrade --no-deps --no-compile --target /tmp/site "$WHL"/*.whl >"$OUT/pip.log" 2>&1; then
    # No pip (or it refused): a wheel is a zip of importable files, which is all these wheels need.
    echo "pip install of .whl failed ($(tail -1 "$OUT/pip.log")); unzipping the wheels instead"
    for whl in "$WHL"/*.whl; do "$PY" -m zipfile -e "$whl" /tmp/site; done
  fi
  export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c 'import jax; print("devices:", jax.devices())' || { echo '{"error": "jax does not import"}'; exit 1; }
"$PY" - <<'EOF' >"$OUT/imports.txt" 2>&1
# Versions as the interpreter resolves them (PYTHONPATH first), without importing anything heavy.
import importlib.metadata as md
for m in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "tokenizers", "huggingface_hub",
          "ml_collections", "optuna", "absl-py", "safetensors", "datasets", "matplotlib", "torch", "tensorboardX"):
    try:
        print(m, md.version(m))
    except md.PackageNotFoundError:
        print(m, "MISSING")
EOF
cat "$OUT/imports.txt"

CORPUS="${1:-}"
GLUE="${2:-}"
TEACHER="${3:-}"
[ -z "$CORPUS" ] && { [ -d .gpudata/corpus ] && CORPUS="$ROOT/.gpudata/corpus" || CORPUS=synthetic; }
[ -z "$GLUE" ] && { [ -d .gpudata/glue ] && GLUE="$ROOT/.gpudata/glue" || GLUE=synthetic; }
if [ -z "$TEACHER" ]; then
  TEACHER=$("$PY" -c 'from kdjax.config import _minilm_dir; print(_minilm_dir())' 2>/dev/null || true)
  [ -z "$TEACHER" ] && TEACHER=minilm-random
fi
if [ "$TEACHER" = minilm-random ] && [ -f .gpudata/minilm/config.json ]; then
  # MiniLM's shapes and tokenizer with random weights, written once per check.
  TEACHER="$OUT/minilm-random"
  "$PY" - "$ROOT/.gpudata/minilm" "$TEACHER" <<'EOF' || TEACHER=""
import os, shutil, sys
from transformers import BertConfig, FlaxBertForMaskedLM
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
for f in os.listdir(src):
    shutil.copy(os.path.join(src, f), dst)
FlaxBertForMaskedLM(BertConfig.from_pretrained(src), seed=0).save_pretrained(dst)
print("random MiniLM-shaped teacher in", dst)
EOF
fi
[ -z "$TEACHER" ] || [ "$TEACHER" = minilm-random ] && TEACHER=random-tiny-bert
case "$SIZE" in
  cpu) # smallest flow that still passes every stage
    SMALL=(--config.nas.num_episodes=1 --config.nas.candidates_per_episode=2 --config.nas.mini_kd_epochs=1
      --config.nas.mini_kd_steps_per_epoch=2 --config.nas.space.num_layers=1,2
      --config.nas.latency_timed_runs=3 --config.nas.latency_warmup_runs=1 --config.nas.latency_seq_len=32
      --config.kd.num_train_steps=4 --config.kd.per_device_batch_size=4 --config.kd.checkpoint_every_steps=2
      --config.data.max_seq_len=32 --config.data.max_lines=300 --config.glue.tasks=sst2 --config.glue.max_seq_len=32
      --config.glue.max_train_examples=16 --config.glue.num_epochs=1 --config.glue.per_device_batch_size=8)
    MFU=(--small --compare-fp32)
    PIPE_TIMEOUT=1500 ;;
  *)
    SMALL=(--config.nas.num_episodes=2 --config.nas.candidates_per_episode=2 --config.nas.mini_kd_epochs=2
      --config.nas.mini_kd_steps_per_epoch=20 --config.nas.latency_device=accelerator
      --config.kd.num_train_steps=300 --config.kd.per_device_batch_size=64 --config.kd.checkpoint_every_steps=150
      --config.data.max_lines=40000 --config.glue.tasks=sst2 --config.glue.max_train_examples=2000
      --config.glue.learning_rates=1e-4
      --config.glue.num_epochs=1)
    MFU=(--compare-fp32 --steps 20)
    PIPE_TIMEOUT=240 ;;
esac
STAGES=teacher,nas,kd,glue
"$PY" -c 'import matplotlib' 2>/dev/null && STAGES="$STAGES,report"
echo "teacher=$TEACHER corpus=$CORPUS glue=$GLUE stages=$STAGES size=$SIZE"

# The MFU benchmark first: its numbers (MFU, tokens/s, bf16 vs fp32) are the ones a partial run must still give.
T1=$(date +%s)
(cd bench && timeout 180 "$PY" gpu_mfu.py "${MFU[@]}") >"$OUT/mfu.log" 2>&1
MFU_RC=$?
T2=$(date +%s)
tail -3 "$OUT/mfu.log"
timeout "$PIPE_TIMEOUT" "$PY" main.py --config=configs/bert_nas.py:minilm --workdir="$OUT/w" \
  --config.stages="$STAGES" --config.teacher.name="$TEACHER" --config.data.corpus="$CORPUS" \
  --config.data.glue_dir="$GLUE" "${SMALL[@]}" >"$OUT/pipeline.log" 2>&1
PIPE_RC=$?
T3=$(date +%s)
tail -15 "$OUT/pipeline.log"

"$PY" - "$OUT" "$PIPE_RC" "$MFU_RC" "$((T3 - T2))" "$((T2 - T1))" "$((T3 - T0))" "$TEACHER" "$CORPUS" "$GLUE" <<'EOF'
import glob, json, os, sys
out, pipe_rc, mfu_rc, pipe_s, mfu_s, total_s, teacher, corpus, glue = sys.argv[1:]
w = os.path.join(out, "w")
def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except Exception:
        return None
mfu = None
try:
    with open(os.path.join(out, "mfu.log")) as f:
        mfu = json.loads([l for l in f if l.startswith("{")][-1])
except Exception:
    pass
kd = {}
for p in glob.glob(os.path.join(w, "kd", "*", "result.json")):
    r = load(p) or {}
    tok, wall, comp = r.get("corpus_tokens"), r.get("wall_s"), r.get("compile_s") or 0
    kd[os.path.basename(os.path.dirname(p))] = {
        "final_loss": r.get("final_loss"), "wall_s": wall, "compile_s": comp,
        "corpus_tokens_per_s": tok / (wall - comp) if tok and wall and wall > comp else None}
hist = []
try:
    with open(os.path.join(w, "nas", "history.jsonl")) as f:
        hist = [json.loads(l) for l in f if l.strip()]
except Exception:
    pass
glue_scores = {}
for p in glob.glob(os.path.join(w, "glue", "*", "*.json")):
    r = load(p) or {}
    glue_scores.setdefault(os.path.basename(os.path.dirname(p)), {})[os.path.basename(p)[:-5]] = r.get("scores")
pin = load(os.path.join(w, "nas", "latency.json")) or {}
packages = {}
try:
    with open(os.path.join(out, "imports.txt")) as f:
        packages = dict(l.split(None, 1) for l in f.read().splitlines() if l.strip())
except Exception:
    pass
print(json.dumps({
    "packages": packages,
    "pipeline_rc": int(pipe_rc), "mfu_rc": int(mfu_rc), "pipeline_s": int(pipe_s), "mfu_s": int(mfu_s),
    "total_s": int(total_s), "teacher": teacher, "corpus": corpus, "glue_dir": glue,
    "mfu": (mfu or {}).get("mfu"), "tokens_per_s_bf16_mfu_bench": (mfu or {}).get("tokens_per_s"),
    "bf16_vs_fp32": (mfu or {}).get("bf16_vs_fp32"), "mfu_bench": mfu,
    "nas": {"candidates": len(hist), "compile_s": sum(h.get("compile_s") or 0 for h in hist),
            "wall_s": sum(h.get("eval_s") or 0 for h in hist),
            "teacher_latency_ms": pin.get("teacher_latency_ms"), "latency_protocol": pin.get("protocol"),
            "latency_model_fit": (pin.get("model") or {}).get("fit"),
            "measured_teacher_latency_ms": pin.get("measured_teacher_latency_ms")},
    "kd": kd, "glue": glue_scores,
}, sort_keys=True))
EOF
