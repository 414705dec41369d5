"""TinyBERT-style data augmentation for task distillation: copies of each example with some words replaced.

A position is eligible when it holds a whole word (an alphabetic vocabulary entry that is neither special nor a
WordPiece continuation, and not followed by one); each eligible word is replaced with probability `prob` by one of
`top_k` candidates. Candidates come from the teacher's masked-LM head when it has one (all chosen positions of a copy
are masked together and the head's top-k words there are the candidates; TinyBERT masks one word at a time, which
costs one teacher pass per word), otherwise from the nearest neighbours of the word's input embedding (cosine). Every
draw comes from `default_rng([seed, copy, example])`, so the augmented set is a pure function of the seed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import glue_data
from kdjax.models import Encoder
from kdjax.spec import ArchSpec

# candidates(rows, positions) -> one [len(positions[i]), top_k] array of token ids per row.
Candidates = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


def word_tokens(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(whole-word mask, continuation mask) over the vocabulary."""
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    word, cont = np.zeros(size, bool), np.zeros(size, bool)
    special = set(tokenizer.all_special_ids)
    for tok, i in vocab.items():
        cont[i] = tok.startswith("##")
        word[i] = i not in special and not cont[i] and tok.lstrip("\u0120\u2581").isalpha()
    return word, cont


def eligible(ids: np.ndarray, word: np.ndarray, cont: np.ndarray) -> np.ndarray:
    """Positions of `ids` holding a whole word (not followed by a continuation piece)."""
    ids = np.asarray(ids)
    ok = word[ids].copy()
    ok[:-1] &= ~cont[ids[1:]]
    return np.flatnonzero(ok)


def embedding_neighbours(embedding: np.ndarray, word: np.ndarray, top_k: int) -> Candidates:
    """Candidates = the `top_k` whole words whose input embeddings are closest (cosine) to the original's."""
    emb = np.asarray(embedding, np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-8)
    allowed = np.flatnonzero(word[: len(emb)])
    pool = emb[allowed]

    @functools.cache
    def near(token: int) -> np.ndarray:
        sim = pool @ emb[token]
        sim[allowed == token] = -np.inf
        top = np.argpartition(-sim, top_k)[:top_k]
        return allowed[top[np.argsort(-sim[top], kind="stable")]]

    def candidates(rows, positions):
        return [
            np.stack([near(int(r[p])) for p in pos]) if len(pos) else np.zeros((0, top_k), int)
            for r, pos in zip(rows, positions)
        ]

    return candidates


def mlm_candidates(spec: ArchSpec, params: dict, mask_id: int, word: np.ndarray, top_k: int, batch: int = 32):
    """Candidates = the teacher MLM head's `top_k` whole words at each masked position (original excluded)."""
    bias = jnp.where(jnp.asarray(word[: spec.vocab_size]), 0.0, -jnp.inf)
    model = Encoder(spec, with_mlm_head=True)
    variables = {"params": {**params["encoder"], "mlm_head": params["mlm_head"]}}

    @jax.jit
    def top(ids, mask, orig):
        logits = cast(dict, model.apply(variables, ids, mask))["logits"] + bias
        logits = jnp.where(jax.nn.one_hot(orig, logits.shape[-1], dtype=bool), -jnp.inf, logits)
        return jax.lax.top_k(logits, top_k)[1]

    def candidates(rows, positions):
        out = []
        for s in range(0, len(rows), batch):
            chunk, pos = rows[s : s + batch], positions[s : s + batch]
            length = glue_data.bucket_length(max(len(r) for r in chunk), 32, 1 << 30)
            ids = np.zeros((batch, length), np.int32)
            mask = np.zeros((batch, length), np.int32)
            for i, (r, p) in enumerate(zip(chunk, pos)):
                ids[i, : len(r)], mask[i, : len(r)] = r, 1
                ids[i, p] = mask_id
            padded = np.zeros((batch, length), np.int32)
            for i, r in enumerate(chunk):
                padded[i, : len(r)] = r
            best = np.asarray(top(ids, mask, padded))
            out += [best[i, p] for i, p in enumerate(pos)]
        return out

    return candidates


def augment(
    data: glue_data.Encoded,
    factor: int,
    prob: float,
    candidates: Candidates,
    *,
    seed: int,
    special_ids: set[int] | None = None,
    word: np.ndarray | None = None,
    cont: np.ndarray | None = None,
) -> glue_data.Encoded:
    """`factor` augmented copies of every example (copy-major order), labels copied from the originals.

    A bi-encoded pair's two sentences are augmented alike, each as a sentence of its own."""
    if data.pair_ids is not None:
        n, both = len(data), data.input_ids + data.pair_ids
        types = data.token_type_ids + [np.zeros_like(x) for x in data.pair_ids]
        flat = glue_data.Encoded(both, types, np.concatenate([data.labels, data.labels]))
        made = augment(flat, factor, prob, candidates, seed=seed, special_ids=special_ids, word=word, cont=cont)
        # Copy c of the flat list holds its n first sentences, then their n second ones.
        pick = [i for c in range(factor) for i in range(2 * c * n, (2 * c + 1) * n)]
        return glue_data.Encoded(
            [made.input_ids[i] for i in pick],
            [made.token_type_ids[i] for i in pick],
            np.tile(data.labels, factor),
            [made.input_ids[i + n] for i in pick],
        )
    if word is None or cont is None:
        vocab = max(int(max(r.max() for r in data.input_ids)) + 1, 1)
        word = np.ones(vocab, bool)
        word[list(special_ids or ())] = False
        cont = np.zeros(vocab, bool)
    rows, positions, types = [], [], []
    for copy in range(factor):
        for i, ids in enumerate(data.input_ids):
            rng = np.random.default_rng([seed, copy, i])
            pos = eligible(ids, word, cont)
            rows.append(ids)
            positions.append(pos[rng.random(len(pos)) < prob])
            types.append(data.token_type_ids[i])
    cands = candidates(rows, positions)
    out = []
    for k, (ids, pos, cand) in enumerate(zip(rows, positions, cands)):
        new = ids.copy()
        if len(pos):
            rng = np.random.default_rng([seed, factor + 1, k])
            new[pos] = cand[np.arange(len(pos)), rng.integers(0, cand.shape[1], len(pos))]
        out.append(new)
    return glue_data.Encoded(out, types, np.tile(data.labels, factor))


def for_teacher(teacher, cfg, seed: int) -> Callable[[glue_data.Encoded], glue_data.Encoded] | None:
    """The augmenter of a kdjax.task_distill.DistillConfig for this teacher: MLM head if any, else embeddings."""
    if cfg.augment_factor <= 0:
        return None
    word, cont = word_tokens(teacher.tokenizer)
    if teacher.has_mlm_head and teacher.tokenizer.mask_token_id is not None:
        source = "masked-LM head"
        cands = mlm_candidates(teacher.spec, teacher.params, teacher.tokenizer.mask_token_id, word, cfg.augment_top_k)
    else:
        source = "embedding neighbours"
        emb = np.asarray(teacher.params["encoder"]["embeddings"]["word_embeddings"]["embedding"])
        cands = embedding_neighbours(emb, word, cfg.augment_top_k)

    def run(train: glue_data.Encoded) -> glue_data.Encoded:
        print(f"glue: augmenting {len(train)} examples x{cfg.augment_factor} ({source})")
        return augment(train, cfg.augment_factor, cfg.augment_prob, cands, seed=seed, word=word, cont=cont)

    return run
