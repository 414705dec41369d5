"""Tiny random teachers laid out file for file like the hub repos of `configs/*_nas.py`, as folders and hub caches.

Each fixture is built with transformers' PyTorch classes and `save_pretrained`, then trimmed and renamed to the files
and parameter names the real repository carries (looked up on the hub, main branch):

- `bert-base-uncased`: config.json (architectures BertForMaskedLM), flax_model.msgpack, model.safetensors and
  pytorch_model.bin of `BertForPreTraining` (pooler, cls.predictions, cls.seq_relationship; LayerNorm parameters
  still named `gamma`/`beta`, no `cls.predictions.decoder.bias`), tokenizer.json, tokenizer_config.json, vocab.txt.
- `roberta-base`: config.json, dict.txt, flax_model.msgpack, merges.txt, model.safetensors, pytorch_model.bin of
  `RobertaForMaskedLM` (no pooler), tokenizer.json, vocab.json (byte-level BPE; pad id 1, positions offset by 2).
- `albert-base-v2`: config.json, flax_model.msgpack, model.safetensors, pytorch_model.bin of `AlbertForPreTraining`
  (pooler `albert.pooler.*`, factorised embeddings, one shared layer), spiece.model, tokenizer.json,
  tokenizer_config.json.
- `google/bert_uncased_L-{8,4}_H-{512,256}_A-*`: config.json (no `architectures`), flax_model.msgpack,
  pytorch_model.bin (`BertForPreTraining` names), vocab.txt and nothing else (no tokenizer files, no safetensors).

`formats` keeps a subset of the weight files, e.g. `("safetensors",)` for what a user's own `save_pretrained` or a
`huggingface-cli download --include '*.safetensors'` gives, or `("pickle",)` for the compact BERTs' first revisions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from kdjax.data.synthetic import lines, vocabulary

# Hub id -> family of the fixture built for it.
HUB_TEACHERS = {
    "bert-base-uncased": "bert",
    "roberta-base": "roberta",
    "albert-base-v2": "albert",
    "google/bert_uncased_L-8_H-512_A-8": "compact",
    "google/bert_uncased_L-4_H-512_A-8": "compact",
    "google/bert_uncased_L-4_H-256_A-4": "compact",
}
# The weight formats each real repository ships.
REPO_FORMATS = {
    "bert": ("msgpack", "safetensors", "pickle"),
    "roberta": ("msgpack", "safetensors", "pickle"),
    "albert": ("msgpack", "safetensors", "pickle"),
    "compact": ("msgpack", "pickle"),
}
SIZES = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
FAKE_REVISION = "0123456789abcdef0123456789abcdef01234567"


def _corpus_file(tmp: str) -> str:
    path = os.path.join(tmp, "corpus.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines(300)) + "\n")
    return path


def _wordpiece(out: str) -> int:
    """BERT's uncased WordPiece: a vocab.txt of [PAD] [UNK] [CLS] [SEP] [MASK], words and `##` pieces."""
    from transformers import BertTokenizerFast

    words = vocabulary()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *(f"##{w[-2:]}" for w in words[:8])]
    vocab = list(dict.fromkeys(vocab))
    with open(os.path.join(out, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=os.path.join(out, "vocab.txt"), do_lower_case=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        shutil.copy(os.path.join(tmp, "tokenizer.json"), out)
    return len(vocab)


def _byte_bpe(out: str) -> int:
    """RoBERTa's byte-level BPE (vocab.json + merges.txt) trained on the synthetic text; <s>=0 <pad>=1 </s>=2."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    with tempfile.TemporaryDirectory() as tmp:
        bpe = ByteLevelBPETokenizer()
        bpe.train([_corpus_file(tmp)], vocab_size=400, min_frequency=1, special_tokens=specials)
        bpe.save_model(out)
        tok = RobertaTokenizerFast(os.path.join(out, "vocab.json"), os.path.join(out, "merges.txt"))
        tok.save_pretrained(tmp)
        shutil.copy(os.path.join(tmp, "tokenizer.json"), out)
    with open(os.path.join(out, "dict.txt"), "w") as f:  # fairseq's dictionary; transformers ignores it
        f.write("".join(f"{i} 1\n" for i in range(10)))
    return len(tok)


def _sentencepiece(out: str) -> int:
    """ALBERT's spiece.model: <pad>=0 <unk>=1 [CLS]=2 [SEP]=3 [MASK]=4, trained on the synthetic text."""
    import sentencepiece as spm
    from transformers import AlbertTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        spm.SentencePieceTrainer.train(
            input=_corpus_file(tmp),
            model_prefix=os.path.join(out, "spiece"),
            vocab_size=120,
            hard_vocab_limit=False,
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            control_symbols=["[CLS]", "[SEP]"],
            user_defined_symbols=["[MASK]"],
            minloglevel=2,
        )
        os.remove(os.path.join(out, "spiece.vocab"))
        tok = AlbertTokenizerFast(vocab_file=os.path.join(out, "spiece.model"))
        tok.save_pretrained(tmp)
        shutil.copy(os.path.join(tmp, "tokenizer.json"), out)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 512}, f)
    return len(tok)


def _perturb(model, seed: int) -> None:
    """Random non-trivial values everywhere (LayerNorm scales and biases too), so a mis-mapped name shows."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _state_dict(model) -> dict[str, np.ndarray]:
    """What `save_pretrained(safe_serialization=True)` writes: tied copies dropped."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        from safetensors.numpy import load_file

        return load_file(os.path.join(tmp, "model.safetensors"))


def _write_weights(out: str, state: dict[str, np.ndarray], flax_cls, formats: tuple[str, ...]) -> None:
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory() as tmp:
        if "msgpack" in formats:  # converted from the PyTorch weights, as the hub's "upload flax model" commits were
            shutil.copy(os.path.join(out, "config.json"), tmp)
            save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            flax_cls.from_pretrained(tmp, from_pt=True).save_pretrained(tmp)
            shutil.copy(os.path.join(tmp, "flax_model.msgpack"), out)
    if "safetensors" in formats:
        save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    if "pickle" in formats:
        import torch

        torch.save({k: torch.from_numpy(v.copy()) for k, v in state.items()}, os.path.join(out, "pytorch_model.bin"))


def build(hub_id: str, out: str, formats: tuple[str, ...] | None = None, seed: int = 0):
    """Write the fixture for `hub_id` into `out`; returns the PyTorch model the weights came from (eval mode)."""
    import torch
    import transformers as tf

    family = HUB_TEACHERS[hub_id]
    formats = REPO_FORMATS[family] if formats is None else tuple(f for f in formats if f in REPO_FORMATS[family])
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    if family in ("bert", "compact"):
        vocab_size = _wordpiece(out)
        cfg = tf.BertConfig(vocab_size=vocab_size, max_position_embeddings=64, **SIZES)
        model, flax_cls = tf.BertForPreTraining(cfg), tf.FlaxBertForPreTraining
    elif family == "roberta":
        vocab_size = _byte_bpe(out)
        cfg = tf.RobertaConfig(
            vocab_size=vocab_size, max_position_embeddings=64 + 2, type_vocab_size=1, pad_token_id=1, **SIZES
        )
        model, flax_cls = tf.RobertaForMaskedLM(cfg), tf.FlaxRobertaForMaskedLM
    else:
        vocab_size = _sentencepiece(out)
        cfg = tf.AlbertConfig(vocab_size=vocab_size, embedding_size=32, max_position_embeddings=64, **SIZES)
        model, flax_cls = tf.AlbertForPreTraining(cfg), tf.FlaxAlbertForPreTraining
    _perturb(model, seed)
    model.eval()
    if family == "compact":
        config = {k: v for k, v in cfg.to_dict().items() if k in _COMPACT_CONFIG_KEYS}
        for name in ("tokenizer.json",):
            os.remove(os.path.join(out, name))
    else:
        masked_lm = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM", "albert": "AlbertForMaskedLM"}
        config = {**cfg.to_dict(), "architectures": [masked_lm[family]]}
        config.pop("transformers_version", None)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if family == "bert":
        with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
            json.dump({"do_lower_case": True}, f)
    state = _state_dict(model)
    if family == "bert":
        state.pop("cls.predictions.decoder.bias", None)
        state = {_gamma_beta(k): v for k, v in state.items()}
    _write_weights(out, state, flax_cls, formats)
    return model


# The twelve keys of the compact BERTs' config.json.
_COMPACT_CONFIG_KEYS = {
    "hidden_size",
    "hidden_act",
    "initializer_range",
    "vocab_size",
    "hidden_dropout_prob",
    "num_attention_heads",
    "type_vocab_size",
    "max_position_embeddings",
    "num_hidden_layers",
    "intermediate_size",
    "attention_probs_dropout_prob",
    "model_type",
}


def _gamma_beta(name: str) -> str:
    """bert-base-uncased still uses TF-era LayerNorm names."""
    if ".LayerNorm." in name:
        return name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    return name


def as_hub_cache(hf_home: str, hub_id: str, folder: str) -> str:
    """Copy `folder` into `$HF_HOME/hub/models--ORG--NAME/snapshots/REV/` with `refs/main`; returns the snapshot."""
    repo = os.path.join(hf_home, "hub", "models--" + hub_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", FAKE_REVISION)
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(FAKE_REVISION)
    return snapshot
