"""The vectorised shortcuts the pages take at ten times BreakHis (issue 26) say exactly what the slow code said.

Each shortcut is compared with the plain Python it replaced, on generated inputs: the text check of the catalog
entries (a C inference instead of ``isinstance`` per value), the escaping of hover texts (a column at once instead
of ``html.escape`` per value) and the per-frame memo of the run ids (a new frame is scanned again).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard.runs import identify
from dashboard.ui import for_plotly_column
from pipeline.artifacts.schemas import _all_text

values = st.one_of(st.text(max_size=6), st.integers(-3, 3), st.floats(allow_nan=False, width=32), st.binary(max_size=3),
                   st.booleans(), st.lists(st.text(max_size=2), max_size=2))


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=8))
def test_the_text_check_agrees_with_isinstance_per_value(items):
    column = pd.Series(items, dtype=object)
    assert _all_text(column) == all(isinstance(v, str) for v in items)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=8), max_size=8))
def test_hover_escaping_of_a_column_equals_html_escape_per_value(items):
    assert for_plotly_column(pd.Series(items, dtype=object)).tolist() == [html.escape(v) for v in items]


def _preds(run_ids: list[str]) -> pd.DataFrame:
    n = len(run_ids)
    return pd.DataFrame({"run_id": run_ids, "kind": ["single"] * n, "stain": ["none"] * n, "image_id": [f"i{k}" for k in range(n)],
                         "split": ["test"] * n, "label": [0] * n, "pred": [0] * n, "prob_malignant": np.zeros(n)})


def test_runs_are_rescanned_for_a_new_frame_and_not_for_the_same_one(monkeypatch):
    import dashboard.runs

    scans = []
    real = dashboard.runs.member_runs
    monkeypatch.setattr(dashboard.runs, "member_runs", lambda frame: scans.append(len(frame)) or real(frame))
    first = _preds(["v1_b0", "v2_b0"])
    assert identify(first).ids == ["v1_b0", "v2_b0"]
    assert identify(first).members == ["v1_b0", "v2_b0"]
    assert len(scans) == 1  # the same frame again: not scanned again
    second = _preds(["v1_b0", "v1_b1", "bad id!"])  # another table: its own runs and skipped ids, not the memo's
    runs = identify(second)
    assert (runs.ids, runs.skipped) == (["v1_b0", "v1_b1"], ["bad id!"])
    del first
    third = _preds(["v2_b1"])  # may reuse the freed frame's id: the weak reference tells them apart
    assert identify(third).ids == ["v2_b1"]
    assert len(scans) == 3  # each new frame scanned once


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["r1", "r2"]), st.sampled_from(["i1", "i2", "i3"]), st.integers(1, 2),
                          st.sampled_from(["p1", "p2"]), st.sampled_from(["p1", "p2"])), max_size=12))
def test_the_cached_nearest_colouring_equals_the_inline_filter_it_replaced(tmp_path_factory, rows):
    """``cached.nearest_same_patient`` against the page's former inline code (rank-1 rows of the run, first per image)."""
    from types import SimpleNamespace

    from dashboard.cached import nearest_same_patient
    from pipeline.artifacts.io import write_parquet

    frame = pd.DataFrame(rows, columns=["run_id", "image_id", "rank", "patient_id", "neighbour_patient"])
    path = tmp_path_factory.mktemp("nb") / "neighbours.parquet"
    write_parquet(frame.astype({"rank": "int64"}), path)
    exp = SimpleNamespace(catalog=SimpleNamespace(neighbours=path))
    for run in ("r1", "r2"):
        first = frame[(frame["run_id"] == run) & (frame["rank"] == 1)].drop_duplicates("image_id")
        expected = {i: p == q for i, p, q in zip(first["image_id"], first["patient_id"], first["neighbour_patient"])}
        assert nearest_same_patient(exp, run).to_dict() == expected


@pytest.mark.parametrize("dtype", ["dictionary", "large_string", "binary"])
def test_the_text_check_judges_arrow_columns_by_their_values(dtype):
    import pyarrow as pa

    values = ["a", "b", "a"]
    array = {"dictionary": pa.array(values).dictionary_encode(), "large_string": pa.array(values, pa.large_string()),
             "binary": pa.array([v.encode() for v in values])}[dtype]
    column = pd.Series(pd.arrays.ArrowExtensionArray(array))
    assert _all_text(column) == (dtype != "binary")  # bytes are not text; a dictionary of strings is


def test_every_methods_grad_cam_scores_are_checked_against_their_entry(tmp_path):
    """``gradcam/<method>/scores.parquet`` of every method has the Grad-CAM scores entry (gradcam++ and scorecam were
    missed: only a parent folder named ``gradcam`` matched, which also caught each run's own score file)."""
    from pipeline.artifacts.catalog import GRADCAM_METHODS, Catalog
    from pipeline.artifacts.schemas import entry_for

    catalog = Catalog(tmp_path)
    for method in GRADCAM_METHODS:
        assert entry_for(catalog.gradcam_scores(method)) == "gradcam_scores"
        assert entry_for(catalog.gradcam_run_scores(method, "v1_b0")) is None
