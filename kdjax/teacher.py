"""Load a pretrained teacher (hub id, local folder or built-in random one) and convert it to kdjax's encoder layout.

This is the only module that imports transformers' model classes. A hub id is first resolved to its local snapshot
folder (`kdjax.hub`), so hub ids and folders take one code path: the weight file is checked, the pretrained pooler read
from it, and the body converted by transformers' Flax classes. The teacher then runs through `kdjax.models.Encoder`
with its converted weights, so a distillation step computes no vocabulary logits unless a logit loss is on, and uses
fused attention.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.config import RANDOM_TEACHERS
from kdjax.hub import (
    TOKENIZER_FILES,
    WEIGHT_FILES,
    TeacherError,
    looks_like_hub_id,
    pickle_refused,
    snapshot_folder,
)
from kdjax.spec import ACTIVATIONS, ArchSpec

__all__ = ["Teacher", "TeacherError", "load_teacher", "resolve_source", "spec_from_hf_config"]

_ACT_ALIASES = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "relu": "relu"}
_ACT_ALIASES |= {"silu": "silu", "swish": "silu"}
# Prefix of the base model inside the masked-LM class, and the MLM head's key.
_PREFIX = {"bert": ("bert", "cls"), "roberta": ("roberta", "lm_head"), "albert": ("albert", "predictions")}
_REQUIRED = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)


@dataclasses.dataclass
class Teacher:
    """A frozen teacher: spec, converted params, tokenizer, and the HF config it came from."""

    spec: ArchSpec
    # {'encoder': Encoder params, 'mlm_head': head params or absent, 'pooler': pooler params or absent}
    params: dict
    tokenizer: Any
    hf_config: dict
    # What the user named: a hub id, or the folder's path (the materialised folder for a random teacher).
    source: str
    # The local folder the files were read from (a hub id's snapshot in the hub cache; else `source`).
    folder: str = ""

    @property
    def has_mlm_head(self) -> bool:
        return "mlm_head" in self.params


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' Flax deprecation banner and load chatter for one call; real errors still raise."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TensorFlow and JAX classes are deprecated.*")
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
            yield
    finally:
        transformers.logging.set_verbosity(level)


def spec_from_hf_config(cfg: dict) -> ArchSpec:
    """Map a transformers config dict (BERT, RoBERTa, ALBERT and look-alikes) to an ArchSpec."""
    mtype = cfg.get("model_type", "bert")
    family = mtype if mtype in _PREFIX else None
    if family is None:
        raise TeacherError(f"unsupported teacher model_type {mtype!r}; kdjax supports bert, roberta and albert")
    missing = [k for k in _REQUIRED if not isinstance(cfg.get(k), int) or cfg[k] <= 0]
    if missing:
        raise TeacherError(f"teacher config.json lacks a positive integer {missing[0]!r}")
    act = _ACT_ALIASES.get(cfg.get("hidden_act", "gelu"))
    if act is None or act not in ACTIVATIONS:
        raise TeacherError(f"unsupported activation {cfg.get('hidden_act')!r}")
    shared = family == "albert"
    if shared and (cfg.get("num_hidden_groups", 1) != 1 or cfg.get("inner_group_num", 1) != 1):
        raise TeacherError("ALBERT teachers with more than one layer group are not supported")
    emb = cfg.get("embedding_size") if family == "albert" else None
    return ArchSpec(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        num_heads=cfg["num_attention_heads"],
        ffn_size=cfg["intermediate_size"],
        activation=act,
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg["max_position_embeddings"],
        type_vocab_size=cfg.get("type_vocab_size", 2),
        family=family,
        pad_token_id=cfg.get("pad_token_id", 0) or 0,
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
        embedding_size=emb if emb and emb != cfg["hidden_size"] else None,
        shared_layers=shared,
    )


def _albert_layer_to_bert(layer: dict) -> dict:
    a = layer["attention"]
    return {
        "attention": {
            "self": {"query": a["query"], "key": a["key"], "value": a["value"]},
            "output": {"dense": a["dense"], "LayerNorm": a["LayerNorm"]},
        },
        "intermediate": {"dense": layer["ffn"]},
        "output": {"dense": layer["ffn_output"], "LayerNorm": layer["full_layer_layer_norm"]},
    }


def _pooler_of(base: dict) -> dict | None:
    """BERT/RoBERTa nest the pooler's Dense as `pooler/dense`; ALBERT's pooler is the Dense itself."""
    p = base.get("pooler")
    return None if p is None else dict(p.get("dense", p))


def convert_hf_params(family: str, hf_params: dict) -> dict:
    """transformers Flax params (base model or masked-LM class) -> {'encoder', 'mlm_head'?, 'pooler'?}."""
    base_key, head_key = _PREFIX[family]
    base = hf_params.get(base_key, hf_params)
    enc = {"embeddings": base["embeddings"]}
    if family == "albert":
        group = base["encoder"]["albert_layer_groups"]["0"]["albert_layers"]["0"]
        enc["encoder"] = {
            "embedding_hidden_mapping_in": base["encoder"]["embedding_hidden_mapping_in"],
            "layer": {"0": _albert_layer_to_bert(group)},
        }
    else:
        enc["encoder"] = {"layer": base["encoder"]["layer"]}
    out = {"encoder": enc}
    pooler = _pooler_of(base)
    if pooler is not None:
        out["pooler"] = pooler
    head = hf_params.get(head_key)
    if head is not None:
        if family == "bert":
            t = head["predictions"]["transform"]
            out["mlm_head"] = {"dense": t["dense"], "LayerNorm": t["LayerNorm"], "bias": head["predictions"]["bias"]}
        elif family == "roberta":
            out["mlm_head"] = {"dense": head["dense"], "LayerNorm": head["layer_norm"], "bias": head["bias"]}
        else:
            out["mlm_head"] = {"dense": head["dense"], "LayerNorm": head["LayerNorm"], "bias": head["bias"]}
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), out)


def _weight_file(folder: str) -> tuple[str, str]:
    """(format, path) of the weights kdjax reads from `folder`; format in msgpack|safetensors|pickle."""
    for fmt, name in WEIGHT_FILES:
        if os.path.exists(os.path.join(folder, name)):
            return fmt, os.path.join(folder, name)
    raise TeacherError(f"teacher folder {folder} has no flax_model.msgpack, model.safetensors or pytorch_model.bin")


def _torch_pooler(tensors: dict, base: str) -> dict | None:
    """The pooler from PyTorch names: `bert.pooler.dense.*`, ALBERT's `albert.pooler.*`, or a base model's."""
    for prefix in (f"{base}.pooler.dense", "pooler.dense", f"{base}.pooler", "pooler"):
        if f"{prefix}.weight" in tensors and f"{prefix}.bias" in tensors:
            return {"kernel": np.asarray(tensors[f"{prefix}.weight"]).T, "bias": np.asarray(tensors[f"{prefix}.bias"])}
    return None


def _inspect_weights(path: str, fmt: str, family: str) -> tuple[set[str], dict | None]:
    """(parameter names, pretrained pooler or None) read straight from the weight file; damage is one error line."""
    base = _PREFIX[family][0]
    if fmt == "pickle":
        try:
            import torch
        except ImportError as e:
            raise TeacherError(f"reading {path} needs PyTorch (pip install torch); or convert it to safetensors") from e
    try:
        if fmt == "msgpack":
            from flax.serialization import msgpack_restore
            from flax.traverse_util import flatten_dict

            with open(path, "rb") as f:
                tree = msgpack_restore(f.read())
            if not isinstance(tree, dict):
                raise ValueError("not a parameter tree")
            return {"/".join(k) for k in flatten_dict(tree)}, _pooler_of(tree.get(base, tree))
        if fmt == "safetensors":
            from safetensors import safe_open

            with safe_open(path, "np") as f:
                keys = set(f.keys())
                wanted = [k for k in keys if ".pooler" in f".{k}"]
                return keys, _torch_pooler({k: f.get_tensor(k) for k in wanted}, base)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError("not a state dict")
        pooler = {k: v.float().numpy() for k, v in state.items() if ".pooler" in f".{k}"}
        return set(state), _torch_pooler(pooler, base)
    except TeacherError:
        raise
    except Exception as e:
        raise TeacherError(
            f"teacher weights {path} are damaged or truncated ({_first_line(e)}); download or save them again"
        ) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _has_head(family: str, keys: set[str]) -> bool:
    head = {"bert": "cls.predictions", "roberta": "lm_head", "albert": "predictions"}[family]
    return any(k.startswith((head, head.replace(".", "/"))) for k in keys)


def _random_teacher(name: str, save_dir: str, seed: int) -> str:
    """Build a random tiny BERT with a word-level vocabulary over the synthetic corpus; save it like a hub model."""
    from transformers import BertConfig, BertTokenizerFast, FlaxBertForMaskedLM

    from kdjax.data.synthetic import vocabulary

    if os.path.exists(os.path.join(save_dir, "config.json")):
        return save_dir
    os.makedirs(save_dir, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + vocabulary()
    vocab_file = os.path.join(save_dir, "vocab.txt")
    with open(vocab_file, "w") as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True)
    cfg = BertConfig(vocab_size=len(vocab), max_position_embeddings=512, **RANDOM_TEACHERS[name])
    with _quiet():
        model = FlaxBertForMaskedLM(cfg, seed=seed)
    model.save_pretrained(save_dir)
    tok.save_pretrained(save_dir)
    return save_dir


def resolve_source(name: str, random_dir: str | None = None, seed: int = 0, allow_pickle: bool = False) -> str:
    """The local folder `name` stands for: a random teacher materialised into `random_dir`, a folder, or the
    local snapshot of a hub id (downloaded if missing and the hub is reachable)."""
    if name in RANDOM_TEACHERS:
        if random_dir is None:
            raise TeacherError(f"random teacher {name!r} needs a folder to be written to")
        return _random_teacher(name, os.path.join(random_dir, name), seed)
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise TeacherError(f"teacher {name} is a file; give the folder that holds config.json and the weights")
    if not looks_like_hub_id(name):
        raise TeacherError(f"teacher folder {name} does not exist")
    return snapshot_folder(name, allow_pickle)


def load_config_dict(folder: str) -> dict:
    """The teacher's config.json as a dict; a missing or malformed file is one error line."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise TeacherError(f"teacher folder {folder} has no config.json")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TeacherError(f"teacher config {path} is not valid JSON: {_first_line(e)}") from e
    if not isinstance(cfg, dict):
        raise TeacherError(f"teacher config {path} is not a JSON object")
    return cfg


def load_tokenizer(folder: str):
    """The teacher's tokenizer from `folder`; a folder without tokenizer files is one error line, not a TypeError."""
    from transformers import AutoTokenizer

    vocab_files = [n for n in TOKENIZER_FILES if n == "tokenizer.json" or n.endswith((".txt", ".model"))]
    if not any(os.path.exists(os.path.join(folder, n)) for n in vocab_files):
        raise TeacherError(
            f"teacher folder {folder} has no tokenizer (tokenizer.json, vocab.txt, vocab.json + merges.txt or "
            "spiece.model); copy the tokenizer files of the model it was trained from into it"
        )
    try:
        with _quiet():
            return AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise TeacherError(f"cannot load the tokenizer in {folder}: {_first_line(e)}") from e


def _load_hf_params(folder: str, fmt: str, family: str, has_head: bool) -> dict:
    """The weights through transformers' Flax class (PyTorch names converted by transformers' own mapping)."""
    from transformers import FlaxAutoModel, FlaxAutoModelForMaskedLM

    # Without a head the base class keeps the pooler; with one, the pooler is read from the file.
    model_cls = FlaxAutoModelForMaskedLM if has_head else FlaxAutoModel
    try:
        with _quiet():
            if fmt == "msgpack":
                # Flax weights: skip transformers' random init before loading (seconds per load; from_pt needs it).
                _, hf_params = model_cls.from_pretrained(folder, _do_init=False)
                return hf_params
            return model_cls.from_pretrained(folder, from_pt=True).params
    except Exception as e:
        raise TeacherError(f"cannot load teacher weights from {folder}: {_first_line(e)}") from e


def load_teacher(name: str, *, allow_pickle: bool = False, random_dir: str | None = None, seed: int = 0) -> Teacher:
    """Load a teacher by hub id, local folder, or built-in random name; return it in kdjax's layout."""
    folder = resolve_source(name, random_dir, seed, allow_pickle)
    cfg = load_config_dict(folder)
    spec = spec_from_hf_config(cfg)
    tokenizer = load_tokenizer(folder)  # before the weights: a missing tokenizer fails in a second
    fmt, path = _weight_file(folder)
    if fmt == "pickle" and not allow_pickle:
        raise pickle_refused(name if not os.path.isdir(os.path.expanduser(name)) else f"folder {folder}")
    keys, pooler = _inspect_weights(path, fmt, spec.family)
    has_head = _has_head(spec.family, keys)
    hf_params = _load_hf_params(folder, fmt, spec.family, has_head)
    try:
        params = convert_hf_params(spec.family, hf_params)
    except (KeyError, TypeError) as e:
        missing = _first_line(e)
        raise TeacherError(f"teacher weights in {folder} lack parameter {missing} of a {spec.family} model") from e
    if pooler is not None:
        params["pooler"] = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), pooler)
    source = folder if name in RANDOM_TEACHERS or os.path.isdir(os.path.expanduser(name)) else name
    return Teacher(spec=spec, params=params, tokenizer=tokenizer, hf_config=cfg, source=source, folder=folder)
