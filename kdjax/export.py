"""Export a student as a standard transformers folder: config.json + model.safetensors (PyTorch names) + tokenizer.

The folder loads with `AutoModel.from_pretrained(dir)` (PyTorch) and `FlaxAutoModel.from_pretrained(dir,
from_pt=True)` without kdjax. BERT and RoBERTa students keep their family's model type; ALBERT students (no layer
sharing, no factorised embeddings) are exported as BERT models with the ALBERT vocabulary and tokenizer.
"""

from __future__ import annotations

import json
import os

import numpy as np
from flax.traverse_util import flatten_dict

from kdjax.spec import ArchSpec

_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu", "silu": "silu"}
_DROP_KEYS = ("embedding_size", "num_hidden_groups", "inner_group_num", "_name_or_path", "architectures", "auto_map")


def hf_config(spec: ArchSpec, teacher_config: dict, extra: dict | None = None) -> dict:
    """The student's config.json: the teacher's, with the student's sizes and a model type transformers knows."""
    cfg = {k: v for k, v in teacher_config.items() if k not in _DROP_KEYS}
    model_type = "roberta" if spec.family == "roberta" else "bert"
    cfg.update(
        model_type=model_type,
        architectures=["RobertaModel" if model_type == "roberta" else "BertModel"],
        num_hidden_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.ffn_size,
        hidden_act=_HF_ACT[spec.activation],
        vocab_size=spec.vocab_size,
        max_position_embeddings=spec.max_position_embeddings,
        type_vocab_size=spec.type_vocab_size,
        pad_token_id=spec.pad_token_id,
        layer_norm_eps=spec.layer_norm_eps,
    )
    # The version that wrote this file, not the one that wrote the teacher's (transformers reads it for warnings).
    cfg["transformers_version"] = _transformers_version()
    if extra:
        cfg["kdjax"] = extra
    return cfg


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def teacher_label(source: str) -> str:
    """How a published card names the teacher: the hub id as typed, or only the folder's name (a local path means
    nothing to readers and leaks the author's file layout)."""
    if not source:
        return ""
    path = os.path.expanduser(source)
    if os.path.isdir(path) or source.startswith((".", "~", os.sep)):
        return os.path.basename(os.path.normpath(path))
    return source


def torch_state_dict(encoder_params: dict, pooler: dict | None = None) -> dict[str, np.ndarray]:
    """kdjax encoder params -> PyTorch `BertModel`/`RobertaModel` names (Dense kernels transposed)."""
    out = {}
    for path, value in flatten_dict(encoder_params).items():
        *mod, leaf = path
        name = ".".join(mod)
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            out[f"{name}.weight"] = value.T
        elif leaf == "embedding" or leaf == "scale":
            out[f"{name}.weight"] = value
        elif leaf == "bias":
            out[f"{name}.bias"] = value
        else:
            raise ValueError(f"unexpected parameter {'/'.join(path)}")
    if pooler is not None:
        out["pooler.dense.weight"] = np.asarray(pooler["kernel"], np.float32).T
        out["pooler.dense.bias"] = np.asarray(pooler["bias"], np.float32)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _model_card(spec: ArchSpec, teacher: str, info: dict) -> str:
    origin = f" from `{teacher}`" if teacher else ""
    lines = [
        f"# kdjax student {spec.arch_id}",
        "",
        f"Distilled with kdjax (search, knowledge distillation and GLUE scoring of BERT-family students){origin}.",
        "",
        "| field | value |",
        "|---|---|",
        f"| layers / hidden / heads / FFN | {spec.num_layers} / {spec.hidden_size} / {spec.num_heads}"
        f" / {spec.ffn_size} |",
        f"| activation | {spec.activation} |",
        f"| parameters (encoder) | {spec.num_params:,} |",
    ]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += [
        "",
        "Load it with `transformers.AutoModel.from_pretrained(<this folder>)`; it has no pooler or task head.",
    ]
    return "\n".join(lines) + "\n"


def export_hf(
    directory: str,
    spec: ArchSpec,
    encoder_params: dict,
    teacher_config: dict,
    tokenizer,
    *,
    teacher_source: str = "",
    info: dict | None = None,
    pooler: dict | None = None,
) -> str:
    """Write the folder atomically (tmp + rename) and return its path."""
    from safetensors.numpy import save_file

    tmp = directory.rstrip("/") + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    info = {k: teacher_label(str(v)) if k == "teacher" else v for k, v in (info or {}).items()}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_config(spec, teacher_config, {"arch_id": spec.arch_id, **info}), f, indent=2)
    save_file(
        torch_state_dict(encoder_params, pooler), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"}
    )
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(_model_card(spec, teacher_label(teacher_source), info))
    if os.path.exists(directory):
        import shutil

        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory
