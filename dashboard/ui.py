"""Shared UI pieces: the experiment picker, 'what is missing' messages, colours and figures."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.data import Experiment, get_experiment, list_experiments
from pipeline.artifacts.catalog import parse_run_id

FAMILY_COLOURS = {"v1": "#1f77b4", "v2": "#d62728", "ensemble": "#2ca02c", "subset": "#9467bd", "all": "#2ca02c"}
CELL_NAMES = {"tp": "malignant predicted malignant (TP)", "fn": "malignant predicted benign (FN)",
              "fp": "benign predicted malignant (FP)", "tn": "benign predicted benign (TN)"}


def pick_experiment() -> Experiment | None:
    """Sidebar experiment picker shared by every page (remembered in session state)."""
    names = list_experiments()
    if not names:
        st.warning("No experiments under artifacts/. Create one with `make demo` (synthetic data) or "
                   "`python -m pipeline run --config pipeline/configs/sample.toml`.")
        return None
    default = st.session_state.get("experiment") or os.environ.get("HISTOCOMPARE_EXPERIMENT", "demo")
    index = names.index(default) if default in names else 0
    name = st.sidebar.selectbox("Experiment", names, index=index, key="experiment_picker")
    st.session_state["experiment"] = name
    exp = get_experiment(name)
    if exp.synthetic:
        st.sidebar.warning("SYNTHETIC demo data: results say nothing about real histopathology.")
    return exp


def page_start(title: str) -> Experiment:
    """Title + experiment picker; stops the page when there is no experiment yet."""
    st.title(title)
    exp = pick_experiment()
    if exp is None:
        st.stop()
    return exp


def require(frame, what: str, command: str) -> None:
    """Stop the page with a clear message when an artifact is missing (never a traceback)."""
    if frame is None or (isinstance(frame, pd.DataFrame) and frame.empty):
        st.info(f"{what} not found for this experiment. Produce it with:\n\n`{command}`")
        st.stop()


def run_colour(run_id: str, family: str | None = None) -> str:
    return FAMILY_COLOURS.get(family or parse_run_id(run_id).family, "#7f7f7f")


def confusion_figure(counts: dict, title: str, normalize: bool = False) -> go.Figure:
    """2x2 confusion matrix (rows: true benign/malignant; columns: predicted)."""
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=float)
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    text = [[f"{shown[i, j]:.2f}" if normalize else f"{int(shown[i, j])}" for j in range(2)] for i in range(2)]
    fig = go.Figure(go.Heatmap(z=shown, x=["pred benign", "pred malignant"], y=["true benign", "true malignant"],
                               text=text, texttemplate="%{text}", colorscale="Blues", showscale=False))
    fig.update_layout(title=title, height=260, margin=dict(l=10, r=10, t=40, b=10), yaxis_autorange="reversed")
    return fig


def short_run(run_id: str, width: int = 48) -> str:
    return run_id if len(run_id) <= width else run_id[: width - 1] + "…"


def csv_download(frame: pd.DataFrame, name: str, label: str = "Download CSV") -> None:
    st.download_button(label, frame.to_csv(index=False).encode(), file_name=name, mime="text/csv", key=f"dl_{name}")
