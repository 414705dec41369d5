"""Every shipped config loads and validates; bad fields are named in the error."""

import glob
import importlib.util
import os

import pytest
from helpers import ROOT, run_main

from kdjax.config import ConfigError, check_data, validate

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*_nas.py")))


def _load(path):
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_six_teacher_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {
        "bert_nas.py",
        "roberta_nas.py",
        "albert_nas.py",
        "bert_medium_nas.py",
        "bert_small_nas.py",
        "bert_mini_nas.py",
    } <= names


@pytest.mark.parametrize("path", CONFIGS)
@pytest.mark.parametrize("arg", [None, "tiny", "minilm", "cpu"])
def test_configs_validate(path, arg):
    validate(_load(path).get_config(arg))


def test_every_field_has_a_comment():
    text = open(os.path.join(ROOT, "kdjax", "config", "schema.py")).read()
    # The schema is the body of base_config up to the variants; variant functions only override fields.
    src = text[text.index("def base_config(") : text.index("if arg not in (None")].splitlines()
    for i, line in enumerate(src):
        s = line.strip()
        if s.startswith("c.") and " = " in s and "ConfigDict()" not in s and line.startswith("    c."):
            j = i - 1
            while src[j].strip().startswith("c.") and "ConfigDict()" not in src[j]:
                j -= 1  # grouped fields share the comment above the group
            assert src[j].strip().startswith("#") or "ConfigDict()" in src[j], f"no comment above: {s}"


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("stages", "teacher,bogus", "stages"),
        ("nas.strategy", "grid", "nas.strategy"),
        ("nas.proxy_fraction", 0.0, "nas.proxy_fraction"),
        ("nas.proxy_fraction", 1.5, "nas.proxy_fraction"),
        ("kd.per_device_batch_size", 0, "kd.per_device_batch_size"),
        ("glue.tasks", "sst2,imdb", "glue.tasks"),
        ("kd.init", "magic", "kd.init"),
        ("glue.learning_rates", "1e-4,fast", "glue.learning_rates"),
        ("glue.learning_rates", "1e-4,0", "glue.learning_rates"),
        ("glue.seeds", 0, "glue.seeds"),
        ("glue.bucket", 0, "glue.bucket"),
        ("glue.pooling", "max", "glue.pooling"),
        ("glue.distill.alpha", 1.5, "glue.distill.alpha"),
        ("glue.distill.augment_prob", 0.0, "glue.distill.augment_prob"),
        ("kd.collapse_guard", "loud", "kd.collapse_guard"),
        ("kd.collapse_std_ratio", 1.5, "kd.collapse_std_ratio"),
        ("kd.collapse_cls_cosine", 0.0, "kd.collapse_cls_cosine"),
        ("kd.dropout_rate", 1.0, "kd.dropout_rate"),
    ],
)
def test_bad_fields_are_named(field, value, match):
    c = _load(CONFIGS[0]).get_config("tiny")
    node = c
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError, match=match):
        validate(c)


def test_missing_data_folder_fails_at_start_naming_the_flag(tmp_path, monkeypatch):
    """:minilm reads $KDJAX_DATA/{corpus,glue}; a missing one is named with the flag to pass before any stage runs."""
    data = tmp_path / "data"
    monkeypatch.setenv("KDJAX_DATA", str(data))
    c = _load(CONFIGS[0]).get_config("minilm")
    assert (c.data.corpus, c.data.glue_dir) == (str(data / "corpus"), str(data / "glue"))
    with pytest.raises(ConfigError, match=r"data\.corpus.*--config\.data\.corpus=PATH.*KDJAX_DATA"):
        check_data(validate(c))
    (data / "corpus").mkdir(parents=True)
    (data / "corpus" / "a.txt").write_text("one line of text\n")
    with pytest.raises(ConfigError, match=r"data\.glue_dir.*--config\.data\.glue_dir=PATH.*KDJAX_DATA"):
        check_data(validate(c))
    c.stages = "kd"  # no stage reads GLUE
    check_data(validate(c))
    c.stages = "teacher,glue"
    c.data.corpus = str(tmp_path / "elsewhere")  # no stage reads the corpus
    (data / "glue").mkdir()
    check_data(validate(c))


def test_missing_data_folder_is_one_line_through_main(tmp_path):
    proc = run_main(
        ["--config=configs/bert_nas.py:minilm", "--config.stages=kd"],
        tmp_path / "w",
        timeout=300,
        env={"KDJAX_DATA": str(tmp_path / "none")},
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("kdjax: error: data.corpus") and "--config.data.corpus=PATH" in lines[0]
    assert not os.path.exists(tmp_path / "w" / "teacher")  # failed before the first stage
