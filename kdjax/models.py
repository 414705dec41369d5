"""Flax linen BERT-family encoder built from an `ArchSpec`, used for students *and* (with converted weights) teachers.

Parameter names mirror transformers' Flax BERT (`embeddings/...`, `encoder/layer/<i>/attention/self/query/kernel`),
so BERT and RoBERTa weights import unchanged, ALBERT through a small rename (see `kdjax.teacher`), and the export to
PyTorch names is a fixed table (see `kdjax.export`). Running the teacher through this module is what lets kdjax
skip vocabulary logits unless a logit loss reads them, and use fused attention.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.spec import ArchSpec

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

Dtype = Any

# Standard deviation of every kernel and embedding at random init (BERT's initializer_range); biases start at 0,
# LayerNorm scales at 1. `random_params` relies on this being the whole rule.
INIT_STD = 0.02
# Name of the scanned layer stack under `encoder/layer` (`Encoder(scan_layers=True)`): every leaf below it has a
# leading layer axis. `stack_layers` / `unstack_layers` convert to and from the per-layer `encoder/layer/<i>` layout.
STACKED = "stacked"


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.normal(INIT_STD), name=name)


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
        s, init = self.spec, nn.initializers.normal(INIT_STD)
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
    """`encoder/layer/<i>`; ALBERT-style sharing reuses layer '0' for every depth.

    With `scan_layers`, one `Layer` is scanned over a leading layer axis (`encoder/layer/stacked/...`): the program
    holds one layer's code whatever the depth, so compiling it does not grow with depth (kdjax.steps). The per-layer
    hidden states and q/k/v come out of the scan stacked and are split back into the same tuples.
    """

    spec: ArchSpec
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    scan_layers: bool = False

    @nn.compact
    def __call__(self, x, mask, num_layers: int, deterministic: bool = True, return_qkv: bool = False):
        s = self.spec
        if self.scan_layers and not s.shared_layers:
            if num_layers != s.num_layers:
                raise ValueError(f"a scanned stack runs all {s.num_layers} layers, not {num_layers}")
            scan = nn.scan(
                _ScanStep,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,),
                length=num_layers,
            )
            body = scan(s, self.dtype, self.dropout_rate, deterministic, return_qkv, name=STACKED)
            _, (ys, qkv) = body(x, mask)
            per_layer_qkv = tuple(tuple(t[i] for t in qkv) for i in range(num_layers)) if return_qkv else ()
            return (x, *(ys[i] for i in range(num_layers))), per_layer_qkv
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


class _ScanStep(nn.Module):
    """One `Layer` as a scan body: carry = hidden state; per-layer outputs = (hidden state, q/k/v or ())."""

    spec: ArchSpec
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    deterministic: bool = True
    return_qkv: bool = False

    @nn.compact
    def __call__(self, x, mask):
        # Same submodule names as `Layer` ('attention', 'intermediate', 'output'), one level down.
        y, qkv = Layer(self.spec, self.dtype, self.dropout_rate, name="layer")(x, mask, self.deterministic)
        return y, (y, qkv if self.return_qkv else ())


def stack_layers(params: dict) -> dict:
    """Encoder params (`encoder/layer/<i>/...`) in the scanned layout (`encoder/layer/stacked/layer/...` with a
    leading layer axis); numpy leaves stay numpy (no device work), jax arrays are stacked with jax (inside jit)."""
    layer = params["encoder"]["layer"]
    if STACKED in layer:
        return params
    per_layer = [layer[str(i)] for i in range(len(layer))]
    stacked = jax.tree.map(lambda *xs: (np.stack if isinstance(xs[0], np.ndarray) else jnp.stack)(xs), *per_layer)
    return {**params, "encoder": {**params["encoder"], "layer": {STACKED: {"layer": stacked}}}}


def unstack_layers(params: dict) -> dict:
    """The inverse of `stack_layers`: scanned layout -> `encoder/layer/<i>/...` (unchanged if already per-layer)."""
    layer = params["encoder"]["layer"]
    if STACKED not in layer:
        return params
    stacked = layer[STACKED]["layer"]
    depth = jax.tree.leaves(stacked)[0].shape[0]
    per_layer = {str(i): jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(depth)}
    return {**params, "encoder": {**params["encoder"], "layer": per_layer}}


def host_rng(rng: jax.Array) -> np.random.Generator:
    """A numpy Generator seeded by a jax PRNG key's bits (a raw uint32 key or a typed one): host draws that are a pure
    function of the key, with no compiled program (reading a key's bits runs nothing on the device)."""
    bits = np.asarray(jax.random.key_data(rng), np.uint32).ravel()
    return np.random.default_rng(np.random.SeedSequence([int(b) for b in bits]))


@functools.lru_cache(maxsize=64)
def _param_shapes(spec: ArchSpec, with_mlm_head: bool) -> tuple[list, Any]:
    """An Encoder's param leaves (path, ShapeDtypeStruct) and tree structure, traced once per shape (no compile)."""
    ids = jnp.zeros((1, 8), jnp.int32)
    model = Encoder(spec, with_mlm_head=with_mlm_head)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids))["params"]
    return jax.tree_util.tree_flatten_with_path(shapes)


def random_params(spec: ArchSpec, rng: jax.Array, *, with_mlm_head: bool = False, scan_layers: bool = False) -> dict:
    """An Encoder's random init as numpy arrays, drawn on the host as its modules draw it -- normal(INIT_STD)
    kernels and embeddings, zero biases, unit LayerNorm scales -- from a numpy Generator seeded by `rng`.

    Flax's `init` draws each leaf with its own threefry call, which XLA:CPU compiles separately (3-6 CPU-s per
    candidate shape, more than the student's train step); even one jax draw cut into the leaves is a program
    compiled per shape (~1-2.5 CPU-s). A host draw compiles nothing. The values differ from `Encoder.init`'s for the
    same key (the distribution is the same) and do not depend on `scan_layers`: they are drawn in the per-layer
    layout, then stacked. Call it outside `jax.jit` (it reads the key's bits).
    """
    gen = host_rng(rng)
    leaves, treedef = _param_shapes(spec, with_mlm_head)
    out = []
    for path, leaf in leaves:
        kind = _init_kind(path)
        if kind == "normal":
            x = gen.standard_normal(leaf.shape, dtype=np.float32)
            x *= np.float32(INIT_STD)
            out.append(x.astype(leaf.dtype, copy=False))
        else:
            out.append(np.full(leaf.shape, 1.0 if kind == "ones" else 0.0, leaf.dtype))
    params = jax.tree_util.tree_unflatten(treedef, out)
    return stack_layers(params) if scan_layers and not spec.shared_layers else params


def _init_kind(path) -> str:
    name = str(getattr(path[-1], "key", path[-1]))
    if name in ("kernel", "embedding"):
        return "normal"
    if name == "scale":
        return "ones"
    if name == "bias":
        return "zeros"
    raise ValueError(f"random_params: no init rule for parameter {jax.tree_util.keystr(path)}")


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
    # Params in the scanned layout (see LayerStack); same outputs, compile cost independent of depth.
    scan_layers: bool = False

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
        enc = _EncoderBody(s, self.dtype, self.dropout_rate, self.scan_layers, name="encoder")
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
    scan_layers: bool = False

    @nn.compact
    def __call__(self, x, mask, num_layers, deterministic, return_qkv):
        s = self.spec
        if s.embed_dim != s.hidden_size:
            x = _dense(s.hidden_size, self.dtype, "embedding_hidden_mapping_in")(x)
        return LayerStack(s, self.dtype, self.dropout_rate, self.scan_layers, name="layer")(
            x, mask, num_layers, deterministic, return_qkv
        )
