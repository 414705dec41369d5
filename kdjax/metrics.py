"""GLUE metrics in plain numpy (checked against scikit-learn / scipy in tests), and each task's metric set.

`task_scores(task, predictions, labels)` returns the task's metrics as fractions in [0, 1] (correlations in [-1, 1]);
`task_score(task, scores)` folds them into the single number the GLUE average uses (the mean of a task's metrics,
as on the GLUE leaderboard: MRPC/QQP = mean(F1, acc), STS-B = mean(Pearson, Spearman), MNLI = mean(m, mm)).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    pred, label = np.asarray(pred), np.asarray(label)
    return float(np.mean(pred == label)) if len(label) else 0.0


def f1(pred: np.ndarray, label: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of class `positive` (0 when there are no true positives, as sklearn with zero_division=0)."""
    pred, label = np.asarray(pred) == positive, np.asarray(label) == positive
    tp = float(np.sum(pred & label))
    denom = float(np.sum(pred) + np.sum(label))
    return 2.0 * tp / denom if denom else 0.0


def matthews_corrcoef(pred: np.ndarray, label: np.ndarray) -> float:
    """Multi-class MCC from the confusion matrix (0 when undefined, as sklearn)."""
    pred, label = np.asarray(pred), np.asarray(label)
    classes, idx = np.unique(np.concatenate([label, pred]), return_inverse=True)
    n = len(label)
    conf = np.zeros((len(classes), len(classes)), np.float64)
    np.add.at(conf, (idx[:n], idx[n:]), 1.0)
    t, p = conf.sum(axis=1), conf.sum(axis=0)
    c, s = np.trace(conf), conf.sum()
    cov_pp = s * s - np.dot(p, p)
    cov_tt = s * s - np.dot(t, t)
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return float((c * s - np.dot(t, p)) / np.sqrt(cov_tt * cov_pp))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))
    return float(np.dot(xc, yc) / denom) if denom > 0 else 0.0


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy.stats.rankdata 'average')."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start of each run of equal values, and the average rank of each run.
    starts = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    run_id = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [len(x)]]) - 1
    avg = (first + last) / 2.0 + 1.0
    ranks = np.empty(len(x), np.float64)
    ranks[order] = avg[run_id]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata(x), rankdata(y))


def _acc(p, y) -> dict:
    return {"accuracy": accuracy(p, y)}


def _f1_acc(p, y) -> dict:
    return {"f1": f1(p, y), "accuracy": accuracy(p, y)}


def _mcc(p, y) -> dict:
    return {"mcc": matthews_corrcoef(p, y)}


def _corr(p, y) -> dict:
    return {"pearson": pearson(p, y), "spearman": spearman(p, y)}


# Explicit registry: task -> metric function of (predictions, labels) on one dev split.
TASK_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], dict]] = {
    "cola": _mcc,
    "sst2": _acc,
    "mrpc": _f1_acc,
    "stsb": _corr,
    "qqp": _f1_acc,
    "mnli": _acc,
    "qnli": _acc,
    "rte": _acc,
    "wnli": _acc,
}


def task_scores(task: str, predictions: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics of every dev split of `task`; with several splits (MNLI) keys are prefixed: 'matched_accuracy'."""
    fn = TASK_METRICS[task]
    if len(predictions) == 1:
        (split,) = predictions
        return fn(predictions[split], labels[split])
    out: dict[str, float] = {}
    for split in predictions:
        out |= {f"{split}_{k}": v for k, v in fn(predictions[split], labels[split]).items()}
    return out


def task_score(scores: dict[str, float]) -> float:
    """The task's single GLUE number: the mean of its metrics."""
    return float(np.mean(list(scores.values())))
