"""The vectorised shortcuts the pages take at ten times BreakHis (issue 26) say exactly what the slow code said.

Each shortcut is compared with the plain Python it replaced, on generated inputs: the text check of the catalog
entries (a C inference instead of ``isinstance`` per value), the escaping of hover texts (a column at once instead
of ``html.escape`` per value) and the per-frame memo of the run ids (a new frame is scanned again).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
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


def test_runs_are_rescanned_for_a_new_frame_and_not_for_the_same_one():
    first = _preds(["v1_b0", "v2_b0"])
    assert identify(first).ids == ["v1_b0", "v2_b0"]
    assert identify(first).members == ["v1_b0", "v2_b0"]
    second = _preds(["v1_b0", "v1_b1", "bad id!"])  # another table: its own runs and skipped ids, not the memo's
    runs = identify(second)
    assert (runs.ids, runs.skipped) == (["v1_b0", "v1_b1"], ["bad id!"])
    del first
    third = _preds(["v2_b1"])  # may reuse the freed frame's id: the weak reference tells them apart
    assert identify(third).ids == ["v2_b1"]
