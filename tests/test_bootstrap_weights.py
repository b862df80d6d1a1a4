"""The patient bootstrap as image multiplicities (issue 26: no n_boot x n gather and sort) gives the resamples and the
metrics of the gathered arrays: weights equal the bincount of ``_patient_resamples``' draws, metrics equal
``_fast_metrics`` (rank-based AUC) of the resampled arrays, with tied scores and a truncated last patient."""

import numpy as np
import pytest

from pipeline.core.metrics import _fast_metrics, _patient_resamples, _resample_weights, _weighted_metrics


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
