"""Confusion matrices side by side (counts and row-normalized), their difference, and the images in any cell."""

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboard.data import image_for
from dashboard.ui import CELL_NAMES, confusion_figure, page_start, require, short_run
from pipeline.core.metrics import confusion_counts

exp = page_start("Confusion matrices")
preds = exp.predictions()
require(preds, "predictions.parquet", f"python -m pipeline run --config pipeline/configs/{exp.name}.toml")
run_ids = sorted(preds.run_id.unique(), key=lambda r: (r.startswith("ensemble"), r))
f1, f2, f3 = st.columns(3)
split = f1.radio("Split", ["test", "val"], horizontal=True, key="cm_split")
mags = f2.multiselect("Magnification", sorted(preds.magnification.dropna().unique()), key="cm_mag")
subtypes = f3.multiselect("Subtype", sorted(preds.subtype.dropna().unique()), key="cm_subtype")
chosen = st.multiselect("Runs and ensembles (two or more to compare)", run_ids, default=run_ids[:2], key="cm_runs")
normalize = st.toggle("Row-normalized", value=False, key="cm_norm")
view = preds[(preds.split == split) & preds.run_id.isin(chosen)]
if mags:
    view = view[view.magnification.isin(mags)]
if subtypes:
    view = view[view.subtype.isin(subtypes)]
if view.empty:
    st.info("No predictions match these filters.")
    st.stop()

counts = {r: confusion_counts(g.label, g.pred) for r, g in view.groupby("run_id")}
cols = st.columns(min(max(len(chosen), 1), 4))
for i, run in enumerate(r for r in chosen if r in counts):
    cols[i % len(cols)].plotly_chart(confusion_figure(counts[run], short_run(run, 40), normalize), width="stretch", key=f"cm_{i}")
present = [r for r in chosen if r in counts]
if len(present) >= 2:
    a, b = present[:2]
    diff = {k: counts[b][k] - counts[a][k] for k in counts[a]}
    m = np.array([[diff["tn"], diff["fp"]], [diff["fn"], diff["tp"]]])
    fig = go.Figure(go.Heatmap(z=m, x=["pred benign", "pred malignant"], y=["true benign", "true malignant"], text=m,
                               texttemplate="%{text:+d}", colorscale="RdBu", zmid=0, showscale=False))
    fig.update_layout(title=f"Difference: {short_run(b, 30)} minus {short_run(a, 30)}", height=260,
                      margin=dict(l=10, r=10, t=40, b=10), yaxis_autorange="reversed")
    st.plotly_chart(fig, width="stretch", key="cm_diff")

st.subheader("Images in a cell")
run = st.selectbox("Run", present, key="cm_cell_run")
cell_cols = st.columns(4)
for col, cell in zip(cell_cols, ("tp", "fn", "fp", "tn")):
    if col.button(f"{cell.upper()}: {counts[run][cell]}", key=f"cell_{cell}", help=CELL_NAMES[cell]):
        st.session_state["cm_cell"] = cell
cell = st.session_state.get("cm_cell")
if cell:
    rows = view[view.run_id == run]
    truth, pred = {"tp": (1, 1), "fn": (1, 0), "fp": (0, 1), "tn": (0, 0)}[cell]
    rows = rows[(rows.label == truth) & (rows.pred == pred)].sort_values("prob_malignant", ascending=(pred == 1))
    st.write(f"**{CELL_NAMES[cell]}** for {run}: {len(rows)} image(s)")
    grid = st.columns(6)
    for i, (_, r) in enumerate(rows.head(36).iterrows()):
        img = image_for(exp, r.image_id, 200)
        with grid[i % 6]:
            if img is not None:
                st.image(img, caption=f"{r.image_id} P(m)={r.prob_malignant:.2f}")
            else:
                st.caption(f"{r.image_id} (image file not available)")
    if len(rows) and st.button("Open these in the image browser", key="cm_open"):
        st.session_state["browser_ids"] = rows.image_id.tolist()
        st.session_state["browser_run"] = run
        st.switch_page(str(Path(__file__).resolve().parent / "misclassified.py"))
