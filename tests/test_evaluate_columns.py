"""The evaluate stage's comparison columns (issue 13): majority baseline, threshold (0.5 or from validation),
patient-level diagnosis with CIs, AURC, and n/a calibration for hard votes; each checked against a computation
written out here by hand or with scikit-learn, on a planted prediction table."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

from pipeline.config import EvaluateConfig, config_from_dict
from pipeline.core.errors import PipelineError
from pipeline.stages.evaluate import evaluate_predictions

# Six patients (3 benign, 3 malignant), two images each, on val and on test.
PATIENTS = {"p1": 0, "p2": 0, "p3": 0, "p4": 1, "p5": 1, "p6": 1}
# Member "a" ranks perfectly on val but every score is >= 0.5 (the demo's "calls everything malignant" failure).
A = {"val": [0.55, 0.58, 0.60, 0.62, 0.57, 0.61, 0.80, 0.85, 0.90, 0.82, 0.95, 0.88],
     "test": [0.56, 0.75, 0.52, 0.59, 0.66, 0.61, 0.81, 0.74, 0.93, 0.86, 0.99, 0.90]}
B = {"val": [0.10, 0.40, 0.30, 0.70, 0.20, 0.45, 0.60, 0.35, 0.90, 0.55, 0.80, 0.65],
     "test": [0.20, 0.65, 0.15, 0.31, 0.55, 0.27, 0.72, 0.40, 0.88, 0.46, 0.62, 0.77]}


def _rows(run_id, kind, model, split, prob, pred=None):
    patients = [p for p in PATIENTS for _ in range(2)]
    prob = np.asarray(prob, dtype=float)
    return pd.DataFrame({
        "run_id": run_id, "kind": kind, "model": model, "family": "v1", "stain": "none",
        "image_id": [f"{split}-{i}" for i in range(12)], "split": split, "label": [PATIENTS[p] for p in patients],
        "prob_malignant": prob, "pred": (prob >= 0.5).astype(int) if pred is None else pred,
        "magnification": [40, 100] * 6, "subtype": ["A"] * 6 + ["DC"] * 6,
        "patient_id": patients, "patient_num": [int(p[1]) for p in patients]})


@pytest.fixture(scope="module")
def preds():
    frames = []
    for split in ("val", "test"):
        a, b = np.array(A[split]), np.array(B[split])
        frames += [_rows("v1_b0", "single", "v1_b0", split, a), _rows("v1_b1", "single", "v1_b1", split, b)]
        soft = (a + b) / 2
        frames.append(_rows("ensemble:soft:v1_b0+v1_b1", "ensemble", "soft", split, soft))
        votes = (a >= 0.5).astype(int) + (b >= 0.5).astype(int)
        tie_pred = np.where(votes == 1, (soft >= 0.5).astype(int), (votes == 2).astype(int))  # ties: mean probability
        frames.append(_rows("ensemble:hard:v1_b0+v1_b1", "ensemble", "hard", split, votes / 2, pred=tie_pred))
    return pd.concat(frames, ignore_index=True)


def _all(metrics, run, split):
    return metrics[(metrics.group_type == "all") & (metrics.run_id == run) & (metrics.split == split)].iloc[0]


def test_baseline_threshold_and_patient_columns_at_half(preds):
    metrics = evaluate_predictions(preds, EvaluateConfig(bootstrap=200))
    row = _all(metrics, "v1_b0", "test")
    assert row.majority_accuracy == 0.5  # 6 benign and 6 malignant images
    assert row.threshold == 0.5 and row.threshold_source == "config" and row.score_type == "probability"
    # a calls every image malignant at 0.5: accuracy equals the malignant share, which is the baseline here
    assert row.accuracy == pytest.approx(0.5)
    # patient level by hand: mean of each patient's two image probabilities, then >= 0.5
    test = preds[(preds.run_id == "v1_b1") & (preds.split == "test")]
    means = test.groupby("patient_id").agg(prob=("prob_malignant", "mean"), label=("label", "first"))
    row_b = _all(metrics, "v1_b1", "test")
    assert row_b.patient_accuracy == pytest.approx(accuracy_score(means.label, means.prob >= 0.5))
    assert row_b.patient_roc_auc == pytest.approx(roc_auc_score(means.label, means.prob))
    assert row_b.patient_accuracy_lo <= row_b.patient_accuracy <= row_b.patient_accuracy_hi
    assert row_b.patient_roc_auc_lo <= row_b.patient_roc_auc_hi
    assert row_b.patients == 6 and row_b.patient_majority_accuracy == 0.5


def test_validation_threshold_is_chosen_on_val_and_applied_to_test(preds):
    metrics = evaluate_predictions(preds, EvaluateConfig(bootstrap=50, threshold="validation"))
    val, test = _all(metrics, "v1_b0", "val"), _all(metrics, "v1_b0", "test")
    # a's val scores: benign <= 0.62, malignant >= 0.80: the midpoint of 0.62 and 0.80 separates them
    assert val.threshold == pytest.approx(0.71) and test.threshold == pytest.approx(0.71)
    assert test.threshold_source == "validation"
    assert val.accuracy == 1.0
    a_test, y_test = np.array(A["test"]), preds[(preds.run_id == "v1_b0") & (preds.split == "test")].label
    assert test.accuracy == pytest.approx(accuracy_score(y_test, a_test >= 0.71))  # 11 of 12: 0.75 is a benign miss
    assert test.accuracy == pytest.approx(11 / 12)


def test_vote_share_rows_have_no_calibration_and_keep_their_votes(preds):
    metrics = evaluate_predictions(preds, EvaluateConfig(bootstrap=50))
    hard, soft = _all(metrics, "ensemble:hard:v1_b0+v1_b1", "test"), _all(metrics, "ensemble:soft:v1_b0+v1_b1", "test")
    assert hard.score_type == "vote_share" and soft.score_type == "probability"
    assert np.isnan(hard.brier) and np.isnan(hard.ece) and np.isnan(hard.brier_lo)
    groups = metrics[(metrics.run_id == hard.run_id) & (metrics.group_type != "all")]
    assert groups.brier.isna().all() and groups.ece.isna().all()
    rows = preds[(preds.run_id == hard.run_id) & (preds.split == "test")]
    assert hard.accuracy == pytest.approx(accuracy_score(rows.label, rows.pred))  # the stage's tie rule, kept
    soft_rows = preds[(preds.run_id == soft.run_id) & (preds.split == "test")]
    assert soft.brier == pytest.approx(brier_score_loss(soft_rows.label, soft_rows.prob_malignant))


def test_a_hard_vote_keeps_its_majority_and_tie_rule_under_a_validation_threshold(preds):
    """Issue 23: `--threshold validation` used to threshold a hard vote's vote share (dropping its tie rule) while the
    builder refused that option: one rule now, the stage's decision in both modes."""
    metrics = evaluate_predictions(preds, EvaluateConfig(bootstrap=50, threshold="validation"))
    hard = _all(metrics, "ensemble:hard:v1_b0+v1_b1", "test")
    a, b = np.array(A["test"]), np.array(B["test"])
    votes = (a >= 0.5).astype(int) + (b >= 0.5).astype(int)
    by_hand = np.where(votes == 1, (a + b) / 2 >= 0.5, votes == 2).astype(int)  # majority, ties to the mean probability
    y = preds[(preds.run_id == hard.run_id) & (preds.split == "test")].label.to_numpy()
    assert hard.accuracy == pytest.approx((by_hand == y).mean())
    assert hard.threshold_source == "majority vote" and hard.threshold == 0.5
    # what the old rule gave (vote share >= Youden's threshold on val) differs here, so the test can tell them apart
    val_share = preds[(preds.run_id == hard.run_id) & (preds.split == "val")]
    from pipeline.core.decision import threshold_from_validation
    t = threshold_from_validation(val_share.label.to_numpy(), val_share.prob_malignant.to_numpy())
    assert ((votes / 2 >= t).astype(int) == y).mean() != pytest.approx((by_hand == y).mean())


def test_aurc_single_by_distance_ensemble_by_member_agreement(preds):
    metrics = evaluate_predictions(preds, EvaluateConfig(bootstrap=50))
    # single model b: certainty |p - 0.5|, no ties; AURC = mean over k of the error rate among the k most certain
    b = np.array(B["test"])
    y = preds[(preds.run_id == "v1_b1") & (preds.split == "test")].label.to_numpy()
    order = np.argsort(-np.abs(b - 0.5))
    wrong = ((b >= 0.5) != y)[order]
    by_hand = np.mean([wrong[:k].mean() for k in range(1, 13)])
    row = _all(metrics, "v1_b1", "test")
    assert row.aurc == pytest.approx(by_hand) and row.certainty == "distance_from_threshold"
    # soft ensemble of a and b: certainty = share of the two members agreeing with the decision (then margin)
    a = np.array(A["test"])
    soft = (a + b) / 2
    decision = soft >= 0.5
    agree = (((a >= 0.5) == decision).astype(int) + ((b >= 0.5) == decision).astype(int)) / 2
    margin = np.abs(soft - 0.5)
    order = sorted(range(12), key=lambda i: (-agree[i], -margin[i]))
    wrong = (decision != y)[order]
    ens = _all(metrics, "ensemble:soft:v1_b0+v1_b1", "test")
    assert ens.certainty == "member_agreement"
    assert ens.aurc == pytest.approx(np.mean([wrong[:k].mean() for k in range(1, 13)]))


def test_threshold_setting_is_validated():
    base = {"experiment": {"data_root": "x"}}
    assert config_from_dict({**base, "evaluate": {"threshold": "validation"}}).evaluate.threshold == "validation"
    assert config_from_dict({**base, "evaluate": {"threshold": 0.4}}).evaluate.threshold == 0.4
    for bad in (1.5, "median", True):
        with pytest.raises(PipelineError, match="evaluate.threshold"):
            config_from_dict({**base, "evaluate": {"threshold": bad}})
