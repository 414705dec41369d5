#!/usr/bin/env bash
# Fill .whl/ with the wheels bench/gpu_check.sh installs on a GPU machine that has jax[cuda12], flax, optax, orbax and
# transformers 5 but not what kdjax needs beyond them (transformers 4.x for the Flax teacher classes and its hub
# client, ml_collections, optuna and its SQL stack), and .gpudata/ with a small corpus, GLUE slice and MiniLM's
# tokenizer/config (no weights: gpu_check.sh writes random MiniLM-shaped weights, which is enough for throughput).
#
#   bash bench/gpu_wheels.sh [DATA_DIR]      # DATA_DIR: folder with corpus/ and glue/ (default $KDJAX_DATA, else ~/.cache/kdjax/data)
#
# Wheels are for CPython 3.12 on manylinux x86_64 (PY_VERSION=3.11 etc. to change). `datasets` and pyarrow are not
# carried: kdjax reads local text corpora and GLUE TSVs without them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${PY_VERSION:-3.12}"
DATA_DIR="${1:-${KDJAX_DATA:-$HOME/.cache/kdjax/data}}"
mkdir -p .whl
# Pure-python wheels (any platform).
PURE=(
  transformers==4.57.6
  huggingface_hub==0.36.2
  ml_collections==1.1.0
  optuna==5.0.0
  alembic==1.20.1
  Mako==1.4.3
  colorlog==6.12.0
  requests==2.34.2
  urllib3==2.7.0
  idna==3.13
  certifi==2026.5.20
)
# Compiled wheels: the GPU machine's interpreter and platform.
BINARY=(
  tokenizers==0.22.2
  SQLAlchemy==2.1.9
  MarkupSafe==3.0.3
  charset_normalizer==3.4.7
)
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "${PURE[@]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${PLAT[@]}" -d .whl "${BINARY[@]}"

# .gpudata: MiniLM's tokenizer and config, a ~3 MB corpus slice, and GLUE SST-2/STS-B (train capped, dev in full).
mkdir -p .gpudata/minilm .gpudata/corpus .gpudata/glue/SST-2 .gpudata/glue/STS-B
MINILM=$(python3 -c 'from kdjax.config import _minilm_dir; print(_minilm_dir())')
if [ -n "$MINILM" ]; then
  for f in config.json vocab.txt tokenizer.json tokenizer_config.json special_tokens_map.json; do
    cp "$MINILM/$f" .gpudata/minilm/
  done
fi
if [ -d "$DATA_DIR/corpus" ]; then
  cp "$DATA_DIR/corpus/nltk_state_union.txt" "$DATA_DIR/corpus/tinyshakespeare.txt" .gpudata/corpus/
  for t in SST-2 STS-B; do
    head -n 8001 "$DATA_DIR/glue/$t/train.tsv" >.gpudata/glue/$t/train.tsv
    cp "$DATA_DIR/glue/$t/dev.tsv" .gpudata/glue/$t/dev.tsv
  done
fi
ls -l .whl
du -sh .whl .gpudata
du -cb .whl .gpudata | tail -1 | awk '{printf "carried payload: %.1f MiB\n", $1 / 1048576}'
