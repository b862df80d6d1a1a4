"""The builder's diagnostics panel (issue 27, "six users at once"): one segmented control (``?panel=`` in the URL)
instead of five tabs, in a fragment nested in the re-scored one. What a panel switch sends in a real browser (the panel
alone, not the headline) is checked in tests/test_browser.py; AppTest reruns the enclosing fragment for a widget of a
nested one, so here the panel's content and its URL are checked."""

import pandas as pd
import pytest
from conftest import render_page

from pipeline.artifacts.predictions import member_runs


@pytest.fixture(scope="module")
def preds(dashboard_artifacts):
    return pd.read_parquet(dashboard_artifacts / "fixture" / "predictions.parquet")


def test_a_rule_change_disables_the_validation_threshold(dashboard_artifacts, monkeypatch, loopback):
    at = render_page(dashboard_artifacts, "fixture", "ensemble_builder", monkeypatch)
    assert not at.toggle(key="ens_vthr").disabled
    at.radio(key="ens_method").set_value("hard").run()  # hard votes take no validation threshold (members vote at 0.5)
    assert not at.exception and at.toggle(key="ens_vthr").disabled and at.query_params["rule"] == "hard"


def test_switching_the_panel_draws_it_and_keeps_it(dashboard_artifacts, monkeypatch, loopback, preds):
    at = render_page(dashboard_artifacts, "fixture", "ensemble_builder", monkeypatch, members=member_runs(preds)[:3])
    assert not at.get("plotly_chart") and len(at.button_group) == 1 and not at.tabs  # one control, no tabs
    at.button_group(key="ens_panel").set_value("roc").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1 and at.query_params["panel"] in (["roc"], "roc")
    roc = at.get("plotly_chart")[0]
    assert roc.key == "ens_roc"
    at.multiselect(key="ens_member_pick").unselect(member_runs(preds)[0]).run()  # a toggle re-scores the open panel
    assert not at.exception and [c.key for c in at.get("plotly_chart")] == ["ens_roc"]
    assert at.query_params["panel"] in (["roc"], "roc")
