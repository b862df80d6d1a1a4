"""Metrics by hand, patient bootstrap determinism, McNemar on known tables."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.core.metrics import (
    _fast_metrics,
    binary_metrics,
    bootstrap_ci,
    expected_calibration_error,
    fold_summary,
    mcnemar,
    patient_recognition_rate,
)

Y = np.array([1, 1, 1, 0, 0, 1, 0, 0])
PROB = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.7, 0.1, 0.4])


def test_binary_metrics_by_hand():
    m = binary_metrics(Y, PROB)
    # pred = [1,1,0,1,0,1,0,0]: TP=3, FN=1, FP=1, TN=3
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 3)
    assert m["accuracy"] == 0.75 and m["precision"] == 0.75 and m["recall"] == 0.75 and m["specificity"] == 0.75
    assert m["f1"] == pytest.approx(0.75) and m["balanced_accuracy"] == 0.75
    assert m["roc_auc"] == pytest.approx(14 / 16)  # 14 of 16 positive/negative pairs ranked right
    assert m["brier"] == pytest.approx(np.mean((PROB - Y) ** 2))


def test_single_class_gives_nan_auc_not_crash():
    m = binary_metrics(np.ones(4), np.array([0.9, 0.8, 0.2, 0.6]))
    assert np.isnan(m["roc_auc"]) and m["recall"] == 0.75 and np.isnan(m["specificity"])


def test_ece_by_hand():
    y = np.array([1, 0, 1, 1])
    p = np.array([0.95, 0.95, 0.15, 0.15])  # bins 9 and 1: |0.5-0.95|*0.5 + |1-0.15|*0.5
    assert expected_calibration_error(y, p, 10) == pytest.approx(0.5 * 0.45 + 0.5 * 0.85)


def test_patient_recognition_rate():
    patients = np.array(["a", "a", "a", "a", "b", "b"])
    correct = np.array([1, 1, 1, 0, 0, 1])
    assert patient_recognition_rate(patients, correct) == pytest.approx((0.75 + 0.5) / 2)


def test_fast_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (3, 50))
    p = rng.random((3, 50))
    fast = _fast_metrics(y, p, (p >= 0.5).astype(int))
    for i in range(3):
        ref = binary_metrics(y[i], p[i])
        assert fast[i, 0] == pytest.approx(ref["accuracy"])
        assert fast[i, 4] == pytest.approx(ref["f1"])
        assert fast[i, 6] == pytest.approx(roc_auc_score(y[i], p[i]))


def test_bootstrap_is_deterministic_and_brackets_the_estimate():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.6 + rng.normal(0.2, 0.2, 200), 0, 1)
    pred = (p >= 0.5).astype(int)
    groups = np.repeat(np.arange(20), 10)
    a = bootstrap_ci(y, p, pred, groups, 300, seed=7)
    b = bootstrap_ci(y, p, pred, groups, 300, seed=7)
    c = bootstrap_ci(y, p, pred, groups, 300, seed=8)
    assert a == b and a != c
    acc = (pred == y).mean()
    assert a["accuracy"][0] < acc < a["accuracy"][1]


def test_patient_bootstrap_is_wider_than_image_bootstrap_for_correlated_images():
    rng = np.random.default_rng(4)
    patient_correct = rng.random(10) < 0.7  # each patient all right or all wrong: strongly correlated
    correct = np.repeat(patient_correct, 30)
    y = np.ones(300, int)
    pred = correct.astype(int)
    by_patient = bootstrap_ci(y, pred.astype(float), pred, np.repeat(np.arange(10), 30), 400, seed=0)
    by_image = bootstrap_ci(y, pred.astype(float), pred, np.arange(300), 400, seed=0)
    width = lambda ci: ci["accuracy"][1] - ci["accuracy"][0]
    assert width(by_patient) > 2 * width(by_image)


def test_mcnemar_known_tables():
    # discordant 10 vs 2: exact two-sided binomial p = 2 * P(X <= 2 | n=12, .5) = 0.0386
    a = np.array([1] * 10 + [0] * 2 + [1] * 20, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 20, bool)
    r = mcnemar(a, b)
    assert (r["only_a"], r["only_b"], r["method"]) == (10, 2, "exact")
    assert r["p_value"] == pytest.approx(0.03857, abs=1e-4)
    # large table: b=30, c=10 -> chi2 = (|30-10|-1)^2/40 = 9.025, p = 0.00266
    a = np.array([1] * 30 + [0] * 10, bool)
    r = mcnemar(a, ~a)
    assert r["statistic"] == pytest.approx(9.025) and r["p_value"] == pytest.approx(0.002663, abs=1e-5)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_fold_summary():
    df = pd.DataFrame({"run_id": ["x"] * 3, "split": ["test"] * 3, "fold": [0, 1, 2], "accuracy": [0.8, 0.9, 1.0]})
    out = fold_summary(df, value_cols=["accuracy"])
    assert out["accuracy_mean"].iloc[0] == pytest.approx(0.9) and out["accuracy_sd"].iloc[0] == pytest.approx(0.1)
    assert out["folds"].iloc[0] == 3
