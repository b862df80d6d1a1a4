"""The compare-experiments page and its pure helpers, on planted experiments: an image-level twin whose accuracy is
the fixture's + 0.05 and whose split shares three patients between train and test, three fold experiments of one
protocol with planted accuracies, and an experiment without metrics. Expected numbers are written out here."""

import numpy as np
import pandas as pd
import pytest
from conftest import render_page
from planted_experiments import FOLD_ACC, build_compare_artifacts, fold_config

from dashboard.experiments import Protocol, collapse, protocols, shared_train_test_patients



@pytest.fixture(scope="module")
def artifacts(dashboard_artifacts, tmp_path_factory):
    return build_compare_artifacts(dashboard_artifacts / "fixture", tmp_path_factory.mktemp("compare") / "artifacts")


@pytest.fixture
def page(artifacts, monkeypatch):
    def open_page(**query):
        return render_page(artifacts, "patient", "compare_experiments", monkeypatch, **query)

    return open_page


def test_two_experiments_side_by_side(page):
    at = page(exps=["imagelevel", "patient"])
    leaks = [m.value for m in at.metric if m.label == "Patients in train and test"]
    assert leaks == ["3", "0"]  # imagelevel first (chosen order), then the leak-free one
    acc = at.dataframe[0].value  # the accuracy table comes first
    delta = [c for c in acc if str(c).startswith("Δ")][0]
    rows = acc.set_index("run_id")
    # Δ patient − imagelevel: the imagelevel twin was planted 0.05 higher for every run but v2_s
    assert rows.loc["v1_b0", delta] == pytest.approx(-0.05)
    assert rows.loc["ensemble:soft:v1_b0+v1_b1+v1_b2+v1_b3+v1_b4", delta] == pytest.approx(-0.05)
    assert rows.loc["v2_s", "does not beat the baseline in"] == "imagelevel"
    assert rows.loc["v1_b0", "does not beat the baseline in"] == ""
    assert "(" in rows.loc["v1_b0", "patient"] and "–" in rows.loc["v1_b0", "patient"]  # value (95% CI)
    chart = at.get("plotly_chart")[0]
    assert "imagelevel" in chart.proto.spec and "patient" in chart.proto.spec


def test_fold_experiments_collapse_to_mean_and_sd(page):
    at = page(exps=["patient", "pfold0", "pfold1", "pfold2"])
    acc = at.dataframe[0].value.set_index("run_id")
    label = "pfold0 … (3 folds)"
    assert acc.loc["v1_b0", label] == f"{np.mean(FOLD_ACC):.3f} ± {np.std(FOLD_ACC, ddof=1):.3f} (3 folds)"
    spec = at.get("plotly_chart")[0].proto.spec
    assert "each fold" in spec


def test_missing_metrics_is_said_clearly(page):
    at = page(exps=["patient", "empty"])
    warnings = " ".join(w.value for w in at.warning)
    assert "no metrics.parquet yet" in warnings and "python -m pipeline evaluate" in warnings
    assert any("Fewer than two" in i.value for i in at.info)


def test_protocols_group_folds_but_not_reruns_of_one_fold():
    configs = {f"f{k}": fold_config(f"f{k}", k)["config"] for k in range(3)}
    configs["again"] = fold_config("again", 1)["config"]  # same protocol, same fold as f1: a rerun, not a fold
    configs["other"] = {**fold_config("other", 0)["config"], "train": {"epochs": 9}}
    groups = protocols(["f2", "f0", "f1", "other"], configs)
    assert [(p.experiments, p.folds) for p in groups] == [(["f0", "f1", "f2"], [0, 1, 2]), (["other"], [0])]
    groups = protocols(["f1", "again"], configs)
    assert [p.experiments for p in groups] == [["f1"], ["again"]]


def test_collapse_and_leakage_by_hand():
    tables = {n: pd.DataFrame({"accuracy": [a, b]}, index=["r1", "r2"]) for n, a, b in (("x", 0.5, 0.9), ("y", 0.7, np.nan))}
    out = collapse(Protocol("xy", ["x", "y"], [0, 1]), tables, "accuracy")
    assert out.loc["r1", "value"] == pytest.approx(0.6) and out.loc["r1", "sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert out.loc["r2", "folds"] == 1 and out.loc["r2", "points"] == [0.9]
    manifest = pd.DataFrame({"image_id": list("abcde"), "patient_num": [1, 1, 2, 3, 3]})
    split = pd.DataFrame({"image_id": list("abcde"), "split": ["train", "test", "test", "train", "val"], "fold": 0})
    assert shared_train_test_patients(manifest, split, 0) == 1  # patient 1 only; patient 3 is train/val


def test_overview_flags_runs_that_do_not_beat_the_baseline(dashboard_artifacts, monkeypatch):
    from sklearn.metrics import roc_auc_score

    at = render_page(dashboard_artifacts, "fixture", monkeypatch=monkeypatch)
    table = next(d.value for d in at.dataframe if "baseline" in d.value).set_index("run_id")
    preds = pd.read_parquet(dashboard_artifacts / "fixture" / "predictions.parquet")
    test = preds[preds.split == "test"]
    y = test[test.run_id == "v1_b0"].label
    majority = max(y.mean(), 1 - y.mean())
    expected = {}
    for run, rows in test.groupby("run_id"):
        acc = (rows.pred == rows.label).mean()
        expected[run] = "no" if acc <= majority or roc_auc_score(rows.label, rows.prob_malignant) <= 0.5 else "yes"
    assert table["baseline"].to_dict() == expected
    assert "no" in expected.values() and "yes" in expected.values()  # the fixture has both kinds
    assert table["majority_accuracy"].iloc[0] == pytest.approx(majority)
