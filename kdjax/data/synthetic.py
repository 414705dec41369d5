"""A deterministic synthetic English-like corpus for tests and smoke runs (no download, no shared data)."""

from __future__ import annotations

import numpy as np

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "a student", "the model", "our team", "the bird"]
_VERBS = ["sees", "likes", "reads", "writes", "finds", "makes", "helps", "moves", "learns", "builds"]
_ADJS = ["small", "large", "quick", "slow", "happy", "sad", "bright", "dark", "good", "bad", "new", "old"]
_NOUNS = ["book", "house", "tree", "river", "song", "story", "car", "garden", "city", "letter", "table", "idea"]
_ENDS = ["today", "again", "quietly", "at night", "in the morning", "with care", "every day", "for fun"]


def vocabulary() -> list[str]:
    """Every word the generator can emit, plus punctuation; used as the tiny teacher's vocabulary."""
    words = set()
    for group in (_SUBJECTS, _VERBS, _ADJS, _NOUNS, _ENDS):
        for phrase in group:
            words.update(phrase.split())
    return sorted(words) + [".", ",", "and", "but", "not", "very"]


def sentence(rng: np.random.Generator) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} the {rng.choice(_ADJS)} {rng.choice(_NOUNS)}"
    if rng.random() < 0.5:
        s += f" and the {rng.choice(_ADJS)} {rng.choice(_NOUNS)}"
    if rng.random() < 0.3:
        s += f" {rng.choice(_ENDS)}"
    return s + " ."


def lines(n: int, seed: int = 0) -> list[str]:
    """`n` generated sentences, identical for the same seed."""
    rng = np.random.default_rng(seed)
    return [sentence(rng) for _ in range(n)]
