"""Majority baseline, validation threshold, referral (risk-coverage, AURC), patient-level diagnosis,
reliability curve and nearest neighbours: each against a hand computation or a brute-force reference."""

import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.core.decision import (
    aurc,
    certainty_from_members,
    certainty_from_score,
    majority_accuracy,
    refer_least_certain,
    risk_coverage,
    threshold_from_validation,
)
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import expected_calibration_error, reliability_curve
from pipeline.core.neighbours import cosine_neighbours, same_patient_rate
from pipeline.core.patients import patient_metrics, patient_table


def test_majority_accuracy_by_hand():
    assert majority_accuracy([1, 1, 1, 0]) == 0.75
    assert majority_accuracy([0, 0, 1, 0, 0]) == 0.8
    assert np.isnan(majority_accuracy([]))


def test_threshold_separates_a_perfect_ranking_that_fails_at_half():
    # Ranks perfectly (AUC 1) but every score is >= 0.5: at 0.5 all four are called malignant.
    y = np.array([0, 0, 1, 1])
    s = np.array([0.55, 0.60, 0.80, 0.90])
    t = threshold_from_validation(y, s)
    assert t == pytest.approx(0.70)  # the midpoint between 0.60 and 0.80
    assert ((s >= t) == y.astype(bool)).all()


def test_threshold_maximises_youden_and_prefers_half_on_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    s = np.clip(y * 0.3 + rng.random(40) * 0.7, 0, 1)
    t = threshold_from_validation(y, s)
    def j(th):
        p = s >= th
        return (p & (y == 1)).sum() / (y == 1).sum() + (~p & (y == 0)).sum() / (y == 0).sum() - 1
    brute = max(j(th) for th in np.linspace(-0.01, 1.01, 2001))
    assert j(t) == pytest.approx(brute)
    # every threshold in (0.1, 0.9] separates perfectly: the candidate closest to 0.5 wins
    assert threshold_from_validation(np.array([0, 1]), np.array([0.1, 0.9])) == pytest.approx(0.5)
    with pytest.raises(PipelineError, match="both classes"):
        threshold_from_validation(np.array([1, 1]), np.array([0.2, 0.3]))


def test_risk_coverage_and_aurc_by_hand():
    correct = np.array([True, False, True, True])
    certainty = np.array([0.4, 0.1, 0.3, 0.2])  # most certain first: c0 ok, c2 ok, c3 ok, c1 wrong
    curve = risk_coverage(correct, certainty)
    assert curve["coverage"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert curve["risk"].tolist() == pytest.approx([0, 0, 0, 0.25])
    assert aurc(correct, certainty) == pytest.approx((0 + 0 + 0 + 0.25) / 4)
    # certainty that says nothing (all tied): AURC = error rate
    assert aurc(correct, np.zeros(4)) == pytest.approx(0.25)


def test_risk_coverage_groups_ties():
    correct = np.array([True, False, True, True])
    certainty = np.array([1.0, 1.0, 0.5, 0.5])  # two levels of two cases each
    curve = risk_coverage(correct, certainty)
    assert curve["kept"].tolist() == [2, 4] and curve["risk"].tolist() == pytest.approx([0.5, 0.25])
    assert aurc(correct, certainty) == pytest.approx(0.5 * 0.5 + 0.5 * 0.25)


def test_refer_least_certain_counts_and_ties():
    certainty = np.array([0.3, 0.1, 0.1, 0.9, 0.5])
    assert refer_least_certain(certainty, 0.0).sum() == 0
    mask = refer_least_certain(certainty, 0.4)  # 2 of 5: the two 0.1s
    assert mask.tolist() == [False, True, True, False, False]
    mask = refer_least_certain(certainty, 0.2)  # 1 of 5 among the tied 0.1s: the later index is referred
    assert mask.tolist() == [False, False, True, False, False]
    with pytest.raises(PipelineError):
        refer_least_certain(certainty, 1.5)


def test_certainty_from_score_and_members():
    assert certainty_from_score(np.array([0.9, 0.5, 0.2]), 0.5).tolist() == pytest.approx([0.4, 0.0, 0.3])
    members = np.array([[0.9, 0.6, 0.2], [0.8, 0.4, 0.3], [0.7, 0.3, 0.6]])
    decision = np.array([1, 0, 0])
    c = certainty_from_members(members, decision)
    # agreement: image 0 all three vote 1 -> 1.0; image 1 two of three vote 0 -> 2/3; image 2 two of three -> 2/3
    assert np.floor(c * 3 + 1e-9).tolist() == [3, 2, 2]
    # tie between images 1 and 2 broken by mean distance from 0.5: |0.433-.5|=.067 < |0.367-.5|=.133
    assert c[2] > c[1]


def test_patient_table_and_metrics_by_hand():
    patient = np.array(["a", "a", "a", "b", "b", "c", "c", "d"])
    label = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    prob = np.array([0.9, 0.6, 0.2, 0.3, 0.4, 0.6, 0.7, 0.1])
    pred = (prob >= 0.5).astype(int)
    table = patient_table(patient, label, prob, pred).set_index("patient")
    assert table.loc["a", "mean_prob"] == pytest.approx(1.7 / 3) and table.loc["a", "pred_mean"] == 1
    assert table.loc["a", "vote_share"] == pytest.approx(2 / 3) and table.loc["a", "pred_vote"] == 1
    assert table.loc["b", "pred_mean"] == 0 and table.loc["c", "pred_mean"] == 1 and table.loc["d", "pred_mean"] == 0
    m = patient_metrics(table.reset_index(), "mean", n_boot=200, seed=0)
    # patients: a (1 -> 1 ok), b (1 -> 0 wrong), c (0 -> 1 wrong), d (0 -> 0 ok)
    assert m["patients"] == 4 and m["accuracy"] == 0.5 and m["sensitivity"] == 0.5 and m["specificity"] == 0.5
    t = table.reset_index()
    assert m["roc_auc"] == pytest.approx(roc_auc_score(t["label"], t["mean_prob"]))
    assert m["accuracy_lo"] <= m["accuracy"] <= m["accuracy_hi"]
    again = patient_metrics(table.reset_index(), "mean", n_boot=200, seed=0)
    assert again == m  # deterministic for a seed


def test_patient_vote_tie_goes_to_mean_probability():
    table = patient_table(np.array(["p", "p"]), np.array([1, 1]), np.array([0.9, 0.3]), np.array([1, 0]))
    assert table["vote_share"].iloc[0] == 0.5 and table["pred_vote"].iloc[0] == 1  # mean 0.6 >= 0.5
    with pytest.raises(PipelineError, match="both classes"):
        patient_table(np.array(["p", "p"]), np.array([1, 0]), np.array([0.9, 0.3]), np.array([1, 0]))


def test_reliability_curve_matches_ece():
    y = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([0.95, 0.95, 0.15, 0.15, 0.12, 0.55])
    curve = reliability_curve(y, p, 10)
    assert curve["images"].sum() == 6 and curve["bin_lo"].tolist() == pytest.approx([0.1, 0.5, 0.9])
    bin1 = curve.iloc[0]
    assert bin1["observed"] == pytest.approx(2 / 3) and bin1["mean_prob"] == pytest.approx((0.15 + 0.15 + 0.12) / 3)
    ece = (curve["images"] / 6 * (curve["observed"] - curve["mean_prob"]).abs()).sum()
    assert ece == pytest.approx(expected_calibration_error(y, p, 10))


def test_cosine_neighbours_match_brute_force_and_break_ties_by_index():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 8))
    ref[7] = ref[3] * 2.0  # same direction as row 3: equal cosine similarity, tie broken by index
    query = np.vstack([ref[3] * 0.5, rng.normal(size=(9, 8))])
    idx, sim = cosine_neighbours(query, ref, k=4, chunk=4)
    assert idx[0, :2].tolist() == [3, 7] and sim[0, 0] == pytest.approx(1.0, abs=1e-5)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    brute = unit(query) @ unit(ref).T
    for i in range(1, len(query)):
        assert idx[i].tolist() == np.argsort(-brute[i], kind="stable")[:4].tolist()
        assert sim[i] == pytest.approx(brute[i][idx[i]], abs=1e-5)


def test_same_patient_rate_by_hand():
    ref_patients = np.array(["a", "b", "c"])
    idx = np.array([[0, 1], [2, 0], [1, 2], [0, 2]])
    assert same_patient_rate(np.array(["a", "a", "b", "c"]), ref_patients, idx) == pytest.approx(2 / 4)
    assert same_patient_rate(np.array(["x", "y", "z", "w"]), ref_patients, idx) == 0.0


def test_aurc_of_an_oracle_is_lowest():
    """Certainty that ranks every error last gives the smallest AURC of all orderings (brute force, 5 cases)."""
    correct = np.array([True, True, False, True, False])
    oracle = np.where(correct, 1.0, 0.0) + np.arange(5) * 1e-3
    best = min(aurc(correct, np.array(perm, dtype=float)) for perm in itertools.permutations(range(5)))
    assert aurc(correct, oracle) == pytest.approx(best)
    assert aurc(correct, np.zeros(5)) == pytest.approx(1 - pd.Series(correct).mean())
