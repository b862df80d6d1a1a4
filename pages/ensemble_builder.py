"""Ensemble builder: toggle members, pick the rule and threshold; everything re-scores instantly.

Scoring uses the same pure functions as the pipeline (``pipeline.core.ensemble``, ``pipeline.core.metrics``) on
probability matrices cached once per experiment, so an interaction costs well under 200 ms.
"""

import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from sklearn.metrics import roc_curve

from dashboard.data import cached_weights, member_matrices
from dashboard.ui import FAMILY_COLOURS, confusion_figure, csv_download, page_start, require, run_colour
from pipeline.artifacts.catalog import parse_run_id
from pipeline.artifacts.predictions import member_runs
from pipeline.core.ensemble import agreement_matrix, combine
from pipeline.core.metrics import binary_metrics
from pipeline.core.reference import load_reference

exp = page_start("Ensemble builder")
preds = exp.predictions()
require(preds, "predictions.parquet", f"python -m pipeline train artifacts/{exp.name} --model efficientnet_b0")
members = member_runs(preds)
if len(members) < 1:
    st.info("No single-model runs without stain normalization yet: train some with `python -m pipeline train`.")
    st.stop()
path = exp.catalog.predictions
arrays = member_matrices(str(path), path.stat().st_mtime, tuple(members))

st.caption("Members (toggle to add or remove; the study ensembled the V1 family and the V2 family separately)")
chosen = []
for row in ([m for m in members if parse_run_id(m).family == "v1"], [m for m in members if parse_run_id(m).family == "v2"]):
    if not row:
        continue
    cols = st.columns(max(len(row), 5))
    for col, name in zip(cols, row):
        if col.checkbox(name, value=True, key=f"member_{name}"):
            chosen.append(name)
c1, c2, c3 = st.columns([2, 3, 2])
method = c1.radio("Rule", ["soft", "hard", "weighted"], horizontal=True, key="ens_method",
                  help="soft: mean probability; hard: majority vote (ties -> mean probability); weighted: weights fitted on validation")
threshold = c2.slider("Threshold (P(malignant) >= threshold is malignant)", 0.05, 0.95, 0.5, 0.05, key="ens_threshold")
split = c3.radio("Evaluate on", ["test", "val"], horizontal=True, key="ens_split")
if not chosen:
    st.warning("Select at least one member.")
    st.stop()

@st.cache_data(show_spinner=False, max_entries=64)
def all_member_metrics(key: tuple, split: str, threshold: float) -> dict:
    """Each member's metrics alone (cached: they do not change when other members are toggled)."""
    member_probs, member_meta = arrays[split]
    labels = member_meta["label"].to_numpy()
    return {m: binary_metrics(labels, member_probs[i], None, threshold) for i, m in enumerate(members)}


t0 = time.perf_counter()
member_metrics = all_member_metrics((str(path), path.stat().st_mtime, tuple(members)), split, threshold)
idx = [members.index(m) for m in chosen]
probs, meta = arrays[split]
val_probs, val_meta = arrays["val"]
weights = cached_weights(val_probs[idx], val_meta["label"].to_numpy(), tuple(chosen)) if method == "weighted" else None
result = combine(probs[idx], method, threshold, weights=weights)
y = meta["label"].to_numpy()
scores = binary_metrics(y, result.score, result.pred, threshold)
singles = {m: member_metrics[m] for m in chosen}
best_single = max(singles, key=lambda m: singles[m]["accuracy"])
elapsed_ms = (time.perf_counter() - t0) * 1000
st.session_state["ensemble_last_ms"] = elapsed_ms

with st.container(key="ensemble_metrics"):
    cols = st.columns(6)
    best_acc = singles[best_single]["accuracy"]
    cols[0].metric("Accuracy", f"{scores['accuracy']:.4f}", f"{scores['accuracy'] - best_acc:+.4f} vs best member")
    cols[1].metric("Precision", f"{scores['precision']:.4f}")
    cols[2].metric("Recall", f"{scores['recall']:.4f}")
    cols[3].metric("Specificity", f"{scores['specificity']:.4f}")
    cols[4].metric("F1", f"{scores['f1']:.4f}")
    cols[5].metric("ROC AUC", "n/a" if np.isnan(scores["roc_auc"]) else f"{scores['roc_auc']:.4f}")
st.caption(f"{len(chosen)} member(s), {method} voting on {len(y)} {split} images; best single member: {best_single} "
           f"(accuracy {best_acc:.4f}). Re-scored in {elapsed_ms:.1f} ms."
           + (f" Weights (fitted on val): {dict(zip(chosen, np.round(weights, 3)))}" if weights is not None else ""))

left, mid, right = st.columns(3)
left.plotly_chart(confusion_figure(scores, "Confusion matrix"), width="stretch", key="ens_cm")
fig = go.Figure()
if len(np.unique(y)) == 2:
    fpr, tpr, _ = roc_curve(y, result.score)
    fig.add_scatter(x=fpr, y=tpr, name="ensemble", line=dict(color=FAMILY_COLOURS["ensemble"], width=3))
    for m in chosen:
        f, t, _ = roc_curve(y, probs[members.index(m)])
        fig.add_scatter(x=f, y=t, name=m, line=dict(color=run_colour(m), width=1), opacity=0.5)
fig.add_scatter(x=[0, 1], y=[0, 1], line=dict(dash="dash", color="grey"), showlegend=False)
fig.update_layout(title="ROC", xaxis_title="1 - specificity", yaxis_title="sensitivity", height=300, margin=dict(t=40, b=10))
mid.plotly_chart(fig, width="stretch", key="ens_roc")
by_mag = pd.DataFrame({"magnification": meta["magnification"].to_numpy(), "correct": result.pred == y})
right.caption("Accuracy by magnification")
right.dataframe(by_mag.groupby("magnification").correct.agg(["mean", "size"]).rename(columns={"mean": "accuracy", "size": "images"}))

st.subheader("What each member contributes")


def subset_accuracy(subset: list[str]) -> float:
    """Accuracy of the current rule on ``subset`` (weights re-fitted on val for the weighted rule)."""
    sub_idx = [members.index(x) for x in subset]
    w = cached_weights(val_probs[sub_idx], val_meta["label"].to_numpy(), tuple(subset)) if method == "weighted" else None
    r = combine(probs[sub_idx], method, threshold, weights=w)
    return float((r.pred == y).mean())


rows = []
for m in chosen:
    rest = [x for x in chosen if x != m]
    without = subset_accuracy(rest) if rest else float("nan")
    rows.append({"member": m, "alone": singles[m]["accuracy"], "ensemble without it": without,
                 "change if removed": without - scores["accuracy"]})
st.dataframe(pd.DataFrame(rows), hide_index=True)

a, b = st.columns(2)
with a:
    st.caption("Member agreement (share of images with the same predicted class)")
    member_preds = (probs[idx] >= threshold).astype(int)
    agree = agreement_matrix(member_preds, chosen)
    st.plotly_chart(go.Figure(go.Heatmap(z=agree.values, x=chosen, y=chosen, zmin=0, zmax=1, colorscale="Viridis",
                                         text=agree.round(2).values, texttemplate="%{text}")).update_layout(height=360),
                    width="stretch", key="ens_agree")
with b:
    st.caption("The study's ensembles (test, image-level split, full BreakHis)")
    ref = load_reference()
    st.dataframe(ref[ref.method.isin(["soft", "hard", "stacking"])][["run_id", "accuracy", "precision", "recall", "f1"]], hide_index=True)

st.subheader("Best subsets (ranked on validation; test shown alongside)")
subsets = exp.subsets()
if subsets is None:
    st.info(f"Run `python -m pipeline ensemble artifacts/{exp.name}` for the exhaustive subset search.")
else:
    sub_method = "hard" if method == "hard" else "soft"
    top = subsets[subsets.method == sub_method].head(15)
    st.dataframe(top, hide_index=True)
    csv_download(subsets, f"{exp.name}_subsets.csv", "Download all subsets (CSV)")
