"""Training curves: loss and accuracy per epoch (train vs val), several runs overlaid, best epoch marked."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.ui import page_start, require, run_colour

exp = page_start("Training curves")
runs = [r for r in exp.catalog.run_ids_on_disk() if exp.catalog.run(r).history.exists()]
require(pd.DataFrame({"r": runs}), "Training history", f"python -m pipeline train artifacts/{exp.name} --model efficientnet_b0")
chosen = st.multiselect("Runs", runs, default=runs[: min(4, len(runs))], key="curves_runs")
metric = st.radio("Metric", ["loss", "accuracy"], horizontal=True, key="curves_metric")
fig = go.Figure()
rows = []
for run in chosen:
    hist = exp.history(run)
    if hist is None or hist.empty:
        continue
    colour = run_colour(run)
    fig.add_scatter(x=hist.epoch, y=hist[metric], name=f"{run} train", line=dict(color=colour, dash="dot"))
    fig.add_scatter(x=hist.epoch, y=hist[f"val_{metric}"], name=f"{run} val", line=dict(color=colour))
    info = exp.run_info(run) or {}
    best = info.get("best_epoch") or int(hist.val_accuracy.idxmax()) + 1
    best_row = hist[hist.epoch == best]
    if len(best_row):
        fig.add_scatter(x=best_row.epoch, y=best_row[f"val_{metric}"], mode="markers", marker=dict(size=12, symbol="star", color=colour),
                        name=f"{run} best epoch {best}")
    rows.append({"run": run, "epochs": len(hist), "best_epoch": best, "best_val_accuracy": info.get("best_val_accuracy"),
                 "test_accuracy": info.get("test_accuracy"),
                 "s/epoch (after 1st)": hist.seconds.iloc[1:].mean() if len(hist) > 1 else hist.seconds.mean(),
                 "img/s": info.get("train_images_per_s")})
fig.update_layout(xaxis_title="epoch", yaxis_title=metric, height=480)
st.plotly_chart(fig, width="stretch")
st.dataframe(pd.DataFrame(rows), hide_index=True)
st.caption("Dotted: training; solid: validation; star: the checkpoint kept (best validation accuracy). "
           "The first epoch includes graph tracing, so its time is not representative.")
