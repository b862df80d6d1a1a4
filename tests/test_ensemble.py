"""Ensemble rules: hand-computed cases, ties, edge cases, properties, and the subset search."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.core.ensemble import (
    agreement_matrix,
    all_subsets,
    combine,
    fit_weights,
    hard_vote,
    soft_vote,
    subset_accuracies,
    subset_search,
    weighted_vote,
)
from pipeline.core.errors import PipelineError

P = np.array([[0.9, 0.2, 0.6, 0.4],
              [0.7, 0.4, 0.3, 0.45],
              [0.2, 0.1, 0.8, 0.65]])


def test_soft_vote_by_hand():
    res = soft_vote(P)
    np.testing.assert_allclose(res.score, [0.6, 0.7 / 3, 1.7 / 3, 0.5])
    assert res.pred.tolist() == [1, 0, 1, 1]  # 0.5 >= threshold 0.5 is malignant


def test_hard_vote_by_hand():
    res = hard_vote(P)
    assert res.pred.tolist() == [1, 0, 1, 0]
    np.testing.assert_allclose(res.score, [2 / 3, 0, 2 / 3, 1 / 3])


def test_hard_vote_ties():
    two = np.array([[0.9, 0.6], [0.3, 0.05]])  # one vote each: tie on both images
    assert hard_vote(two, tie_break="mean_prob").pred.tolist() == [1, 0]  # means 0.6 and 0.325
    assert hard_vote(two, tie_break="benign").pred.tolist() == [0, 0]  # the study's scipy.stats.mode rule
    with pytest.raises(PipelineError):
        hard_vote(two, tie_break="coin")


def test_one_member_and_missing_values():
    one = P[:1]
    assert soft_vote(one).pred.tolist() == [1, 0, 1, 0]
    assert hard_vote(one).pred.tolist() == [1, 0, 1, 0]
    bad = P.copy()
    bad[1, 2] = np.nan
    with pytest.raises(PipelineError, match="missing"):
        soft_vote(bad)
    with pytest.raises(PipelineError):
        soft_vote(np.zeros((0, 4)))


def test_weighted_vote_and_fit():
    res = weighted_vote(P, np.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(res.score, (P[0] + P[2]) / 2)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.8 + 0.1 + rng.normal(0, 0.05, 400), 0, 1)
    noise = rng.random((2, 400))
    w = fit_weights(np.vstack([noise[0], good, noise[1]]), y)
    assert w.argmax() == 1 and w[1] > 0.8 and np.isclose(w.sum(), 1)
    with pytest.raises(PipelineError):
        combine(P, "weighted")


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 1), st.integers(1, 30)), elements=st.floats(0, 1)),
       st.integers(1, 6))
def test_identical_members_equal_the_member(row, copies):
    stacked = np.repeat(row, copies, axis=0)
    for method in ("soft", "hard"):
        assert np.array_equal(combine(stacked, method).pred, (row[0] >= 0.5).astype(np.int8))
    np.testing.assert_allclose(soft_vote(stacked).score, row[0])


def test_subset_accuracies_match_direct_scoring():
    rng = np.random.default_rng(1)
    probs, y = rng.random((5, 200)), rng.integers(0, 2, 200)
    masks = all_subsets(5)
    assert masks.shape == (31, 5)
    for method in ("soft", "hard"):
        fast = subset_accuracies(probs, y, masks, method)
        for i in (0, 7, 30):
            direct = (combine(probs[masks[i]], method).pred == y).mean()
            assert fast[i] == pytest.approx(direct)


def test_subset_search_finds_planted_best_subset():
    rng = np.random.default_rng(2)
    y_val, y_test = rng.integers(0, 2, 300), rng.integers(0, 2, 300)

    def members(y):
        good = [np.where(rng.random(len(y)) < 0.85, y, 1 - y) * 0.6 + 0.2 for _ in range(3)]  # 3 independent 85% members
        bad = [rng.random(len(y)) for _ in range(3)]  # coin flips
        return np.vstack(good + bad)

    names = ["g1", "g2", "g3", "b1", "b2", "b3"]
    table = subset_search(members(y_val), y_val, members(y_test), y_test, names)
    best = table[(table.method == "soft") & (table.val_rank == 1)].iloc[0]
    assert set(best.members.split("+")) == {"g1", "g2", "g3"}
    assert len(table) == 2 * 63
    assert best.test_accuracy > 0.85


def test_agreement_matrix():
    preds = np.array([[1, 0, 1, 1], [1, 0, 0, 1]])
    agree = agreement_matrix(preds, ["a", "b"])
    assert agree.loc["a", "b"] == 0.75 and agree.loc["a", "a"] == 1.0
