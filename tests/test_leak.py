"""The leak as one number (pipeline/core/leak.py): runs pair by canonical identity, the headline is the mean paired
difference on the common test images with a patient-bootstrap CI, and disjoint test sets are marked not comparable.
Expected values are planted by hand."""

import math

import pandas as pd
import pytest

from pipeline.core.leak import canonical_identity, leak_difference, neighbour_rate, shared_runs


def test_ensembles_pair_by_rule_and_members_not_by_name():
    assert canonical_identity("ensemble:soft-best:v2_b0+v1_b0") == canonical_identity("ensemble:soft:v1_b0+v2_b0")
    assert canonical_identity("ensemble:hard:v1_b0+v2_b0") != canonical_identity("ensemble:soft:v1_b0+v2_b0")
    assert canonical_identity("ensemble:soft:v1_b0+v2_b0") != canonical_identity("ensemble:soft:v1_b0+v1_b1+v2_b0")
    pairs = shared_runs(["v1_b0", "v2_s", "ensemble:soft-best:v2_b0+v1_b0"], ["ensemble:soft:v1_b0+v2_b0", "v1_b0", "v1_b1"])
    assert pairs == [("v1_b0", "v1_b0"), ("ensemble:soft-best:v2_b0+v1_b0", "ensemble:soft:v1_b0+v2_b0")]


def _preds(runs, images, wrong=()):
    """Four patients x three images; label 1 for patients 0-1, 0 for 2-3; ``wrong``: image ids predicted wrong."""
    rows = []
    for run in runs:
        for image in images:
            patient = int(image.split("_")[0][1:])
            label = int(patient < 2)
            pred = 1 - label if image in wrong else label
            rows.append({"run_id": run, "image_id": image, "label": label, "patient_num": patient, "pred": pred,
                         "prob_malignant": 0.9 if pred else 0.1})
    return pd.DataFrame(rows)


IMAGES = [f"p{p}_{i}" for p in range(4) for i in range(3)]


def test_mean_paired_difference_on_the_common_images_with_its_ci():
    image_level = _preds(["v1_b0", "v2_s", "ensemble:soft-best:v2_b0+v1_b0"], IMAGES + ["p9_0"])  # all right; p9_0 only here
    wrong = [f"p{p}_0" for p in range(4)]  # one image of three wrong for every patient: 2/3 in every patient resample
    patient_level = _preds(["v1_b0", "ensemble:soft:v1_b0+v2_b0"], IMAGES, wrong)
    result = leak_difference(image_level, patient_level, n_boot=200)
    assert result.comparable and result.common_images == 12 and result.common_patients == 4
    assert result.images == (13, 12)
    assert [a for a, _ in result.pairs] == ["v1_b0", "ensemble:soft-best:v2_b0+v1_b0"]  # v2_s is in one experiment only
    assert result.estimate["accuracy"] == pytest.approx(1 - 8 / 12)
    assert result.ci["accuracy"] == pytest.approx((1 / 3, 1 / 3))  # every draw has exactly one wrong image per patient
    # patient-level AUC by hand: positives 4 at 0.9 and 2 at 0.1, negatives 4 at 0.1 and 2 at 0.9: of 36 pairs 16 are
    # ranked right and 16 tie (8 at 0.9, 8 at 0.1): (16 + 16 / 2) / 36 = 2/3; image-level AUC is 1
    assert result.estimate["roc_auc"] == pytest.approx(1 - 24 / 36)

def test_disjoint_test_sets_are_not_comparable():
    image_level = _preds(["v1_b0"], IMAGES[:6])
    patient_level = _preds(["v1_b0"], IMAGES[6:], wrong=IMAGES[6:9])
    result = leak_difference(image_level, patient_level, n_boot=50)
    assert not result.comparable and result.common_images == 0
    assert math.isnan(result.estimate["accuracy"])
    assert result.full_estimate["accuracy"] == pytest.approx(1.0 - 0.5)  # still shown, on different test sets


def test_neighbour_rate_is_the_mean_over_runs():
    metrics = pd.DataFrame({"run_id": ["a", "b", "a"], "split": ["test", "test", "val"], "group_type": ["all"] * 3,
                            "same_patient_neighbour_rate": [0.2, 0.4, 0.9]})
    assert neighbour_rate(metrics, "test") == pytest.approx(0.3)
    assert math.isnan(neighbour_rate(metrics.drop(columns="same_patient_neighbour_rate"), "test"))
