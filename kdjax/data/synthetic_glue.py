"""Synthetic GLUE folders in the standard TSV layouts of all nine tasks (tests and the `:tiny` config).

STS-B scores grow with word overlap and pair labels alternate, so a model can learn something; nothing here is
meant to measure quality.
"""

from __future__ import annotations

import os

import numpy as np

from kdjax.data.synthetic import vocabulary

HEADERS = {
    "SST-2": ["sentence", "label"],
    "MRPC": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "STS-B": [
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
    ],
    "QQP": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "QNLI": ["index", "question", "sentence", "label"],
    "RTE": ["index", "sentence1", "sentence2", "label"],
    "WNLI": ["index", "sentence1", "sentence2", "label"],
}
MNLI_TRAIN = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "gold_label",
]
MNLI_DEV = MNLI_TRAIN[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]


def _row(folder: str, i: int, a: str, b: str, rng, header=None) -> list[str]:
    """One data row of `folder`'s layout; STS-B's score is high when the two sentences share words."""
    if folder == "CoLA":
        return ["gj04", str(i % 2), "", a]
    if folder == "SST-2":
        return [a, str(i % 2)]
    if folder == "MRPC":
        return [str(i % 2), str(1000 + i), str(2000 + i), a, b]
    if folder == "STS-B":
        score = 5.0 * len(set(a.split()) & set(b.split())) / max(1, len(set(a.split())))
        return [str(i), "main-news", "headlines", "2015", f"{i:04d}", "none", "none", a, b, f"{score:.3f}"]
    if folder == "QQP":
        return [str(i), str(2 * i), str(2 * i + 1), a + " ?", b + " ?", str(i % 2)]
    if folder == "QNLI":
        return [str(i), a + " ?", b, ("entailment", "not_entailment")[i % 2]]
    if folder == "RTE":
        return [str(i), a, b, ("entailment", "not_entailment")[i % 2]]
    if folder == "WNLI":
        return [str(i), a, b, str(i % 2)]
    label = ("entailment", "neutral", "contradiction")[i % 3]
    row = [str(i), "1", f"{i}e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", a, b, label]
    return row + ([label] * 4 if header is MNLI_DEV else []) + [label]


def write_glue_dir(root: str, n_train: int = 24, n_dev: int = 12, seed: int = 0) -> str:
    """A GLUE folder with every task in its standard layout (CoLA header-less, MNLI matched/mismatched dev)."""
    rng = np.random.default_rng(seed)
    words = vocabulary()

    def sentence() -> str:
        return " ".join(rng.choice(words, rng.integers(3, 10)))

    layouts: dict[str, dict[str, list[str] | None]] = {f: {"train.tsv": h, "dev.tsv": h} for f, h in HEADERS.items()}
    layouts["CoLA"] = {"train.tsv": None, "dev.tsv": None}
    layouts["MNLI"] = {"train.tsv": MNLI_TRAIN, "dev_matched.tsv": MNLI_DEV, "dev_mismatched.tsv": MNLI_DEV}
    for folder, files in layouts.items():
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for name, header in files.items():
            n = n_train if name == "train.tsv" else n_dev
            lines = ["\t".join(header)] if header else []
            for i in range(n):
                a = sentence()
                b = a if i % 3 == 0 else sentence()
                lines.append("\t".join(_row(folder, i, a, b, rng, header)))
            with open(os.path.join(root, folder, name), "w") as f:
                f.write("\n".join(lines) + "\n")
    return root
