"""Flax linen BERT-family encoder built from an `ArchSpec`, used for students *and* (with converted weights) teachers.

Parameter names mirror transformers' Flax BERT (`embeddings/...`, `encoder/layer/<i>/attention/self/query/kernel`),
so BERT and RoBERTa weights import unchanged, ALBERT through a small rename (see `kdjax.teacher`), and the export to
PyTorch names is a fixed table (see `kdjax.export`). Running the teacher through this module is what lets kdjax
skip vocabulary logits unless a logit loss reads them, and use fused attention.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.spec import ArchSpec

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

Dtype = Any


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(spec: ArchSpec, name: str) -> nn.LayerNorm:
    # Normalisation statistics in fp32 even under bf16 compute.
    return nn.LayerNorm(epsilon=spec.layer_norm_eps, dtype=jnp.float32, name=name)


def position_ids(spec: ArchSpec, input_ids: jax.Array) -> jax.Array:
    """BERT/ALBERT: 0..T-1. RoBERTa: padding_idx + 1 + index of each non-pad token, pads get padding_idx."""
    if spec.family == "roberta":
        mask = (input_ids != spec.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(mask, axis=1) * mask + spec.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)


class Embeddings(nn.Module):
    spec: ArchSpec
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool = True):
        s, init = self.spec, nn.initializers.normal(0.02)
        word = nn.Embed(s.vocab_size, s.embed_dim, embedding_init=init, name="word_embeddings")
        pos = nn.Embed(s.max_position_embeddings, s.embed_dim, embedding_init=init, name="position_embeddings")
        typ = nn.Embed(s.type_vocab_size, s.embed_dim, embedding_init=init, name="token_type_embeddings")
        x = word(input_ids) + pos(position_ids(s, input_ids)) + typ(token_type_ids)
        x = _layer_norm(s, "LayerNorm")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        return x.astype(self.dtype)


class SelfAttention(nn.Module):
    spec: ArchSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        s = self.spec
        shape = x.shape[:2] + (s.num_heads, s.head_dim)
        q = _dense(s.hidden_size, self.dtype, "query")(x).reshape(shape)
        k = _dense(s.hidden_size, self.dtype, "key")(x).reshape(shape)
        v = _dense(s.hidden_size, self.dtype, "value")(x).reshape(shape)
        # Fused attention: XLA picks cuDNN flash attention on GPU and a plain softmax(QK^T)V elsewhere.
        out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
        return out.reshape(x.shape[:2] + (s.hidden_size,)), (q, k, v)


class SelfOutput(nn.Module):
    """dense -> dropout -> LayerNorm(h + residual); HF's `attention/output` and `output` blocks."""

    spec: ArchSpec
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, h, residual, deterministic: bool = True):
        h = _dense(self.spec.hidden_size, self.dtype, "dense")(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return _layer_norm(self.spec, "LayerNorm")(h + residual).astype(self.dtype)


class Attention(nn.Module):
    spec: ArchSpec
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, mask, deterministic: bool = True):
        out, qkv = SelfAttention(self.spec, self.dtype, name="self")(x, mask)
        out = SelfOutput(self.spec, self.dtype, self.dropout_rate, name="output")(out, x, deterministic)
        return out, qkv


class Intermediate(nn.Module):
    spec: ArchSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return ACTIVATIONS[self.spec.activation](_dense(self.spec.ffn_size, self.dtype, "dense")(x))


class Layer(nn.Module):
    """Post-LN transformer layer: attention/{self,output}, intermediate, output (transformers' names)."""

    spec: ArchSpec
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, mask, deterministic: bool = True):
        x, qkv = Attention(self.spec, self.dtype, self.dropout_rate, name="attention")(x, mask, deterministic)
        h = Intermediate(self.spec, self.dtype, name="intermediate")(x)
        x = SelfOutput(self.spec, self.dtype, self.dropout_rate, name="output")(h, x, deterministic)
        return x, qkv


class LayerStack(nn.Module):
    """`encoder/layer/<i>`; ALBERT-style sharing reuses layer '0' for every depth."""

    spec: ArchSpec
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, mask, num_layers: int, deterministic: bool = True, return_qkv: bool = False):
        s = self.spec
        if s.shared_layers:
            shared = Layer(s, self.dtype, self.dropout_rate, name="0")
            layers = [shared] * num_layers
        else:
            layers = [Layer(s, self.dtype, self.dropout_rate, name=str(i)) for i in range(num_layers)]
        hidden, qkvs = [x], []
        for layer in layers:
            x, qkv = layer(x, mask, deterministic)
            hidden.append(x)
            if return_qkv:
                qkvs.append(qkv)
        return tuple(hidden), tuple(qkvs)


class MLMHead(nn.Module):
    """transform (dense + act + LayerNorm) then the tied word-embedding decoder plus a bias."""

    spec: ArchSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, embedding):
        s = self.spec
        x = ACTIVATIONS[s.activation](_dense(s.embed_dim, self.dtype, "dense")(x))
        x = _layer_norm(s, "LayerNorm")(x).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (s.vocab_size,))
        return (x @ embedding.T.astype(self.dtype)).astype(jnp.float32) + bias


class Encoder(nn.Module):
    """BERT-family encoder.

    Returns a dict with `hidden_states` (embedding output + one entry per computed layer), `qkv` (per layer
    (q, k, v) of shape [B, T, heads, head_dim], only with `return_qkv`) and `logits` (only with `with_mlm_head`).
    `num_layers` < spec.num_layers runs only the first `num_layers` layers (distillation runs every teacher layer: the
    Uniform+Last mapping and the attention-relation loss both read the last one).
    """

    spec: ArchSpec
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    with_mlm_head: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        *,
        num_layers: int | None = None,
        deterministic: bool = True,
        return_qkv: bool = False,
    ) -> dict:
        s = self.spec
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = Embeddings(s, self.dtype, self.dropout_rate, name="embeddings")(input_ids, token_type_ids, deterministic)
        enc = _EncoderBody(s, self.dtype, self.dropout_rate, name="encoder")
        hidden, qkv = enc(x, attention_mask.astype(bool), num_layers or s.num_layers, deterministic, return_qkv)
        out = {"hidden_states": hidden}
        if return_qkv:
            out["qkv"] = qkv
        if self.with_mlm_head:
            emb = self.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
            out["logits"] = MLMHead(s, self.dtype, name="mlm_head")(hidden[-1], emb)
        return out


class _EncoderBody(nn.Module):
    spec: ArchSpec
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, mask, num_layers, deterministic, return_qkv):
        s = self.spec
        if s.embed_dim != s.hidden_size:
            x = _dense(s.hidden_size, self.dtype, "embedding_hidden_mapping_in")(x)
        return LayerStack(s, self.dtype, self.dropout_rate, name="layer")(
            x, mask, num_layers, deterministic, return_qkv
        )


class SequenceClassifier(nn.Module):
    """Encoder + BERT pooler (dense + tanh on the first token) + dropout + linear head, for GLUE fine-tuning.

    `num_labels` == 1 is regression (STS-B). `return_encoder` also returns the encoder's outputs (task distillation
    matches hidden states and attention relations).
    """

    spec: ArchSpec
    num_labels: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        *,
        deterministic: bool = True,
        return_encoder: bool = False,
        return_qkv: bool = False,
    ):
        out = Encoder(self.spec, self.dtype, self.dropout_rate, name="bert")(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, return_qkv=return_qkv
        )
        pooled = jnp.tanh(_dense(self.spec.hidden_size, self.dtype, "pooler")(out["hidden_states"][-1][:, 0]))
        pooled = nn.Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
        logits = _dense(self.num_labels, jnp.float32, "classifier")(pooled).astype(jnp.float32)
        return (logits, out) if return_encoder else logits
