"""The patient bootstrap as image multiplicities (issue 26: no n_boot x n gather and sort) gives the resamples and the
metrics of the gathered arrays: weights equal the bincount of ``_patient_resamples``' draws, metrics equal
``_fast_metrics`` (rank-based AUC) of the resampled arrays, with tied scores and a truncated last patient."""

import numpy as np
import pytest

from pipeline.core.metrics import (
    CI_METRICS,
    _fast_metrics,
    _patient_draws,
    _patient_metrics,
    _patient_resamples,
    _resample_weights,
    _weighted_metrics,
)


@pytest.mark.parametrize("decimals", [2, None])  # rounded scores: many ties; raw: none
def test_weights_and_metrics_equal_the_gathered_resamples(decimals):
    rng = np.random.default_rng(4)
    n = 301
    groups = rng.integers(0, 23, n)  # uneven patients, so the last drawn patient is usually cut short
    y = rng.integers(0, 2, n)
    prob = rng.random(n) if decimals is None else np.round(rng.random(n), decimals)
    pred = (prob >= 0.4).astype(int)
    samples = _patient_resamples(groups, 120, 9)
    weights = _resample_weights(groups, 120, 9)
    assert np.array_equal(weights, np.stack([np.bincount(s, minlength=n) for s in samples]))
    want = _fast_metrics(y[samples], prob[samples], pred[samples])
    got = _weighted_metrics(weights, y, prob, pred)
    assert np.allclose(got, want, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("decimals", [2, None])
def test_per_patient_metrics_equal_the_gathered_resamples(decimals):
    """The per-patient form (what bootstrap_ci and the A/B deltas use) against the straightforward computation: gather
    every resample's images and score them (``_fast_metrics``, rank-based AUC). Counts and AUC are sums of
    half-integers, so they match exactly; the Brier mean only to rounding."""
    rng = np.random.default_rng(11)
    n = 413
    groups = rng.integers(0, 31, n) * 7 + 3  # patient numbers, not codes; uneven sizes: a truncated last patient
    y = rng.integers(0, 2, n)
    prob = rng.random(n) if decimals is None else np.round(rng.random(n), decimals)
    pred = (prob >= 0.55).astype(int)
    samples = _patient_resamples(groups, 150, 3)
    want = _fast_metrics(y[samples], prob[samples], pred[samples])
    got = _patient_metrics(_patient_draws(groups, 150, 3), y, prob, pred)
    brier = CI_METRICS.index("brier")
    exact = [i for i in range(len(CI_METRICS)) if i != brier]
    assert np.array_equal(got[:, exact], want[:, exact], equal_nan=True)
    assert np.allclose(got[:, brier], want[:, brier], rtol=1e-12, atol=0)


def test_per_patient_metrics_one_class_resample_is_nan():
    """A resample without negatives has no AUC (NaN), as in the gathered computation."""
    groups = np.array([0, 0, 1, 1, 2])
    y = np.array([1, 1, 1, 1, 0])
    prob = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    samples = _patient_resamples(groups, 40, 0)
    want = _fast_metrics(y[samples], prob[samples], (prob >= 0.5)[samples])
    got = _patient_metrics(_patient_draws(groups, 40, 0), y, prob, prob >= 0.5)
    assert np.isnan(want[:, CI_METRICS.index("roc_auc")]).any()
    assert np.array_equal(got[:, :-1], want[:, :-1], equal_nan=True)
