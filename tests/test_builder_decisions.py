"""Ensemble builder (issue 13): the majority baseline beside the accuracy, the threshold chosen on validation, the
experiment's hard-vote tie rule, the referral slider and the reliability diagram; expected numbers are computed here
from predictions.parquet with numpy, sklearn or the pipeline's pure ensemble rules (never by the page's code)."""

import base64
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import render_page
from sklearn.metrics import roc_curve

from pipeline.artifacts.predictions import member_runs



@pytest.fixture(scope="module")
def preds(dashboard_artifacts):
    return pd.read_parquet(dashboard_artifacts / "fixture" / "predictions.parquet")


@pytest.fixture
def builder(dashboard_artifacts, monkeypatch):
    def open_page(artifacts=None, experiment="fixture", **query):
        return render_page(artifacts or dashboard_artifacts, experiment, "ensemble_builder", monkeypatch, **query)

    return open_page


def matrix(preds, members, split):
    """(members x images) scores and the labels, by a plain pandas pivot: independent of ``probability_matrix``."""
    part = preds[(preds["split"] == split) & preds["run_id"].isin(members)]
    wide = part.pivot(index="image_id", columns="run_id", values="prob_malignant").sort_index()
    labels = part.drop_duplicates("image_id").set_index("image_id").loc[wide.index, "label"].to_numpy()
    return wide[members].to_numpy(dtype=float).T, labels


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def test_baseline_and_referral_by_hand(builder, preds):
    at = builder(refer="20")
    members = member_runs(preds)
    probs, y = matrix(preds, members, "test")
    assert metric(at, "Majority baseline") == f"{max(y.mean(), 1 - y.mean()):.4f}"
    mean = probs.mean(axis=0)
    decision = mean >= 0.5
    agree = ((probs >= 0.5) == decision).mean(axis=0)
    order = sorted(range(len(y)), key=lambda i: (agree[i], abs(mean[i] - 0.5)))  # least certain first
    n_refer = round(0.2 * len(y))
    referred = np.zeros(len(y), bool)
    referred[order[:n_refer]] = True
    errors = decision != y
    assert metric(at, "Images referred") == f"{n_refer} of {len(y)}"
    assert metric(at, "Errors referred") == f"{(errors & referred).sum()} of {errors.sum()}"
    assert metric(at, "Accuracy on the kept images") == f"{(~errors[~referred]).mean():.4f}"


def test_threshold_from_validation_is_applied_to_test(builder, preds):
    chosen = ["v1_b1", "v2_b2"]
    at = builder(members=chosen, rule="soft", vthr="1")
    members = member_runs(preds)
    idx = [members.index(m) for m in chosen]
    val_p, y_val = matrix(preds, members, "val")
    test_p, y_test = matrix(preds, members, "test")
    val_score = val_p[idx].mean(axis=0)
    fpr, tpr, thr = roc_curve(y_val, val_score)  # Youden's J over sklearn's candidate thresholds (actual scores)
    best_j = (tpr - fpr).max()
    caption = next(c.value for c in at.caption if c.value.startswith("Threshold "))
    chosen_t = float(caption.split()[1].rstrip(":"))
    pred_val = val_score >= chosen_t
    j = pred_val[y_val == 1].mean() - pred_val[y_val == 0].mean()
    assert j == pytest.approx(best_j)  # the page's threshold reaches the best J on validation
    test_score = test_p[idx].mean(axis=0)
    assert metric(at, "Accuracy") == f"{((test_score >= chosen_t) == y_test).mean():.4f}"


def test_hard_votes_use_the_experiments_tie_rule(builder, preds, dashboard_artifacts, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(dashboard_artifacts / "fixture", artifacts / "benign", ignore=shutil.ignore_patterns("stain", "gradcam"))
    record = json.loads((artifacts / "benign" / "ensembles.json").read_text())
    record["config"] = {"hard_tie_break": "benign"}
    (artifacts / "benign" / "ensembles.json").write_text(json.dumps(record))
    chosen = ["v1_b1", "v2_s"]  # two members that disagree on some images: ties decide those
    members = member_runs(preds)
    probs, y = matrix(preds, members, "test")
    sub = probs[[members.index(m) for m in chosen]]
    votes = (sub >= 0.5).sum(axis=0)  # two members: 2 malignant, 0 benign, 1 a tie
    benign = f"{(np.where(votes == 1, 0, votes == 2) == y).mean():.4f}"  # the study's rule: a tie is benign
    by_mean = f"{(np.where(votes == 1, sub.mean(axis=0) >= 0.5, votes == 2) == y).mean():.4f}"
    assert benign != by_mean  # the planted data makes the rule matter
    at = builder(artifacts=artifacts, experiment="benign", members=chosen, rule="hard", panel="calibration")
    assert metric(at, "Accuracy") == benign
    assert any("n/a" in i.value and "not a probability" in i.value for i in at.info)  # no reliability diagram for a vote


def test_reliability_diagram_for_probabilities(builder, preds):
    at = builder(panel="calibration")  # the builder's diagnostics are panels: only the open one is drawn
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Reliability" in c.proto.spec)
    members = member_runs(preds)
    probs, y = matrix(preds, members, "test")
    mean = probs.mean(axis=0)
    bins = np.minimum((mean * 10).astype(int), 9)
    observed = [y[bins == b].mean() for b in sorted(set(bins))]
    ys = spec["data"][0]["y"]
    if isinstance(ys, dict):  # plotly's binary encoding of a float array
        ys = np.frombuffer(base64.b64decode(ys["bdata"]), dtype=ys["dtype"])
    assert list(ys) == pytest.approx(observed)
    closed = builder()  # the default tab is the confusion matrix: the reliability diagram is neither computed nor sent
    assert not any("Reliability" in c.proto.spec for c in closed.get("plotly_chart"))
    pred = mean >= 0.5
    counts = closed.table[0].value.to_numpy().tolist()  # rows: true benign, malignant; columns: predicted benign, malignant
    assert counts == [[int((~pred & (y == 0)).sum()), int((pred & (y == 0)).sum())],
                      [int((~pred & (y == 1)).sum()), int((pred & (y == 1)).sum())]]


def test_image_browser_hides_what_a_referral_would_catch(dashboard_artifacts, monkeypatch, preds):
    at = render_page(dashboard_artifacts, "fixture", "misclassified", monkeypatch, run="v1_b2", split="test", refer="30")
    rows = preds[(preds.run_id == "v1_b2") & (preds.split == "test")]
    distance = (rows.prob_malignant - 0.5).abs().to_numpy()
    n_refer = round(0.3 * len(rows))
    referred = np.zeros(len(rows), bool)
    referred[np.argsort(distance, kind="stable")[:n_refer]] = True  # distances are continuous: no ties
    wrong = (rows.pred != rows.label).to_numpy()
    kept_errors = int((wrong & ~referred).sum())
    assert 0 < kept_errors < wrong.sum()
    page_texts = [m.value for m in at.markdown]
    assert any(f"of {kept_errors}**" in t for t in page_texts), page_texts[:5]
    assert any(f"{n_refer} of {len(rows)} images" in c.value for c in at.caption)


def test_referral_tab_stays_open_when_its_slider_returns_to_zero(builder):
    """The tab a referral link opened stays open while the user moves its slider, even to 0 (which drops ?refer=)."""
    at = builder(refer="20")
    assert at.query_params.get("refer") and any(m.label == "Images referred" for m in at.metric)
    at.slider(key="ens_refer").set_value(0.0).run()
    assert not at.exception
    assert metric(at, "Images referred").startswith("0 of ")  # still the referral tab, now referring nothing
    at.slider(key="ens_refer").set_value(10.0).run()
    assert not metric(at, "Images referred").startswith("0 of ")


def test_no_member_chosen_still_offers_the_subsets_to_load(builder):
    """With every member unticked the builder says so, and the validation-ranked subsets (the way back) stay on the page."""
    at = builder(members=[""], refer="abc")  # a nonsense referral share is ignored, not a crash
    assert any("Select at least one member" in w.value for w in at.warning)
    assert any(s.value.startswith("Best subsets") for s in at.subheader)
