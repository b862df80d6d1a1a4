"""Training curves: loss and accuracy per epoch (train vs val), several runs overlaid, each in its own fixed
colour, best epoch marked."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import state, ui
from dashboard.runs import identify
from dashboard.text import code
from dashboard.text import plain_figure
from pipeline.artifacts.catalog import parse_run_id



def _text(value: object, decimals: int) -> str:
    """A number as people read it; ``n/a`` when a run did not record it (Streamlit draws a missing number as "None")."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if pd.isna(number) else f"{number:.{decimals}f}"


exp = ui.page_start("Training curves")
on_disk = [r for r in exp.catalog.run_ids_on_disk() if exp.catalog.run(r).history.exists()]
if not on_disk:
    st.info(f"No training history yet. Produce it with {code(exp.command('history'))}")
    st.stop()
runs = identify(pd.DataFrame({"run_id": on_disk, "kind": "single", "stain": [parse_run_id(r).stain for r in on_disk]}))
chosen = state.multiselect("Runs", runs.ids, key="curves_runs", param="runs", default=runs.ids[:4], format_func=runs.label,
                           help="Pick runs to overlay (type part of a name, e.g. V2-B1)")
metric = state.radio("Metric", ["loss", "accuracy"], key="curves_metric", param="metric", horizontal=True)
log_scale = st.toggle("Log scale", key=f"curves_log_{metric}", value=metric == "loss",
                      help="One diverging epoch (a validation loss of 30 among values near 0.5) flattens every other curve "
                           "on a linear axis; a log axis keeps them readable")
fig = go.Figure()
rows = []
for run in chosen:
    hist = exp.history(run)
    if hist is None or hist.empty:
        continue
    colour, name = runs.colour[run], runs.label(run)
    fig.add_scatter(x=hist.epoch, y=hist[metric], name=f"{name} train", line=dict(color=colour, dash="dot"), legendgroup=run)
    fig.add_scatter(x=hist.epoch, y=hist[f"val_{metric}"], name=f"{name} val", line=dict(color=colour), legendgroup=run)
    info = exp.run_info(run) or {}
    best = info.get("best_epoch") or int(hist.val_accuracy.idxmax()) + 1
    best_row = hist[hist.epoch == best]
    if len(best_row):
        fig.add_scatter(x=best_row.epoch, y=best_row[f"val_{metric}"], mode="markers", marker=dict(size=13, symbol="star", color=colour),
                        name=f"{name} best epoch {best}", legendgroup=run)
    rows.append({"run": name, "epochs": len(hist), "best epoch": best, "best val accuracy": _text(info.get("best_val_accuracy"), 4),
                 "test accuracy": _text(info.get("test_accuracy"), 4),
                 "s/epoch (after 1st)": _text(hist.seconds.iloc[1:].mean() if len(hist) > 1 else hist.seconds.mean(), 1),
                 "img/s": _text(info.get("train_images_per_s"), 1)})
fig.update_layout(xaxis_title="epoch", yaxis_title=metric, height=480)
if log_scale:  # labels at 1, 2, 5 of each decade only: plotly's default labels every digit and they pile up
    fig.update_yaxes(type="log", dtick="D2", tickformat=".2~g", minor=dict(showgrid=True))
st.plotly_chart(plain_figure(fig), width="stretch", key="curves_chart")
st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
    "run": st.column_config.TextColumn("Run", pinned=True),
    **{c: st.column_config.TextColumn(c, alignment="right")
       for c in ("best val accuracy", "test accuracy", "s/epoch (after 1st)", "img/s")}})
st.caption("Dotted: training; solid: validation; star: the checkpoint kept (best validation accuracy). Each run has one "
           "colour on every page. The first epoch includes graph tracing, so its time is not representative.")
