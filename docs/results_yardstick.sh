#!/usr/bin/env bash
# The teacher yardstick of docs/results.md ("Yardstick on the current recipe"): all-MiniLM-L6-v2 fine-tuned with the
# default GLUE recipe (batch 32, full dev sets) cut to what fits a loaded 2-core CPU (one rate per step, fewer epochs
# or examples where the step name says so), one workdir per variant, one step at a time. Every step is resumable: a
# finished (model, task) is skipped on re-run. Each step's wall/CPU seconds go to ROOT/time-<step>.txt (GNU time -v).
#   KDJAX_DATA=DIR bash docs/results_yardstick.sh [ROOT] [STEP...]   (ROOT defaults to runs/yardstick)
# Steps: teacher-<lr>-<task>[-n<N>][-e<E>][-p<HEAD>] (e.g. teacher-1e-4-sst2-n8000-e1: lr 1e-4, a seeded subset of
# 8,000 training examples, 1 epoch; one workdir per variant); default: the steps docs/results.md reports. The head is
# glue.pooling=pooler (the rows were measured with it) unless -p<HEAD> names another (e.g. -pmean, -pfresh_pooler).
set -euo pipefail
ROOT=${1:-runs/yardstick}
shift || true
DATA=${KDJAX_DATA:-$HOME/.cache/kdjax/data}
C=configs/bert_nas.py:minilm
mkdir -p "$ROOT"
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
    teacher-*)  # teacher-<lr>-<task>[-n<N>][-e<E>][-p<HEAD>]: the default recipe, a grid of one rate [N examples]
      # [E epochs] [another head]
      local lr task opts=() extra=() w o pooling=pooler
      IFS=- read -r _ lr task rest <<<"${1/e-/e_}"
      lr=${lr/e_/e-}
      w=$ROOT/lr$lr
      IFS=- read -r -a opts <<<"${rest:-}"
      for o in "${opts[@]}"; do
        case $o in
          n*) extra+=(--config.glue.max_train_examples="${o#n}") ;;
          e*) extra+=(--config.glue.num_epochs="${o#e}") ;;
          p*) pooling=${o#p} ;;
          *) echo "unknown option $o in $1" >&2; exit 2 ;;
        esac
        w=$w-$o
      done
      step "$1" --workdir="$w" --config.stages=glue --config.glue.models=teacher \
        --config.glue.tasks="$task" --config.glue.learning_rates="$lr" --config.glue.pooling="$pooling" "${extra[@]}" ;;
    *) echo "unknown step $1" >&2; exit 2 ;;
  esac
}

STEPS=("$@")
# The order they ran in.
[[ ${#STEPS[@]} -gt 0 ]] || STEPS=(teacher-1e-4-stsb-e1 teacher-1e-4-sst2-n8000-e1 teacher-1e-4-rte-e1
  teacher-1e-4-cola-e1 teacher-3e-5-rte-e1 teacher-3e-5-cola-e1 teacher-1e-4-cola-e1-pmean
  teacher-1e-4-cola-e1-pfresh_pooler teacher-1e-4-rte-e1-pmean teacher-1e-4-cola-pmean teacher-1e-4-rte-pmean
  teacher-3e-5-cola-pmean)
for s in "${STEPS[@]}"; do run "$s"; done
