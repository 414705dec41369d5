"""Linear probes on a frozen teacher: how much of a GLUE single-sentence task's signal sits in [CLS], in the
pretrained pooler's output and in the mean-pooled last hidden state (docs/results.md, the CoLA verdict).

    PYTHONPATH=. python docs/pooling_probe.py TEACHER_DIR GLUE_DIR [TASK=cola] [N_TRAIN=3000]

Logistic regression (balanced classes, standardised features) on N_TRAIN seeded training sentences, scored on the full
dev set (MCC for CoLA, accuracy otherwise); also the per-dimension std over sentences and the mean pairwise cosine of
each feature. Needs scikit-learn.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from sklearn.linear_model import LogisticRegression

from kdjax import glue_data
from kdjax.metrics import accuracy, matthews_corrcoef
from kdjax.models import Encoder
from kdjax.teacher import load_teacher


def features(teacher, forward, texts: list[str]) -> dict[str, np.ndarray]:
    out: dict[str, list] = {"cls": [], "pooler": [], "mean": []}
    pooler = teacher.params["pooler"]
    for s in range(0, len(texts), 128):
        enc = teacher.tokenizer(
            texts[s : s + 128], padding="max_length", max_length=64, truncation=True, return_tensors="np"
        )
        h = np.asarray(forward(enc["input_ids"], enc["attention_mask"]))
        m = enc["attention_mask"][..., None]
        out["cls"].append(h[:, 0])
        out["mean"].append((h * m).sum(1) / m.sum(1))
        out["pooler"].append(np.tanh(h[:, 0] @ np.asarray(pooler["kernel"]) + np.asarray(pooler["bias"])))
    return {k: np.concatenate(v) for k, v in out.items()}


def main(teacher_dir: str, glue_dir: str, task_name: str = "cola", n_train: int = 3000) -> None:
    teacher = load_teacher(teacher_dir)
    encoder = Encoder(teacher.spec)
    forward = jax.jit(
        lambda ids, mask: encoder.apply({"params": teacher.params["encoder"]}, ids, mask)["hidden_states"][-1]
    )
    task = glue_data.load_task(task_name, glue_dir)
    idx = np.random.default_rng(0).permutation(len(task.train))[:n_train]
    train = features(teacher, forward, [task.train.texts[0][i] for i in idx])
    dev = features(teacher, forward, task.dev["dev"].texts[0])
    score = matthews_corrcoef if task_name == "cola" else accuracy
    for name, x in train.items():
        mu, sd = x.mean(0), x.std(0) + 1e-6
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit((x - mu) / sd, task.train.labels[idx])
        pred = clf.predict((dev[name] - mu) / sd)
        unit = x[:300] / np.linalg.norm(x[:300], axis=1, keepdims=True)
        print(
            f"{name:6s} dev {score.__name__} {score(pred, task.dev['dev'].labels):.3f}  "
            f"std over sentences {x.std(0).mean():.3f}  mean pairwise cosine {np.mean(unit @ unit.T):.3f}"
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], *(args[2:3] or ["cola"]), *([int(args[3])] if len(args) > 3 else []))
