"""kdjax.metrics against scikit-learn and scipy on fixed arrays."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from kdjax import metrics

RNG = np.random.default_rng(0)
BIN_PRED = RNG.integers(0, 2, 200)
BIN_LABEL = np.where(RNG.random(200) < 0.7, BIN_PRED, 1 - BIN_PRED)
MULTI_PRED = RNG.integers(0, 3, 300)
MULTI_LABEL = np.where(RNG.random(300) < 0.6, MULTI_PRED, RNG.integers(0, 3, 300))
# Scores on STS-B's 0..5 grid in steps of 0.2 (many ties), and correlated predictions.
SCORES = np.round(RNG.uniform(0, 5, 150) * 5) / 5
PREDS = SCORES + RNG.normal(0, 1.0, 150)


def test_accuracy_and_f1_match_sklearn():
    assert metrics.accuracy(BIN_PRED, BIN_LABEL) == pytest.approx(skm.accuracy_score(BIN_LABEL, BIN_PRED))
    assert metrics.f1(BIN_PRED, BIN_LABEL) == pytest.approx(skm.f1_score(BIN_LABEL, BIN_PRED))
    assert metrics.accuracy(MULTI_PRED, MULTI_LABEL) == pytest.approx(skm.accuracy_score(MULTI_LABEL, MULTI_PRED))
    # No positive predicted or present: sklearn's zero_division=0 convention.
    zeros = np.zeros(10, int)
    assert metrics.f1(zeros, zeros) == skm.f1_score(zeros, zeros, zero_division=0) == 0.0


@pytest.mark.parametrize(
    "pred,label",
    [(BIN_PRED, BIN_LABEL), (MULTI_PRED, MULTI_LABEL), (np.ones(20, int), BIN_LABEL[:20]), (BIN_PRED, BIN_PRED)],
)
def test_mcc_matches_sklearn(pred, label):
    assert metrics.matthews_corrcoef(pred, label) == pytest.approx(skm.matthews_corrcoef(label, pred), abs=1e-12)


def test_correlations_match_scipy_with_ties():
    assert metrics.pearson(PREDS, SCORES) == pytest.approx(stats.pearsonr(PREDS, SCORES)[0], abs=1e-12)
    assert metrics.spearman(PREDS, SCORES) == pytest.approx(stats.spearmanr(PREDS, SCORES)[0], abs=1e-12)
    tied = np.round(PREDS)
    assert metrics.spearman(tied, SCORES) == pytest.approx(stats.spearmanr(tied, SCORES)[0], abs=1e-12)
    np.testing.assert_allclose(metrics.rankdata(tied), stats.rankdata(tied))
    assert metrics.pearson(np.ones(5), np.arange(5)) == 0.0  # constant input: defined as 0, not NaN


def test_task_scores_names_and_glue_number():
    s = metrics.task_scores("mrpc", {"dev": BIN_PRED}, {"dev": BIN_LABEL})
    assert set(s) == {"f1", "accuracy"}
    assert metrics.task_score(s) == pytest.approx((s["f1"] + s["accuracy"]) / 2)
    m = metrics.task_scores(
        "mnli",
        {"matched": MULTI_PRED, "mismatched": MULTI_PRED[::-1]},
        {"matched": MULTI_LABEL, "mismatched": MULTI_LABEL},
    )
    assert set(m) == {"matched_accuracy", "mismatched_accuracy"}
    assert set(metrics.task_scores("stsb", {"dev": PREDS}, {"dev": SCORES})) == {"pearson", "spearman"}
    assert set(metrics.task_scores("cola", {"dev": BIN_PRED}, {"dev": BIN_LABEL})) == {"mcc"}
