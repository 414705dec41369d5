"""Immutable, hashable description of a BERT-family encoder (teacher or student).

An `ArchSpec` is the unit the search proposes, the key of every cache (latency, mini-KD results, compiled steps) and
the static argument of every jitted step. It knows its parameter count and FLOPs, and round-trips through a short
string id such as ``6L-384H-12A-1536F-gelu``.
"""

from __future__ import annotations

import dataclasses
import re

from kdjax.errors import KdjaxError

FAMILIES = ("bert", "roberta", "albert")
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu")

_ID_RE = re.compile(r"^(\d+)L-(\d+)H-(\d+)A-(\d+)F(?:-([a-z_]+))?$")


class SpecError(KdjaxError, ValueError):
    """An architecture that cannot exist (e.g. heads not dividing hidden)."""


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """Shape of a post-LN BERT-style encoder.

    The searchable dimensions are `num_layers`, `hidden_size`, `num_heads`, `ffn_size` and `activation`; the rest is
    inherited from the teacher so that a student uses its teacher's tokenizer and embedding conventions.
    """

    num_layers: int
    hidden_size: int
    num_heads: int
    ffn_size: int
    activation: str = "gelu"
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    family: str = "bert"
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    # ALBERT teachers only: factorised embeddings (None means equal to hidden_size) and one shared layer.
    embedding_size: int | None = None
    shared_layers: bool = False

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "ffn_size", "vocab_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise SpecError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise SpecError(f"num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}")
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"activation={self.activation!r} is not one of {ACTIVATIONS}")
        if self.family not in FAMILIES:
            raise SpecError(f"family={self.family!r} is not one of {FAMILIES}")

    # ---- identity -------------------------------------------------------------------------------------------------
    @property
    def arch_id(self) -> str:
        """Short, filesystem-safe id of the searchable dimensions, e.g. ``6L-384H-12A-1536F-gelu``."""
        return f"{self.num_layers}L-{self.hidden_size}H-{self.num_heads}A-{self.ffn_size}F-{self.activation}"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def embed_dim(self) -> int:
        return self.embedding_size or self.hidden_size

    def student(self, **dims) -> ArchSpec:
        """A student of this (teacher) spec: same vocabulary and family conventions, no ALBERT sharing."""
        return dataclasses.replace(self, embedding_size=None, shared_layers=False, **dims)

    def searchable(self) -> dict:
        return {k: getattr(self, k) for k in ("num_layers", "hidden_size", "num_heads", "ffn_size", "activation")}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    # ---- size and cost --------------------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        """Encoder parameters (embeddings + layers; no pooler, no MLM head)."""
        e, h, f = self.embed_dim, self.hidden_size, self.ffn_size
        emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * e + 2 * e
        if e != h:
            emb += e * h + h
        layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
        return emb + layer * (1 if self.shared_layers else self.num_layers)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward matmul FLOPs per token at sequence length `seq_len` (2 FLOPs per multiply-add; no vocab logits)."""
        h, f = self.hidden_size, self.ffn_size
        per_layer = 2 * (4 * h * h + 2 * h * f) + 2 * 2 * seq_len * h
        proj = 2 * self.embed_dim * h if self.embed_dim != h else 0
        return self.num_layers * per_layer + proj


def is_arch_id(text: str) -> bool:
    """Whether `text` reads as an architecture id such as ``6L-384H-12A-1536F[-act]`` (not a folder or hub id)."""
    return _ID_RE.match(text.strip()) is not None


def parse_arch_id(text: str, base: ArchSpec) -> ArchSpec:
    """Parse ``6L-384H-12A-1536F[-act]`` into a student of `base` (the teacher spec)."""
    m = _ID_RE.match(text.strip())
    if not m:
        raise SpecError(f"cannot parse architecture {text!r}; expected e.g. '6L-384H-12A-1536F-gelu'")
    layers, hidden, heads, ffn, act = m.groups()
    return base.student(
        num_layers=int(layers),
        hidden_size=int(hidden),
        num_heads=int(heads),
        ffn_size=int(ffn),
        activation=act or base.activation,
    )
