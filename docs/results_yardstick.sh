#!/usr/bin/env bash
# The teacher yardstick of docs/results.md ("Yardstick on the current recipe"): all-MiniLM-L6-v2 fine-tuned with the
# default GLUE recipe (4 epochs, batch 32, full training sets, full dev sets), one workdir per learning rate so the
# steps that fit a loaded 2-core CPU can be run one at a time. Every step is resumable: a finished (model, task) is
# skipped on re-run. Each step's wall/CPU seconds go to ROOT/time-<step>.txt (GNU time -v).
#   KDJAX_DATA=DIR bash docs/results_yardstick.sh [ROOT] [STEP...]   (ROOT defaults to runs/yardstick)
# Steps: teacher-<lr>-<task>[-n<N>][-e<E>] (e.g. teacher-1e-4-sst2-n8000-e1: lr 1e-4, a seeded subset of 8,000
# training examples, 1 epoch; one workdir per variant) and student-<arch> (see run()); default: the steps
# docs/results.md reports, in the order they ran.
set -euo pipefail
ROOT=${1:-runs/yardstick}
shift || true
DATA=${KDJAX_DATA:-$HOME/.cache/kdjax/data}
C=configs/bert_nas.py:minilm
mkdir -p "$ROOT"
KD_STEPS=${KD_STEPS:-150} ST_TASKS=${ST_TASKS:-stsb} ST_LR=${ST_LR:-1e-4} ST_EPOCHS=${ST_EPOCHS:-1}
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$ROOT/timeline.txt"; }

step() {  # step NAME ARGS...: one main.py run, timed
  local name=$1
  shift
  log "$name start"
  /usr/bin/time -v -o "$ROOT/time-$name.txt" python main.py --config="$C" \
    --config.data.glue_dir="$DATA/glue" --config.data.corpus="$DATA/corpus" "$@"
  log "$name done"
}

run() {
  case $1 in
    teacher-*)  # teacher-<lr>-<task>[-n<N>][-e<E>]: the default recipe, a grid of one rate [N examples] [E epochs]
      local lr task opts=() extra=() w o
      IFS=- read -r _ lr task rest <<<"${1/e-/e_}"
      lr=${lr/e_/e-}
      w=$ROOT/lr$lr
      IFS=- read -r -a opts <<<"${rest:-}"
      for o in "${opts[@]}"; do
        case $o in
          n*) extra+=(--config.glue.max_train_examples="${o#n}") ;;
          e*) extra+=(--config.glue.num_epochs="${o#e}") ;;
          *) echo "unknown option $o in $1" >&2; exit 2 ;;
        esac
        w=$w-$o
      done
      step "$1" --workdir="$w" --config.stages=glue --config.glue.models=teacher \
        --config.glue.tasks="$task" --config.glue.learning_rates="$lr" "${extra[@]}" ;;
    student-*)  # student-<arch>: teacher-cut student, KD_STEPS general KD steps (16 x 128 tokens), then GLUE on
      # ST_TASKS task-distilled and fine-tuned only (<model>-ft), in the teacher's workdir of the same recipe (lr
      # ST_LR, ST_EPOCHS epochs, full training sets), so the saved fine-tuned teacher is reused; the report times it.
      local arch=${1#student-}
      step "$1" --workdir="$ROOT/lr$ST_LR-e$ST_EPOCHS" --config.stages=teacher,kd,glue,report \
        --config.kd.arch="$arch" --config.kd.init=teacher --config.kd.per_device_batch_size=16 \
        --config.kd.num_train_steps="$KD_STEPS" --config.kd.checkpoint_every_steps=100 \
        --config.glue.models="teacher,kd-$arch" --config.glue.tasks="$ST_TASKS" \
        --config.glue.learning_rates="$ST_LR" --config.glue.num_epochs="$ST_EPOCHS" ;;
    *) echo "unknown step $1" >&2; exit 2 ;;
  esac
}

STEPS=("$@")
[[ ${#STEPS[@]} -gt 0 ]] || STEPS=(teacher-1e-4-stsb-e1 teacher-1e-4-cola-e1 teacher-1e-4-sst2-n8000-e1 teacher-1e-4-rte-e1
  student-3L-256H-8A-1024F-gelu)
for s in "${STEPS[@]}"; do run "$s"; done
