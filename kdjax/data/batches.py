"""Deterministic, random-access MLM batches over packed rows.

`Batches.get(step)` depends only on (seed, step): the epoch's row order comes from `np.random.default_rng([seed,
epoch])` and the masking from `default_rng([seed, epoch, step])`. A resumed run therefore sees exactly the batches an
uninterrupted one would, and the only data position to checkpoint is the step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kdjax.data.corpus import DataError


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    mask_id: int
    pad_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float = 0.15

    @classmethod
    def from_tokenizer(cls, tokenizer, probability: float = 0.15) -> MaskingSpec:
        return cls(
            mask_id=tokenizer.mask_token_id,
            pad_id=tokenizer.pad_token_id,
            vocab_size=len(tokenizer),
            special_ids=tuple(sorted(set(tokenizer.all_special_ids))),
            probability=probability,
        )


def mask_tokens(rows: np.ndarray, m: MaskingSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """BERT masking: pick `probability` of the non-special tokens; 80% -> [MASK], 10% -> random, 10% kept."""
    special = np.isin(rows, np.asarray(m.special_ids))
    picked = (rng.random(rows.shape) < m.probability) & ~special
    roll = rng.random(rows.shape)
    inputs = rows.copy()
    inputs[picked & (roll < 0.8)] = m.mask_id
    rand = picked & (roll >= 0.8) & (roll < 0.9)
    inputs[rand] = rng.integers(0, m.vocab_size, size=int(rand.sum()))
    return {
        "input_ids": inputs.astype(np.int32),
        "attention_mask": (rows != m.pad_id).astype(np.int32),
        "mlm_mask": picked.astype(np.int32),
        "labels": rows.astype(np.int32),
    }


class Batches:
    """Epochs of shuffled, masked batches of `global_batch` rows (the last partial batch is dropped)."""

    def __init__(self, rows: np.ndarray, global_batch: int, masking: MaskingSpec, seed: int):
        if len(rows) < global_batch:
            raise DataError(
                f"the corpus has {len(rows)} packed rows, fewer than one batch of {global_batch}; "
                "use more text or a smaller batch size"
            )
        self.rows, self.global_batch, self.masking, self.seed = rows, global_batch, masking, seed
        self.steps_per_epoch = len(rows) // global_batch
        self._order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def _order_for(self, epoch: int) -> np.ndarray:
        # One (epoch, permutation) pair, replaced whole: threads reading batches of different epochs at once (the
        # prefetcher, a compile-ahead thread) each get their own epoch's order.
        order = self._order
        if order[0] != epoch:
            order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.rows)))
            self._order = order
        return order[1]

    def get(self, step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, self.steps_per_epoch)
        idx = self._order_for(epoch)[i * self.global_batch : (i + 1) * self.global_batch]
        return mask_tokens(self.rows[idx], self.masking, np.random.default_rng([self.seed, epoch, i]))

    def num_tokens(self, batch: dict[str, np.ndarray]) -> int:
        """Corpus (non-pad) tokens in a batch, the unit of reported throughput."""
        return int(batch["attention_mask"].sum())
