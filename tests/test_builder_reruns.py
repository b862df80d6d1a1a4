"""The builder sends what changed (issue 27, "six users at once"): a member toggle reruns the results fragment alone
(not the controls); the panel picker opens the panel of the scored ensemble. AppTest's element tree holds only what the
last run sent, which is what the first test looks at; expected accuracies come from a plain pandas pivot and numpy."""

import pandas as pd
import pytest
from conftest import render_page

from pipeline.artifacts.predictions import member_runs


@pytest.fixture(scope="module")
def preds(dashboard_artifacts):
    return pd.read_parquet(dashboard_artifacts / "fixture" / "predictions.parquet")


def soft_accuracy(preds, subset, split="test"):
    part = preds[(preds["split"] == split) & preds["run_id"].isin(subset)]
    wide = part.pivot(index="image_id", columns="run_id", values="prob_malignant").sort_index()
    y = part.drop_duplicates("image_id").set_index("image_id").loc[wide.index, "label"].to_numpy()
    return f"{((wide[subset].to_numpy(dtype=float).mean(axis=1) >= 0.5) == y).mean():.4f}"


def accuracy(at):
    return next(m.value for m in at.metric if m.label == "Accuracy")


def test_a_member_toggle_resends_the_results_not_the_controls(dashboard_artifacts, monkeypatch, loopback, preds):
    at = render_page(dashboard_artifacts, "fixture", "ensemble_builder", monkeypatch)
    members = member_runs(preds)
    assert len(at.radio) >= 2 and len(at.multiselect) == 1 and accuracy(at) == soft_accuracy(preds, members)
    at.multiselect(key="ens_member_pick").unselect(members[0]).run()
    assert not at.exception
    assert accuracy(at) == soft_accuracy(preds, members[1:])  # re-scored ...
    assert len(at.radio) == 0 and len(at.multiselect) == 0 and len(at.slider) == 0  # ... without the controls
    assert set(at.query_params["members"]) == set(members[1:])  # and the link follows
    at.run()  # a plain rerun (a reload) draws everything again, with the toggled member still out
    assert at.session_state["ens_member_pick"] == members[1:] and accuracy(at) == soft_accuracy(preds, members[1:])
    assert len(at.multiselect) == 1


def test_a_rule_change_redraws_the_controls_it_enables(dashboard_artifacts, monkeypatch, loopback):
    at = render_page(dashboard_artifacts, "fixture", "ensemble_builder", monkeypatch)
    assert not at.toggle(key="ens_vthr").disabled
    at.radio(key="ens_method").set_value("hard").run()  # hard votes take no validation threshold
    assert not at.exception and at.toggle(key="ens_vthr").disabled and at.query_params["rule"] == "hard"


def test_switching_the_panel_draws_it_from_the_scored_ensemble(dashboard_artifacts, monkeypatch, loopback, preds):
    """The panel picker (one segmented control, ?panel= in the URL) opens a panel of the current ensemble. What a switch
    sends in a real browser (the panel alone) is checked in tests/test_browser.py: AppTest reruns the enclosing
    fragment for a widget of a nested one."""
    at = render_page(dashboard_artifacts, "fixture", "ensemble_builder", monkeypatch, members=member_runs(preds)[:3])
    assert not at.get("plotly_chart")
    at.button_group(key="ens_panel").set_value("roc").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1 and at.query_params["panel"] in (["roc"], "roc")
    at.run()
    assert len(at.get("plotly_chart")) == 1 and len(at.metric) >= 7  # it stays open on a full rerun
