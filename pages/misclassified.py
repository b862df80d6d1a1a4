"""Misclassified images: filter, sort (most confident errors first), page; each card shows the image, its
Grad-CAM overlay, every member's probability and vote, and the metadata. A full-size view on click."""

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.data import image_for
from dashboard.ui import page_start, require
from pipeline.artifacts.catalog import GRADCAM_METHODS, parse_run_id
from pipeline.artifacts.gradcam_cache import load_maps
from pipeline.artifacts.predictions import member_runs
from pipeline.core.heatmaps import overlay

PAGE_SIZE = 12

exp = page_start("Misclassified images")
preds = exp.predictions()
require(preds, "predictions.parquet", f"python -m pipeline run --config pipeline/configs/{exp.name}.toml")
run_ids = sorted(preds.run_id.unique(), key=lambda r: (r.startswith("ensemble"), r))
test_errors = preds[preds.split == "test"].assign(wrong=lambda d: d.pred != d.label).groupby("run_id").wrong.sum()
# Open on the run with the most test errors (the interesting one), unless another page sent us a run.
default_run = st.session_state.pop("browser_run", None) or (test_errors.idxmax() if len(test_errors) else None)
preset_ids = st.session_state.get("browser_ids")

with st.sidebar:
    st.header("Filters")
    run = st.selectbox("Run or ensemble", run_ids, index=run_ids.index(default_run) if default_run in run_ids else 0, key="mis_run")
    split = st.radio("Split", ["test", "val"], horizontal=True, key="mis_split")
    only_errors = st.toggle("Errors only", value=preset_ids is None, key="mis_errors")
    truth = st.multiselect("True class", ["benign", "malignant"], key="mis_true")
    predicted = st.multiselect("Predicted class", ["benign", "malignant"], key="mis_pred")
    subtype = st.multiselect("Subtype", sorted(preds.subtype.dropna().unique()), key="mis_subtype")
    mag = st.multiselect("Magnification", sorted(preds.magnification.dropna().unique()), key="mis_mag")
    patient = st.multiselect("Patient", sorted(preds.patient_id.dropna().unique()), key="mis_patient")
    conf = st.slider("Confidence in the predicted class", 0.5, 1.0, (0.5, 1.0), 0.01, key="mis_conf")
    sort = st.selectbox("Sort", ["most confident errors first", "highest loss first", "image id"], key="mis_sort")
    method = st.selectbox("Grad-CAM method", list(GRADCAM_METHODS), key="mis_cam")
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="mis_alpha")
    if preset_ids is not None and st.button("Clear the image list from Confusion matrices", key="mis_clear"):
        st.session_state.pop("browser_ids", None)
        st.rerun()

names = {0: "benign", 1: "malignant"}
rows = preds[(preds.run_id == run) & (preds.split == split)].copy()
rows["confidence"] = np.where(rows.pred == 1, rows.prob_malignant, 1 - rows.prob_malignant)
eps = 1e-7
rows["loss"] = -np.log(np.clip(np.where(rows.label == 1, rows.prob_malignant, 1 - rows.prob_malignant), eps, 1))
if preset_ids is not None:
    rows = rows[rows.image_id.isin(preset_ids)]
    st.info(f"Showing the {len(preset_ids)} image(s) chosen on the Confusion matrices page.")
if only_errors:
    rows = rows[rows.pred != rows.label]
if truth:
    rows = rows[rows.label.map(names).isin(truth)]
if predicted:
    rows = rows[rows.pred.map(names).isin(predicted)]
if subtype:
    rows = rows[rows.subtype.isin(subtype)]
if mag:
    rows = rows[rows.magnification.isin(mag)]
if patient:
    rows = rows[rows.patient_id.isin(patient)]
rows = rows[rows.confidence.between(*conf)]
rows = rows.sort_values({"most confident errors first": "confidence", "highest loss first": "loss", "image id": "image_id"}[sort],
                        ascending=(sort == "image id"))
st.write(f"**{len(rows)}** image(s) match ({run}, {split}).")
if rows.empty:
    st.info("Nothing to show: this run makes no errors under these filters. Pick another run or turn off 'Errors only'.")
    st.stop()

# Every member's probability and vote for the shown images (single runs without stain normalization).
members = member_runs(preds)
member_table = preds[(preds.split == split) & preds.run_id.isin(members)].pivot_table(
    index="image_id", columns="run_id", values="prob_malignant", aggfunc="first")
ref = parse_run_id(run)
cam_runs = [run] if ref.kind == "single" else [m for m in ref.members if m in members][:1]
maps = load_maps(exp.path, method, cam_runs[0]) if cam_runs else {}

pages = max(1, -(-len(rows) // PAGE_SIZE))
page = st.number_input("Page", 1, pages, 1, key="mis_page") if pages > 1 else 1
shown = rows.iloc[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]


@st.dialog("Full-size image", width="large")
def full_size(image_id: str) -> None:
    img = image_for(exp, image_id, None)
    if img is None:
        st.warning("Image file not available (outside the data root or missing).")
        return
    st.image(img, caption=image_id)
    if image_id in maps:
        st.image(overlay(img, maps[image_id], alpha), caption=f"{method} of {cam_runs[0]} (qualitative)")


cols = st.columns(3)
for i, (_, r) in enumerate(shown.iterrows()):
    with cols[i % 3].container(border=True, key=f"card_{r.image_id}"):
        img = image_for(exp, r.image_id, 320)
        if img is None:
            st.caption("image file not available")
        else:
            a, b = st.columns(2)
            a.image(img, caption="image")
            if r.image_id in maps:
                b.image(overlay(img, maps[r.image_id], alpha), caption=f"{method} ({cam_runs[0]})")
            else:
                b.caption(f"no {method} map (run `python -m pipeline gradcam`)")
        verdict = "✓ right:" if r.pred == r.label else "✗ wrong:"
        st.markdown(f"{verdict} **{r.image_id}**  \ntrue **{names[r.label]}**, predicted **{names[r.pred]}** "
                    f"(P(malignant) = {r.prob_malignant:.3f}, loss {r.loss:.2f})  \n"
                    f"{r.subtype} · {r.magnification}X · patient {r.patient_id}")
        if r.image_id in member_table.index:
            probs = member_table.loc[r.image_id].dropna()
            st.dataframe(pd.DataFrame({"P(malignant)": probs.round(3), "vote": np.where(probs >= 0.5, "malignant", "benign")}),
                         height=140)
        if st.button("Full size", key=f"full_{r.image_id}"):
            full_size(r.image_id)
