"""The dashboard on external validations (what `predict` writes): the picker puts each one right after the experiment
it validates, every page renders with and without labels, and the pages that need labels say so."""

import shutil

import pandas as pd
import pytest
from conftest import render_page

PAGES = ["overview", "confusion", "misclassified", "stain_comparison", "ensemble_builder", "training_curves", "gradcam"]
NEEDS_LABELS = {"confusion", "misclassified", "stain_comparison", "ensemble_builder"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, dashboard_artifacts):
    """The fixture experiment (its data root stays where it is) plus its two external validations, and an unrelated
    experiment whose name sorts between them."""
    from tools.fixtures import build_external

    root = tmp_path_factory.mktemp("external_dash")
    shutil.copytree(dashboard_artifacts / "fixture", root / "artifacts" / "fixture")
    shutil.copytree(dashboard_artifacts / "fixture", root / "artifacts" / "fixture_b")
    build_external(root, labels=True)
    build_external(root, labels=False)
    return root / "artifacts"


pytestmark = pytest.mark.usefixtures("loopback")  # conftest: AppTest has no server, the app is told it listens on 127.0.0.1


def open_page(monkeypatch, artifacts, name, experiment):
    return render_page(artifacts, experiment, name, monkeypatch)


def test_the_picker_lists_each_external_validation_after_its_source(artifacts):
    from dashboard.data import list_experiments

    assert list_experiments(artifacts) == ["fixture", "fixture_external", "fixture_external_unlabelled", "fixture_b"]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_a_labelled_external_validation(page, artifacts, monkeypatch):
    at = open_page(monkeypatch, artifacts, page, "fixture_external")
    assert not any("no labels" in i.value for i in at.info)
    if page in ("overview", "confusion", "misclassified"):
        assert [r.value for r in at.radio if r.label == "Split"][0] == "external"


def test_the_overview_shows_external_accuracy_from_the_predictions(artifacts, monkeypatch):
    at = open_page(monkeypatch, artifacts, "overview", "fixture_external")
    preds = pd.read_parquet(artifacts / "fixture_external" / "predictions.parquet")
    v1 = preds[preds["run_id"] == "v1_b0"]
    table = at.dataframe[0].value.set_index("run_id")
    assert table.loc["v1_b0", "accuracy"] == pytest.approx((v1["pred"] == v1["label"]).mean())
    best_single = table.loc[table.index.str.match("^v[12]_"), "accuracy"].max()
    assert {m.label: m.value for m in at.metric}["Best single model"] == f"{best_single:.4f}"
    assert any("External validation of" in i.value for i in at.sidebar.info)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_labels_and_says_what_needs_them(page, artifacts, monkeypatch):
    at = open_page(monkeypatch, artifacts, page, "fixture_external_unlabelled")
    says = " ".join(i.value for i in at.info)
    if page in NEEDS_LABELS:
        assert "has no labels" in says and "--labels FILE.csv" in says
    if page == "overview":
        assert "no labels" in says


def test_an_image_level_external_ci_and_an_inverted_auc_are_named(artifacts, monkeypatch):
    """Issue 23: a flat folder without patient ids has an image-level CI, and a model whose ROC AUC CI lies below 0.5
    is flagged as inverted. Planted: v1_b0's scores flipped (1 - p), so it ranks benign above malignant."""
    from sklearn.metrics import roc_auc_score

    from pipeline.artifacts.io import read_json, write_json, write_parquet
    from pipeline.config import EvaluateConfig
    from pipeline.core.decision import CI_IMAGE, INVERTED
    from pipeline.stages.evaluate import evaluate_predictions
    from pipeline.stages.predict import ci_unit_of

    flat = artifacts / "fixture_external_flat"
    shutil.copytree(artifacts / "fixture_external", flat)
    manifest = pd.read_parquet(flat / "manifest.parquet")
    assert ci_unit_of(manifest) == "patient" and ci_unit_of(manifest.assign(patient_id=manifest["image_id"])) == "image"
    dataset = read_json(flat / "dataset.json")
    write_json({**dataset, "external": {**dataset["external"], "layout": "flat", "ci_unit": "image"}}, flat / "dataset.json")
    preds = pd.read_parquet(flat / "predictions.parquet")  # as `predict` indexes a flat folder: each image its own patient
    preds = preds.assign(patient_id=preds["image_id"], patient_num=pd.factorize(preds["image_id"], sort=True)[0])
    write_parquet(manifest.assign(patient_id=manifest["image_id"]), flat / "manifest.parquet")
    flip = preds["run_id"] == "v1_b0"
    preds.loc[flip, "prob_malignant"] = 1 - preds.loc[flip, "prob_malignant"]
    preds.loc[flip, "pred"] = (preds.loc[flip, "prob_malignant"] >= 0.5).astype("int8")
    write_parquet(preds, flat / "predictions.parquet")
    write_parquet(evaluate_predictions(preds, EvaluateConfig(bootstrap=50)), flat / "metrics.parquet")
    v1 = preds[flip]
    assert roc_auc_score(v1["label"], v1["prob_malignant"]) < 0.3  # the plant: a clearly inverted ranking

    at = open_page(monkeypatch, artifacts, "overview", "fixture_external_flat")
    warnings = " ".join(w.value for w in at.warning)
    assert INVERTED in warnings and "V1\\-B0" in warnings and "stain" in warnings  # the flag and what it usually means
    table = at.dataframe[0].value.set_index("run_id")
    assert table.loc["v1_b0", "baseline"] == "no: inverted"
    assert table.loc["v1_b0", "roc_auc"] == pytest.approx(roc_auc_score(v1["label"], v1["prob_malignant"]))
    assert any(CI_IMAGE in m.value for m in at.markdown)  # the headline cards name the CI image-level
    assert not any("patient-bootstrap 95% CIs" in c.value for c in at.caption)
