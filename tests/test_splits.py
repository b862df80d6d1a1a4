"""Split invariants (property-based) and the real sample's leakage report."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import PipelineError
from pipeline.core.splits import leakage_report, make_split, paper_split, parse_ratios


def synthetic_manifest(n_benign_patients, n_malignant_patients, images, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_benign_patients + n_malignant_patients):
        label = int(p >= n_benign_patients)
        subtype = ["A", "F", "PT", "TA"][p % 4] if label == 0 else ["DC", "LC", "MC", "PC"][p % 4]
        for k in range(int(rng.integers(1, images + 1))):
            mag = [40, 100, 200, 400][k % 4]
            rows.append({"image_id": f"p{p}_{k}", "path": f"x/p{p}_{k}.png", "label": label, "subtype": subtype,
                         "patient_id": f"{1000 + p}A", "patient_num": 1000 + p, "magnification": mag})
    return pd.DataFrame(rows)


@settings(max_examples=40, deadline=None)
@given(nb=st.integers(3, 12), nm=st.integers(3, 20), images=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_patient_split_invariants(nb, nm, images, seed):
    manifest = synthetic_manifest(nb, nm, images, seed)
    split = make_split(manifest, "patient", seed=seed)
    assert len(split) == len(manifest) and split.image_id.is_unique
    assert set(split.split) == {"train", "val", "test"}
    merged = split.merge(manifest, on="image_id")
    assert merged.groupby("patient_num")["split"].nunique().max() == 1  # no patient on two sides
    assert merged.groupby(["label", "split"]).size().shape[0] == 6  # both classes on every side
    assert leakage_report(manifest, split)["shared_patient_num"].iloc[0] == 0
    assert split.equals(make_split(manifest, "patient", seed=seed))  # deterministic by seed


@settings(max_examples=40, deadline=None)
@given(nb=st.integers(2, 8), nm=st.integers(2, 8), images=st.integers(4, 40), seed=st.integers(0, 10_000))
def test_paper_split_floor_rule(nb, nm, images, seed):
    manifest = synthetic_manifest(nb, nm, images, seed)
    split = paper_split(manifest, (0.7, 0.15, 0.15), seed)
    merged = split.merge(manifest, on="image_id")
    for _, stratum in merged.groupby(["label", "magnification"]):
        n = len(stratum)
        counts = stratum["split"].value_counts()
        assert counts.get("val", 0) == int(np.floor(n * 0.15)) == counts.get("test", 0)
        assert counts.get("train", 0) == n - 2 * int(np.floor(n * 0.15))
    assert split.equals(paper_split(manifest, (0.7, 0.15, 0.15), seed))


def test_patient_ratios_roughly_respected():
    manifest = synthetic_manifest(30, 60, 10, 1)
    split = make_split(manifest, "patient", seed=0)
    share = split["split"].value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.08 and abs(share["val"] - 0.15) < 0.06 and abs(share["test"] - 0.15) < 0.06


def test_folds_are_independent_repeats():
    manifest = synthetic_manifest(10, 20, 6, 2)
    split = make_split(manifest, "patient", folds=5, seed=0)
    assert sorted(split.fold.unique()) == [0, 1, 2, 3, 4]
    wide = split.pivot(index="image_id", columns="fold", values="split")
    assert (wide.nunique(axis=1) > 1).mean() > 0.2
    assert (leakage_report(manifest, split)["shared_patient_num"] == 0).all()


def test_too_few_patients_is_a_clear_error():
    manifest = synthetic_manifest(2, 10, 5, 0)
    with pytest.raises(PipelineError, match="class 'benign' has 2 patient group"):
        make_split(manifest, "patient")
    with pytest.raises(PipelineError, match="no images"):
        make_split(manifest[manifest.label == 1], "paper")


def test_ratios_validation():
    assert parse_ratios("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    with pytest.raises(PipelineError):
        parse_ratios("0.7,0.3")
    with pytest.raises(PipelineError):
        parse_ratios("0.7,0.2,0.2")


def test_sample_paper_leaks_patient_does_not(sample_root, tmp_path):
    from pipeline.stages.index import run_index

    manifest, _ = run_index(sample_root, tmp_path)
    paper = leakage_report(manifest, make_split(manifest, "paper", seed=0))
    patient = leakage_report(manifest, make_split(manifest, "patient", seed=0, group_by="patient_num"))
    assert paper["shared_patient_num"].iloc[0] > 0
    assert patient["shared_patient_num"].iloc[0] == 0 and patient["shared_patient_id"].iloc[0] == 0
