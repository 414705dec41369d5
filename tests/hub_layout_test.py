"""Teachers laid out as their hub repos ship them load, as folders and as hub ids, and match transformers' own model.

The fixtures (tests/hub_fixtures.py) are tiny random checkpoints with each repo's real file list and parameter names,
served as plain folders and from a hub-cache layout with HF_HUB_OFFLINE=1. One family runs the whole pipeline through
`main.py` by default; the others are `slow`.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from helpers import run_main
from hub_fixtures import HUB_TEACHERS, as_hub_cache, build

from kdjax.models import Encoder
from kdjax.teacher import TeacherError, load_teacher

FAMILY_IDS = ["bert-base-uncased", "roberta-base", "albert-base-v2", "google/bert_uncased_L-4_H-256_A-4"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """{hub id: (folder, PyTorch model)} plus `hf_home`, a hub cache holding every id of HUB_TEACHERS."""
    pytest.importorskip("torch")  # the fixtures are written by transformers' PyTorch classes, as on the hub
    root = tmp_path_factory.mktemp("hub")
    hf_home = str(root / "hf_home")
    built, out = {}, {"hf_home": hf_home}
    for hub_id, family in HUB_TEACHERS.items():
        if family not in built:  # the three compact BERTs share one tiny checkpoint
            folder = str(root / "folders" / hub_id.replace("/", "--"))
            built[family] = (folder, build(hub_id, folder))
        out[hub_id] = built[family]
        as_hub_cache(hf_home, hub_id, built[family][0])
    return out


@pytest.fixture
def offline_cache(hub, monkeypatch):
    """Point this process's huggingface_hub at the fixture cache, offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.path.join(hub["hf_home"], "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def _reference(pt_model, t, texts):
    """Hidden states and pooler output of transformers' own PyTorch model on the teacher tokenizer's ids."""
    import torch

    enc = t.tokenizer(texts, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    types = enc.get("token_type_ids", np.zeros_like(ids)).astype(np.int32)
    base = getattr(pt_model, pt_model.base_model_prefix)
    with torch.no_grad():
        ref = base(
            torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types, dtype=torch.long),
            output_hidden_states=True,
        )
    return (ids, mask, types), ref


def _check_against_transformers(t, pt_model):
    (ids, mask, types), ref = _reference(pt_model, t, ["the cat sees the small book .", "a dog reads"])
    ours = Encoder(t.spec).apply({"params": t.params["encoder"]}, ids, mask, types)["hidden_states"]
    assert len(ours) == len(ref.hidden_states) == t.spec.num_layers + 1
    m = mask[..., None].astype(bool)
    for a, b in zip(ours, ref.hidden_states):
        np.testing.assert_allclose(np.where(m, a, 0), np.where(m, b.numpy(), 0), atol=1e-5)
    if ref.pooler_output is None or t.spec.family == "roberta":
        # roberta-base ships RobertaForMaskedLM weights: no pooler, so none may be invented.
        assert "pooler" not in t.params
    else:
        p = t.params["pooler"]
        ours_pooled = np.tanh(np.asarray(ours[-1])[:, 0] @ np.asarray(p["kernel"]) + np.asarray(p["bias"]))
        np.testing.assert_allclose(ours_pooled, ref.pooler_output.numpy(), atol=1e-5)
    assert t.has_mlm_head


@pytest.mark.parametrize("hub_id", FAMILY_IDS)
def test_folder_matches_transformers(hub, hub_id):
    folder, pt_model = hub[hub_id]
    t = load_teacher(folder)
    assert t.source == folder and t.folder == folder
    _check_against_transformers(t, pt_model)


@pytest.mark.parametrize("hub_id", sorted(HUB_TEACHERS))
def test_hub_id_from_offline_cache_matches_transformers(offline_cache, hub_id):
    t = load_teacher(hub_id)
    assert t.source == hub_id and os.sep + "snapshots" + os.sep in t.folder
    _check_against_transformers(t, offline_cache[hub_id][1])


@pytest.mark.parametrize("hub_id", ["bert-base-uncased", "roberta-base", "albert-base-v2"])
def test_safetensors_only_folder_keeps_the_pooler(hub, hub_id, tmp_path):
    """What `save_pretrained` or `huggingface-cli download --include '*.safetensors'` gives (crashed before)."""
    folder = str(tmp_path / "st")
    pt_model = build(hub_id, folder, formats=("safetensors",))
    assert not {"flax_model.msgpack", "pytorch_model.bin"} & set(os.listdir(folder))
    _check_against_transformers(load_teacher(folder), pt_model)


def test_pickle_only_teacher_needs_the_opt_in(hub, offline_cache, tmp_path):
    folder = str(tmp_path / "pickle")
    pt_model = build("google/bert_uncased_L-4_H-256_A-4", folder, formats=("pickle",))
    assert os.listdir(folder) and "pytorch_model.bin" in os.listdir(folder)
    with pytest.raises(TeacherError, match=r"--config\.teacher\.allow_pickle=true"):
        load_teacher(folder)
    _check_against_transformers(load_teacher(folder, allow_pickle=True), pt_model)
    # The same files behind a hub id.
    as_hub_cache(hub["hf_home"], "google/bert_uncased_L-2_H-128_A-2", folder)
    with pytest.raises(TeacherError, match=r"--config\.teacher\.allow_pickle=true"):
        load_teacher("google/bert_uncased_L-2_H-128_A-2")
    assert load_teacher("google/bert_uncased_L-2_H-128_A-2", allow_pickle=True).spec.num_layers == 4


def test_hub_id_not_in_cache_says_so(offline_cache):
    with pytest.raises(TeacherError) as e:
        load_teacher("google/no-such-bert")
    msg = str(e.value)
    assert "not in the hub cache" in msg and "HF_HUB_OFFLINE" in msg and "does not exist" not in msg


def test_export_card_names_the_teacher_not_a_path(hub, tmp_path):
    import transformers

    from kdjax.export import export_hf

    folder, _ = hub["albert-base-v2"]
    t = load_teacher(folder)
    spec = t.spec.student(num_layers=1, hidden_size=64, num_heads=2, ffn_size=64)
    import jax

    enc = Encoder(spec).init(jax.random.PRNGKey(0), np.ones((1, 4), np.int32), np.ones((1, 4), np.int32))["params"]
    for source, label in ((folder, os.path.basename(folder)), ("albert-base-v2", "albert-base-v2")):
        out = export_hf(
            str(tmp_path / "hf"), spec, enc, t.hf_config, t.tokenizer, teacher_source=source, info={"teacher": source}
        )
        card = open(os.path.join(out, "README.md")).read()
        cfg = json.load(open(os.path.join(out, "config.json")))
        assert f"`{label}`" in card and f"| teacher | {label} |" in card
        assert str(tmp_path) not in card + json.dumps(cfg) and "https://github.com/)" not in card
        assert cfg["transformers_version"] == transformers.__version__ and cfg["kdjax"]["teacher"] == label


PIPELINE = [
    "--config=configs/bert_nas.py:tiny",
    "--config.nas.strategy=random",
    "--config.nas.num_trials=2",
    "--config.glue.models=teacher,best",
    "--config.glue.tasks=sst2",
]


def _pipeline(hub, name: str, workdir: str):
    proc = run_main(
        [*PIPELINE, f"--config.teacher.name={name}"],
        workdir,
        timeout=1200,
        env={"HF_HOME": hub["hf_home"], "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("teacher", "nas", "kd", "glue", "report"):
        assert os.path.exists(os.path.join(workdir, ".stages", f"{stage}.json")), stage
    info = json.load(open(os.path.join(workdir, "teacher", "info.json")))
    assert info["source"] == name
    best = json.load(open(os.path.join(workdir, "nas", "top_k.json")))["top_k"][0]["arch_id"]
    card = open(os.path.join(workdir, "kd", best, "hf", "README.md")).read()
    label = name if not os.path.isdir(name) else os.path.basename(name)
    assert f"`{label}`" in card and hub["hf_home"] not in card
    assert os.path.exists(os.path.join(workdir, "glue", "teacher", "sst2.json"))
    return proc


def test_pipeline_bert_base_uncased_hub_id(hub, tmp_path):
    """`bert-base-uncased` typed exactly as a user types it, served from the hub cache offline."""
    _pipeline(hub, "bert-base-uncased", str(tmp_path / "run"))


@pytest.mark.slow
@pytest.mark.parametrize("hub_id", FAMILY_IDS)
@pytest.mark.parametrize("as_folder", [True, False], ids=["folder", "hub_id"])
def test_pipeline_every_family(hub, tmp_path, hub_id, as_folder):
    if hub_id == "bert-base-uncased" and not as_folder:
        pytest.skip("the default run covers it")
    name = hub_id
    if as_folder:  # a folder named like a user's, not like the hub id
        name = str(tmp_path / "my-teacher")
        shutil.copytree(hub[hub_id][0], name)
    _pipeline(hub, name, str(tmp_path / "run"))


def test_online_download_fetches_one_weight_file_and_never_unasked_pickle(monkeypatch):
    """With the hub reachable, only config, tokenizer and the preferred weight file are fetched (no network here:
    the two hub calls are replaced and record what they were asked)."""
    import types

    import huggingface_hub
    from huggingface_hub import constants

    from kdjax import hub as kdhub

    asked = {}

    def fake_info(self, repo_id, timeout=None):
        asked["timeout"] = timeout
        names = asked["files"]
        return types.SimpleNamespace(sha="abc", siblings=[types.SimpleNamespace(rfilename=n) for n in names])

    def fake_snapshot(repo_id, revision=None, allow_patterns=(), etag_timeout=None):
        asked["patterns"] = list(allow_patterns)
        return "/snapshot"

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fake_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    asked["files"] = ["config.json", "vocab.txt", "pytorch_model.bin", "model.safetensors", "tf_model.h5"]
    assert kdhub.snapshot_folder("bert-base-uncased", allow_pickle=False) == "/snapshot"
    assert "model.safetensors" in asked["patterns"] and "pytorch_model.bin" not in asked["patterns"]
    assert "tf_model.h5" not in asked["patterns"] and asked["timeout"] <= 10
    # A sentence-transformers repo's pooling files come along: glue.pooling=auto reads them.
    assert {"modules.json", "*Pooling/config.json"} <= set(asked["patterns"])
    asked["files"], asked["patterns"] = ["config.json", "vocab.txt", "pytorch_model.bin"], None
    with pytest.raises(TeacherError, match=r"--config\.teacher\.allow_pickle=true"):
        kdhub.snapshot_folder("google/bert_uncased_L-4_H-512_A-8", allow_pickle=False)
    assert asked["patterns"] is None, "nothing may be downloaded before the pickle check"
    kdhub.snapshot_folder("google/bert_uncased_L-4_H-512_A-8", allow_pickle=True)
    assert "pytorch_model.bin" in asked["patterns"]
