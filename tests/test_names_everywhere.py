"""One name per run (issue #27): under AppTest, every page of the dashboard fixture and every run id, a run's display
name is the same wherever it appears (run pickers, table cells next to a run id, the image browser's header, the
compare page with a second experiment whose member set differs). The expected names come from the pipeline's naming
function applied to the experiment's own run ids; a raw run id shown where a name belongs is a failure."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from conftest import render_page

from dashboard.nav import PAGE_TABLE
from pipeline.artifacts.catalog import is_run_id
from pipeline.artifacts.predictions import member_runs
from pipeline.artifacts.run_names import run_alias, run_aliases

PAGES = [file[:-3] for file, *_ in PAGE_TABLE.values()]


@pytest.fixture(scope="module")
def names(dashboard_artifacts):
    preds = pd.read_parquet(dashboard_artifacts / "fixture" / "predictions.parquet")
    ids = [str(r) for r in pd.unique(preds["run_id"])]
    return run_aliases(ids, member_runs(preds))


def other_names(names: dict[str, str]) -> dict[str, str]:
    """Every other way a run could be written (its raw id, its name without the experiment's context) -> run id."""
    out = {}
    for run, name in names.items():
        for variant in (run, run_alias(run)):
            if variant != name:
                out[variant] = run
    return out


def shown_frames(at):
    """(column -> values) of every dataframe as displayed (only the columns in its column order, when it has one)."""
    for df in at.dataframe:
        frame = df.value.data if hasattr(df.value, "data") else df.value
        order = list(df.proto.column_order) if hasattr(df.proto, "column_order") else []
        yield frame, [c for c in frame.columns if not order or c in order]


def check_page(at, names: dict[str, str], page: str) -> int:
    """Every run-like string on the page is the run's one name; returns how many were checked."""
    wrong = other_names(names)
    valid = set(names.values())
    checked = 0
    for widget in [*at.selectbox, *at.multiselect, *at.radio]:
        for option in widget.options:
            assert option not in wrong or option in valid, (page, widget.label, option, names[wrong[option]])
            checked += option in valid
    for frame, shown in shown_frames(at):
        for column in shown:
            if column == "run_id" or frame[column].dtype.kind in "fiub":
                continue
            cells = frame[column].astype(str)
            bad = [c for c in cells if c in wrong and c not in valid]
            assert not bad, (page, column, bad[:3])
            if "run_id" in frame.columns:  # a name beside its run id must be that run's name
                for run, cell in zip(frame["run_id"].astype(str), cells):
                    if cell in valid and run in names:
                        assert cell == names[run], (page, column, run, cell)
                        checked += 1
    for metric in at.metric:
        assert metric.value not in wrong or metric.value in valid, (page, metric.label, metric.value)
    return checked


@pytest.mark.parametrize("page", PAGES)
def test_every_page_names_runs_one_way(dashboard_artifacts, names, page, monkeypatch, loopback):
    at = render_page(dashboard_artifacts, "fixture", page, monkeypatch)
    check_page(at, names, page)


def test_every_run_id_is_named_one_way_in_its_browser_and_map(dashboard_artifacts, names, monkeypatch, loopback):
    """The image browser opened on every run id (and the embedding map on every single run) shows that run's name."""
    for run in names:
        at = render_page(dashboard_artifacts, "fixture", "misclassified", monkeypatch, run=run, split="test")
        assert at.selectbox(key="br_run").value == run
        assert names[run] in at.selectbox(key="br_run").options, run
        assert names[run] in " ".join(h.value for h in at.subheader) + " ".join(c.value for c in at.caption) \
            or at.selectbox(key="br_run").format_func(run) == names[run], run
        check_page(at, names, f"images?run={run}")
    emb = pd.read_parquet(dashboard_artifacts / "fixture" / "embedding.parquet")
    for run in sorted(r for r in emb["run_id"].unique() if is_run_id(r)):
        at = render_page(dashboard_artifacts, "fixture", "embedding", monkeypatch, run=run)
        assert at.selectbox(key="em_run").format_func(run) == names[run]
        check_page(at, names, f"embedding?run={run}")


def test_compare_page_keeps_each_experiments_names(dashboard_artifacts, names, tmp_path, monkeypatch, loopback):
    """A second experiment with two members (V1-B0, V2-B0) and their stacking ensemble: on the compare page the fixture's
    runs keep the fixture's names and the small experiment's ensemble keeps the name its own pages give it."""
    root = tmp_path / "artifacts"
    shutil.copytree(dashboard_artifacts / "fixture", root / "fixture")
    small = root / "small"
    shutil.copytree(dashboard_artifacts / "fixture", small)
    preds = pd.read_parquet(small / "predictions.parquet")
    stack = "ensemble:stacking:v1_b0+v2_b0"
    keep = preds[preds["run_id"].isin(["v1_b0", "v2_b0"])]
    preds = pd.concat([keep, keep[keep["run_id"] == "v1_b0"].assign(run_id=stack, kind="ensemble", model="stacking")])
    preds.to_parquet(small / "predictions.parquet")
    metrics = pd.read_parquet(small / "metrics.parquet")
    keep = metrics[metrics["run_id"].isin(["v1_b0", "v2_b0"])]
    pd.concat([keep, keep[keep["run_id"] == "v1_b0"].assign(run_id=stack, kind="ensemble")]).to_parquet(small / "metrics.parquet")
    small_names = run_aliases(["v1_b0", "v2_b0", stack], ["v1_b0", "v2_b0"])
    assert small_names[stack] == "All-2 stacking"
    for current, expected in (("fixture", {**small_names, **names}), ("small", {**names, **small_names})):
        at = render_page(root, current, "compare_experiments", monkeypatch, exps=["fixture", "small"])
        table = next(frame for frame, _ in shown_frames(at) if "run" in frame and "run_id" in frame)
        for run, name in zip(table["run_id"], table["run"]):
            assert name == expected[run], (current, run, name)
        assert stack in set(table["run_id"])
