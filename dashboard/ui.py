"""Shared UI pieces: the experiment picker, page start, 'what is missing' messages, filter chips, the clickable
confusion matrix, the heatmap colour bar and number formatting."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import state
from dashboard.data import PROJECT_ROOT, Experiment, artifacts_root, get_experiment, list_experiments, reset_problems, source_of
from dashboard.text import code, plain, plain_figure
from pipeline.artifacts.status import format_seconds, is_stale, read_status
from pipeline.core.errors import PipelineError
from pipeline.core.heatmaps import colorize

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CELLS = {"tn": (0, 0), "fp": (0, 1), "fn": (1, 0), "tp": (1, 1)}  # cell -> (true, predicted)
CELL_NAMES = {"tp": "malignant predicted malignant (TP)", "fn": "malignant predicted benign (FN)",
              "fp": "benign predicted malignant (FP)", "tn": "benign predicted benign (TN)"}
CLASS_NAMES = {0: "benign", 1: "malignant"}
BETTER, WORSE, NEUTRAL = "#1a7f37", "#cf222e", "#6e7781"


def loopback_warning() -> None:
    """Warn on screen when the server listens beyond this machine (the dashboard serves experiment images)."""
    address = st.get_option("server.address")
    if (address or "") not in LOOPBACK:
        st.warning(f"This dashboard listens on {plain(address or 'every network interface')}, not only on 127.0.0.1: "
                   "anyone who can reach this machine can browse the experiment's images. Start it with "
                   "`python -m dashboard` (or `make dashboard`) to keep it local.", icon=":material/public:")


def experiment_picker() -> Experiment | None:
    """The sidebar experiment picker shared by every page (rendered once, by app.py); its value is in the URL."""
    reset_problems()
    names = list_experiments()
    if not names:
        return None
    env = os.environ.get("HISTOCOMPARE_EXPERIMENT", "demo")
    sources = {n: source_of(artifacts_root() / n) for n in names}
    name = state.selectbox("Experiment", names, key="exp", param=state.EXPERIMENT_PARAM,
                           default=env if env in names else names[0], where=st.sidebar,
                           format_func=lambda n: f"↳ {n} (external, of {sources[n]})" if sources.get(n) else n)
    exp = get_experiment(name)
    if exp.synthetic:
        st.sidebar.warning("SYNTHETIC demo data: results say nothing about real histopathology.")
    if exp.external is not None:
        st.sidebar.info(f"External validation of **{plain(str(exp.external.get('source_name')))}**: its models and ensembles, "
                        f"unchanged, on new images{'' if exp.labelled else ' (no labels: predictions only)'}.")
    return exp


def current_experiment() -> Experiment | None:
    name = st.session_state.get("exp")
    return get_experiment(name) if name else None


def page_start(title: str) -> Experiment:
    """Title + the experiment chosen in the sidebar; stops the page when there is no experiment yet."""
    st.title(title)
    exp = current_experiment()
    if exp is None or not exp.path.is_dir():
        st.warning("No experiments under the artifacts folder. Create one with `make demo` (synthetic data) or "
                   "`python -m pipeline run --config pipeline/configs/sample.toml`.")
        st.stop()
    return exp


def run_command(exp: Experiment) -> str:
    """The command that (re)runs, or resumes, the experiment's pipeline."""
    if exp.name == "demo":
        return "make demo"
    preset = PROJECT_ROOT / "pipeline" / "configs" / f"{exp.name}.toml"
    return f"python -m pipeline run --config {preset.relative_to(PROJECT_ROOT) if preset.exists() else 'PRESET.toml'}"


FOLLOW_SECONDS = 3


def _pipeline_status(exp: Experiment | None) -> dict | None:
    try:
        return read_status(exp.catalog) if exp is not None else None
    except PipelineError:  # a damaged status file is the Pipeline page's to report
        return None


def follow_pipeline(exp: Experiment | None) -> None:
    """While a pipeline run writes this experiment, show its progress in the sidebar and rerun the open page when a
    stage or run finishes (the status file's ``changes`` moves), so every page fills in without a reload.

    Only while something is running (or no experiment exists yet): a finished experiment's pages stay still.
    """
    status = _pipeline_status(exp)
    if exp is not None and (status is None or status.get("state") != "running" or is_stale(status)):
        return
    key = f"_follow_{exp.name if exp else ''}"

    @st.fragment(run_every=FOLLOW_SECONDS)
    def watch() -> None:
        try:
            follow(exp)
        except (TypeError, ValueError, KeyError, AttributeError):  # foreign content: the Pipeline page reports it
            pass

    def follow(exp: Experiment | None) -> None:
        now = _pipeline_status(exp)
        token = ((now or {}).get("changes"), (now or {}).get("state")) if exp is not None else tuple(list_experiments())
        if st.session_state.get(key, token) != token:
            st.session_state[key] = token
            st.rerun()  # the whole app: the open page rereads its artifacts (the loaders are keyed on mtime)
        st.session_state[key] = token
        if now is not None and now.get("state") == "running":
            runs = now.get("runs") or {}
            stage = next((s["name"] for s in now.get("stages", []) if s["state"] == "running"), "starting")
            etas = [r.get("eta_s") for r in runs.get("running") or [] if r.get("eta_s") is not None]
            eta = f", current run ETA {format_seconds(max(etas))}" if etas else ""
            done, total = plain(runs.get("done", 0)), plain(runs.get("total", 0))
            st.caption(f":material/sync: Pipeline running: {plain(stage)}, {done}/{total} runs{eta}. Pages fill in as it finishes.")

    with st.sidebar:
        watch()


def require_labels(exp: Experiment, what: str) -> None:
    """Stop a page that needs the true class when an external validation was scored without labels."""
    if exp.labelled:
        return
    st.info(f"{what} needs the true class of each image, and this external validation has no labels. Score the images "
            f"again with a labels file:\n\n{code(f'python -m pipeline predict SOURCE --data ROOT --out {exp.cli_dir} --labels FILE.csv')}")
    st.stop()


def require(exp: Experiment, frame, artifact: str, what: str, path=None) -> None:
    """Stop the page with a clear message when an artifact is missing (a corrupt one has been reported already)."""
    if frame is not None and not (isinstance(frame, pd.DataFrame) and frame.empty):
        return
    if path is not None and exp.is_corrupt(path):
        st.stop()
    st.info(f"{what} not found for this experiment. Produce it with:\n\n{code(exp.command(artifact))}")
    st.stop()


# Headline numbers and their labels wrap instead of being cut to "0..." or "Balanced ac..." in narrow columns, and
# numbers shrink a little on narrow windows. A constant stylesheet (no artifact text in it), so st.html is safe here.
WIDTH_CSS = """<style>
[data-testid="stMetricValue"], [data-testid="stMetricValue"] > div {
  overflow: visible !important; text-overflow: clip !important; white-space: normal !important; overflow-wrap: anywhere; }
[data-testid="stMetricLabel"], [data-testid="stMetricLabel"] * {
  overflow: visible !important; text-overflow: clip !important; white-space: normal !important; overflow-wrap: break-word; }
@media (max-width: 1000px) { [data-testid="stMetricValue"] { font-size: 1.6rem !important; } }
</style>"""


NARROW_PX = 1000  # below this window width the sidebar starts collapsed (Streamlit's own "auto" stops at 768 px)
# Runs in the component's iframe (same origin as the app): once per page load, on a narrow window, click the sidebar's
# collapse button; the reader can open it again. A constant script: no artifact text in it.
COLLAPSE_JS = """<script>
const top_ = window.parent;
if (!top_.__histocompareSidebar && top_.innerWidth < NARROW_PX) {
  top_.__histocompareSidebar = true;
  const tryCollapse = (left) => {
    const bar = top_.document.querySelector('[data-testid="stSidebar"]');
    const button = top_.document.querySelector('[data-testid="stSidebarCollapseButton"] button');
    if (bar && bar.getAttribute('data-collapsed') === 'false' && button) { button.click(); return; }
    if (left > 0) setTimeout(() => tryCollapse(left - 1), 150);
  };
  tryCollapse(40);
}
</script>""".replace("NARROW_PX", str(NARROW_PX))


def readable_at_any_width() -> None:
    """Once per run, from app.py: the stylesheet above, and the sidebar collapsed on narrow windows."""
    st.html(WIDTH_CSS)
    with st.sidebar:
        st.iframe(COLLAPSE_JS, height=1)


def fmt(value, digits: int = 4) -> str:
    """A number with a fixed number of decimals ('n/a' for NaN/None): tables never mix 0.9882 with 1."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def for_plotly(text: object) -> str:
    """Plotly renders a subset of HTML (``<a href>``, ``<img>`` is dropped, ``<b>``): escape artifact text."""
    return html.escape(str(text))


def for_plotly_column(values: pd.Series) -> pd.Series:
    """:func:`for_plotly` of every value of a column, vectorised (``html.escape`` with ``quote=True``)."""
    text = values.astype(str)
    for raw, safe in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#x27;")):
        text = text.str.replace(raw, safe, regex=False)
    return text.reset_index(drop=True)


# -- filter chips --------------------------------------------------------------------------------------------
def chips(items: list[tuple[str, Callable[[], None]]], key: str, on_clear_all: Callable[[], None] | None = None) -> None:
    """Active filters as removable chips in the main area: one button per filter value (click removes it)."""
    if not items:
        return
    with st.container(horizontal=True, key=f"{key}_chips"):
        st.caption("Active filters:", width="content")
        for i, (label, remove) in enumerate(items):
            st.button(f"{plain(label)} ✕", key=f"{key}_chip_{i}", on_click=remove, type="secondary", help="remove this filter")
        if on_clear_all and len(items) > 1:
            st.button("Clear all", key=f"{key}_chip_all", on_click=on_clear_all, type="tertiary")


def page_range(total: int, page: int, size: int) -> str:
    """'13–24 of 197' (the items shown, and how many there are)."""
    if total == 0:
        return "0 of 0"
    first = (page - 1) * size + 1
    return f"{first}–{min(total, page * size)} of {total}"


def pager(total: int, size: int, *, key: str, param: str) -> int:
    """Page number (1-based) of ``total`` items, bound to the URL; shows '1–12 of N' and previous/next buttons."""
    pages = max(1, math.ceil(total / size))
    state.seed(key, param, 1, cast=int)
    if not 1 <= st.session_state[key] <= pages:
        st.session_state[key] = 1

    def move(step: int) -> None:
        st.session_state[key] = min(pages, max(1, st.session_state[key] + step))

    with st.container(horizontal=True, vertical_alignment="center", key=f"{key}_bar"):
        st.markdown(f"**{page_range(total, st.session_state[key], size)}**")
        if pages > 1:
            st.button("Previous", key=f"{key}_prev", on_click=move, args=(-1,), disabled=st.session_state[key] <= 1,
                      icon=":material/chevron_left:")
            st.button("Next", key=f"{key}_next", on_click=move, args=(1,), disabled=st.session_state[key] >= pages,
                      icon=":material/chevron_right:")
            st.caption(f"page {st.session_state[key]} of {pages}")
    state.publish(param, st.session_state[key], 1)
    return st.session_state[key]


# -- figures ---------------------------------------------------------------------------------------------------
def confusion_figure(counts: dict, title: str, normalize: bool = False, selected: str | None = None) -> go.Figure:
    """A 2x2 confusion matrix drawn as four square markers, so a click on a cell is a point selection
    (Streamlit returns no selection for heatmaps). Rows: true class; columns: predicted class."""
    cells = list(CELLS)
    truth_totals = {0: counts["tn"] + counts["fp"], 1: counts["fn"] + counts["tp"]}
    values = [counts[c] / max(truth_totals[CELLS[c][0]], 1) if normalize else counts[c] for c in cells]
    text = [f"{v:.2f}" if normalize else f"{int(v)}" for v in values]
    top = max(max(values), 1e-9)
    fig = go.Figure(go.Scatter(
        x=[CELLS[c][1] for c in cells], y=[CELLS[c][0] for c in cells], mode="markers+text", text=text,
        customdata=cells, hovertext=[f"{CELL_NAMES[c]}: {counts[c]} image(s); click to list them" for c in cells],
        hoverinfo="text", textfont=dict(size=18, color=["white" if v / top > 0.55 else "black" for v in values]),
        marker=dict(symbol="square", size=84, color=values, colorscale="Blues", cmin=0, cmax=top,
                    line=dict(width=[4 if c == selected else 0 for c in cells], color="#f28e2b")),
    ))
    axis = dict(tickvals=[0, 1], range=[-0.6, 1.6], showgrid=False, zeroline=False, fixedrange=True)
    fig.update_layout(title=for_plotly(title), height=300, margin=dict(l=10, r=10, t=40, b=10), showlegend=False,
                      xaxis=dict(axis, ticktext=["pred benign", "pred malignant"]),
                      yaxis=dict(axis, ticktext=["true benign", "true malignant"], range=[1.6, -0.6]),
                      clickmode="event+select", dragmode=False, plot_bgcolor="white")
    return plain_figure(fig)


def difference_figure(counts_a: dict, counts_b: dict, title: str) -> go.Figure:
    """B minus A per cell, coloured by what the change means for B: more TP/TN is better, more FN/FP is worse."""
    cells = list(CELLS)
    diff = {c: counts_b[c] - counts_a[c] for c in cells}
    goodness = [diff[c] if c in ("tp", "tn") else -diff[c] for c in cells]
    words = ["" if d == 0 else (" better" if g > 0 else " worse") for d, g in zip(diff.values(), goodness)]
    colours = [NEUTRAL if g == 0 else (BETTER if g > 0 else WORSE) for g in goodness]
    fig = go.Figure(go.Scatter(
        x=[CELLS[c][1] for c in cells], y=[CELLS[c][0] for c in cells], mode="markers+text",
        text=[f"{diff[c]:+d} {c.upper()}{w}" for c, w in zip(cells, words)], hoverinfo="skip",
        textfont=dict(size=15, color="white"), marker=dict(symbol="square", size=84, color=colours),
    ))
    axis = dict(tickvals=[0, 1], range=[-0.6, 1.6], showgrid=False, zeroline=False, fixedrange=True)
    fig.update_layout(title=for_plotly(title), height=300, margin=dict(l=10, r=10, t=40, b=10), showlegend=False,
                      xaxis=dict(axis, ticktext=["pred benign", "pred malignant"]),
                      yaxis=dict(axis, ticktext=["true benign", "true malignant"], range=[1.6, -0.6]),
                      dragmode=False, plot_bgcolor="white")
    return plain_figure(fig)


def colour_bar(where=st) -> None:
    """The heatmap colour scale (0 = least, 1 = most evidence), shown once per page."""
    bar = colorize(np.tile(np.linspace(0, 1, 256), (10, 1)))
    where.image(bar, width=256)
    where.caption("Grad-CAM weight: 0 (blue, least evidence) → 1 (red, most evidence) for the explained class")
