"""Load a pretrained HF Flax teacher (hub id or local folder) and convert it to kdjax's encoder layout.

This is the only module that imports transformers' model classes. The teacher then runs through
`kdjax.models.Encoder` with its converted weights, so a distillation step computes no vocabulary logits unless a
logit loss is on, and uses fused attention.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.config import RANDOM_TEACHERS
from kdjax.errors import KdjaxError
from kdjax.spec import ACTIVATIONS, ArchSpec

# Quiet transformers' Flax deprecation banner and hub chatter; real errors still raise.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
warnings.filterwarnings("ignore", message=".*TensorFlow and JAX classes are deprecated.*")

_ACT_ALIASES = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "relu": "relu"}
_ACT_ALIASES |= {"silu": "silu", "swish": "silu"}
# Prefix of the base model inside the masked-LM class, and the MLM head's key.
_PREFIX = {"bert": ("bert", "cls"), "roberta": ("roberta", "lm_head"), "albert": ("albert", "predictions")}


class TeacherError(KdjaxError, ValueError):
    """The teacher cannot be loaded (unknown id, missing files, unsupported architecture)."""


@dataclasses.dataclass
class Teacher:
    """A frozen teacher: spec, converted params, tokenizer, and the HF config it came from."""

    spec: ArchSpec
    # {'encoder': Encoder params, 'mlm_head': head params or absent, 'pooler': pooler params or absent}
    params: dict
    tokenizer: Any
    hf_config: dict
    source: str

    @property
    def has_mlm_head(self) -> bool:
        return "mlm_head" in self.params


def spec_from_hf_config(cfg: dict) -> ArchSpec:
    """Map a transformers config dict (BERT, RoBERTa, ALBERT and look-alikes) to an ArchSpec."""
    mtype = cfg.get("model_type", "bert")
    family = mtype if mtype in _PREFIX else None
    if family is None:
        raise TeacherError(f"unsupported teacher model_type {mtype!r}; kdjax supports bert, roberta and albert")
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
    if "pooler" in base:
        out["pooler"] = base["pooler"]["dense"]
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


def _weight_keys(folder: str) -> tuple[str, set[str]]:
    """(format, parameter names) of the weights in a local folder; format in msgpack|safetensors|pickle."""
    if os.path.exists(os.path.join(folder, "flax_model.msgpack")):
        from flax.serialization import msgpack_restore
        from flax.traverse_util import flatten_dict

        with open(os.path.join(folder, "flax_model.msgpack"), "rb") as f:
            tree = msgpack_restore(f.read())
        return "msgpack", {"/".join(k) for k in flatten_dict(tree)}
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        from safetensors import safe_open

        with safe_open(os.path.join(folder, "model.safetensors"), "np") as f:
            return "safetensors", set(f.keys())
    if os.path.exists(os.path.join(folder, "pytorch_model.bin")):
        return "pickle", set()
    raise TeacherError(f"teacher folder {folder} has no flax_model.msgpack, model.safetensors or pytorch_model.bin")


def _read_pooler(folder: str, fmt: str, family: str) -> dict | None:
    """The pretrained pooler (dense + tanh on [CLS]) straight from the weight file, for GLUE fine-tuning."""
    base = _PREFIX[family][0]
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(os.path.join(folder, "model.safetensors"), "np") as f:
            for prefix in (f"{base}.pooler.dense", "pooler.dense"):
                if f"{prefix}.weight" in f:
                    return {"kernel": f.get_tensor(f"{prefix}.weight").T, "bias": f.get_tensor(f"{prefix}.bias")}
    elif fmt == "msgpack":
        from flax.serialization import msgpack_restore

        with open(os.path.join(folder, "flax_model.msgpack"), "rb") as f:
            tree = msgpack_restore(f.read())
        tree = tree.get(base, tree)
        if "pooler" in tree:
            return dict(tree["pooler"]["dense"])
    return None


def _has_head(family: str, fmt: str, keys: set[str]) -> bool:
    head = {"bert": "cls.predictions", "roberta": "lm_head", "albert": "predictions"}[family]
    sep_head = head.replace(".", "/")
    if fmt == "pickle":
        return True  # cannot tell without unpickling; transformers warns if it is missing
    return any(k.startswith(head) or k.startswith(sep_head) for k in keys)


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
    model = FlaxBertForMaskedLM(cfg, seed=seed)
    model.save_pretrained(save_dir)
    tok.save_pretrained(save_dir)
    return save_dir


def resolve_source(name: str, random_dir: str | None = None, seed: int = 0) -> str:
    """The local folder or hub id that `name` stands for (random teachers are materialised into `random_dir`)."""
    if name in RANDOM_TEACHERS:
        if random_dir is None:
            raise TeacherError(f"random teacher {name!r} needs a folder to be written to")
        return _random_teacher(name, os.path.join(random_dir, name), seed)
    return os.path.expanduser(name)


def load_config_dict(source: str) -> dict:
    """The teacher's config.json as a dict (local folder or hub)."""
    if os.path.isdir(source):
        path = os.path.join(source, "config.json")
        if not os.path.exists(path):
            raise TeacherError(f"teacher folder {source} has no config.json")
        with open(path) as f:
            return json.load(f)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source).to_dict()
    except Exception as e:
        if os.path.sep in source or source.startswith("."):
            raise TeacherError(f"teacher folder {source} does not exist") from e
        raise TeacherError(f"cannot load teacher {source!r}: not a local folder and not reachable on the hub") from e


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as e:
        raise TeacherError(f"cannot load the tokenizer of {source!r}: {e}") from e


def load_teacher(name: str, *, allow_pickle: bool = False, random_dir: str | None = None, seed: int = 0) -> Teacher:
    """Load a teacher by hub id, local folder, or built-in random name; return it in kdjax's layout."""
    import transformers
    from transformers import FlaxAutoModel, FlaxAutoModelForMaskedLM

    transformers.logging.set_verbosity_error()
    source = resolve_source(name, random_dir, seed)
    cfg = load_config_dict(source)
    spec = spec_from_hf_config(cfg)
    kwargs: dict[str, Any] = {}
    has_head, pooler, fmt = True, None, None
    if os.path.isdir(source):
        fmt, keys = _weight_keys(source)
        if fmt == "pickle" and not allow_pickle:
            raise TeacherError(
                f"teacher folder {source} only has pickle weights (pytorch_model.bin); "
                "convert them to safetensors or set --config.teacher.allow_pickle=true"
            )
        kwargs["from_pt"] = fmt != "msgpack"
        has_head = _has_head(spec.family, fmt, keys)
        pooler = _read_pooler(source, fmt, spec.family) if has_head else None
    # Without a head the base class keeps the pooler; with one, the pooler is read from the file above.
    model_cls = FlaxAutoModelForMaskedLM if has_head else FlaxAutoModel
    try:
        if kwargs.get("from_pt") is False:
            # Flax weights: skip transformers' random init before loading (seconds per load; from_pt needs it).
            _, hf_params = model_cls.from_pretrained(source, _do_init=False)
        else:
            hf_params = model_cls.from_pretrained(source, **kwargs).params
    except Exception as e:
        if os.path.isdir(source):
            raise TeacherError(f"cannot load teacher weights from {source}: {e}") from e
        try:  # hub checkpoints without Flax weights
            hf_params = model_cls.from_pretrained(source, from_pt=True).params
        except Exception as e2:
            raise TeacherError(f"cannot load teacher {source!r}: {e2}") from e2
    params = convert_hf_params(spec.family, hf_params)
    if pooler is not None:
        params["pooler"] = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), pooler)
    return Teacher(spec=spec, params=params, tokenizer=load_tokenizer(source), hf_config=cfg, source=source)
