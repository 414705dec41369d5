"""The config: its schema (`base_config`, the fields every `configs/*.py` has), variants, and validation.

`validate(config)` runs once at start-up, raises `ConfigError` naming the first bad field, and returns the typed,
frozen `Settings` (kdjax/config/settings.py) that every stage reads instead of the ConfigDict.
"""

from kdjax.config.schema import (
    DTYPES,
    GLUE_BI_ENCODER_TASKS,
    GLUE_POOLINGS,
    GLUE_TASKS,
    INITS,
    LATENCY_DEVICES,
    LOSS_SOURCES,
    RANDOM_TEACHERS,
    STAGES,
    STRATEGIES,
    ConfigError,
    base_config,
    split_list,
)
from kdjax.config.validation import check_data, check_positions, usable_positions, validate
from kdjax.config.variants import DATA_ENV, DEFAULT_DATA_DIR, _minilm_dir, data_dir

__all__ = [
    "DATA_ENV",
    "DEFAULT_DATA_DIR",
    "DTYPES",
    "GLUE_BI_ENCODER_TASKS",
    "GLUE_POOLINGS",
    "GLUE_TASKS",
    "INITS",
    "LATENCY_DEVICES",
    "LOSS_SOURCES",
    "RANDOM_TEACHERS",
    "STAGES",
    "STRATEGIES",
    "ConfigError",
    "_minilm_dir",
    "base_config",
    "check_data",
    "check_positions",
    "data_dir",
    "split_list",
    "usable_positions",
    "validate",
]
