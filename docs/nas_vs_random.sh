#!/usr/bin/env bash
# NAS against random (issue 14, item 3): LSTM, Optuna and random search, N candidates each, over several seeds, on
# one CPU-sized proxy; plus the reward's own noise (one architecture, one mini-KD per seed). Every search is its own
# workdir, so re-running the script resumes what was stopped and skips what is finished.
#   KDJAX_DATA=DIR bash docs/nas_vs_random.sh [ROOT] [N] [SEEDS]     (defaults: runs/nas_vs_random 60 "0 1 2")
#   python docs/nas_vs_random.py ROOT                                  (table, JSON and figure from the workdirs)
# The proxy: :minilm's teacher, students cut from it, mini-KD of 2 x 5 steps of 8 rows x 128 tokens on the same proxy
# rows for every candidate of a seed, latency from the machine's fitted latency model. Extra flags after the
# third argument go to every run (e.g. --config.data.corpus=... for another corpus, or :tiny for a smoke test via
# CONFIG=configs/bert_nas.py:tiny).
set -euo pipefail
ROOT=${1:-runs/nas_vs_random}
N=${2:-60}
SEEDS=${3:-0 1 2}
shift $(($# < 3 ? $# : 3))
C=${CONFIG:-configs/bert_nas.py:minilm}
K=6 # LSTM candidates per episode (controller updates = N / K)
mkdir -p "$ROOT"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$ROOT/timeline.txt"; }

PROXY=(--config="$C" --config.stages=teacher,nas --config.kd.init=auto --config.kd.per_device_batch_size=8
  --config.nas.proxy_fraction=0.002 --config.nas.mini_kd_epochs=2 --config.nas.mini_kd_steps_per_epoch=5
  --config.nas.latency_source=model --config.nas.top_k=1 "$@")

for seed in $SEEDS; do
  [[ -z ${NOISE_ONLY:-} ]] || break
  for s in random optuna lstm; do
    W=$ROOT/s$seed-$s
    [[ -f $W/nas/top_k.json ]] && continue
    log "search $s seed $seed start"
    python main.py "${PROXY[@]}" --workdir="$W" --config.seed="$seed" --config.nas.strategy="$s" \
      --config.nas.num_trials="$N" --config.nas.num_episodes=$(((N + K - 1) / K)) \
      --config.nas.candidates_per_episode="$K"
    log "search $s seed $seed done"
  done
done
# The reward's noise: the best architecture of the first seed's random search, searched alone (a one-point space)
# once per seed, so each seed's mini-KD (its proxy rows, batch order) is the only thing that changes.
# NOISE_ARCH=<arch id> names it instead; NOISE_ONLY=1 skips the searches (then NOISE_ARCH is required).
FIRST=$(set -- $SEEDS; echo "$1")
ARCH=${NOISE_ARCH:-}
[[ -n $ARCH ]] || ARCH=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['top_k'][0]['arch_id'])" \
  "$ROOT/s$FIRST-random/nas/top_k.json")
read -r L H A F ACT < <(sed -E 's/^([0-9]+)L-([0-9]+)H-([0-9]+)A-([0-9]+)F-(.+)$/\1 \2 \3 \4 \5/' <<<"$ARCH")
for seed in $SEEDS; do
  W=$ROOT/noise-s$seed
  [[ -f $W/nas/top_k.json ]] && continue
  log "noise $ARCH seed $seed start"
  python main.py "${PROXY[@]}" --workdir="$W" --config.seed="$seed" --config.nas.strategy=random \
    --config.nas.num_trials=1 --config.nas.space.max_params_fraction=1.0 --config.nas.space.num_layers="$L" \
    --config.nas.space.hidden_size="$H" --config.nas.space.num_heads="$A" --config.nas.space.ffn_size="$F" \
    --config.nas.space.activation="$ACT"
  log "noise seed $seed done"
done
# kdjax's own report over every search: Fig. 2 draws each strategy's mean best reward with a min-max band over the
# seeds, and README.md's table gives mean ± spread of the best and top-3 rewards (in the first random search's report/).
EXTRA=()
for seed in $SEEDS; do for s in random optuna lstm; do
  [[ $seed-$s == $FIRST-random ]] || EXTRA+=("$ROOT/s$seed-$s")
done; done
python main.py "${PROXY[@]}" --workdir="$ROOT/s$FIRST-random" --config.seed="$FIRST" --config.nas.strategy=random \
  --config.stages=report --config.force=true --config.report.extra_workdirs="$(IFS=,; echo "${EXTRA[*]}")"
log "all searches done; report in $ROOT/s$FIRST-random/report; python docs/nas_vs_random.py $ROOT"
