"""Grad-CAM: the study's multi-model panel (V1 row B0-B4, V2 row B0-S) for one image, with probabilities,
member agreement and faithfulness. Maps come from the cache written by ``python -m pipeline gradcam``."""

import io

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.data import image_for
from dashboard.ui import page_start, require
from pipeline.artifacts.catalog import GRADCAM_METHODS, parse_run_id
from pipeline.artifacts.gradcam_cache import load_maps, load_scores
from pipeline.core.heatmaps import overlay, panel

ROWS = [["v1_b0", "v1_b1", "v1_b2", "v1_b3", "v1_b4"], ["v2_b0", "v2_b1", "v2_b2", "v2_b3", "v2_s"]]

exp = page_start("Grad-CAM")
st.caption("Grad-CAM is qualitative: it shows where a model's evidence for a class lies, not why, and maps of "
           "low-resolution feature grids (small input sizes) are coarse.")
available = [m for m in GRADCAM_METHODS if not load_scores(exp.path, m).empty]
require(pd.DataFrame({"m": available}), "Cached Grad-CAM maps", f"python -m pipeline gradcam artifacts/{exp.name}")
c1, c2, c3 = st.columns([1, 3, 1])
method = c1.selectbox("Method", available, key="cam_method")
scores = load_scores(exp.path, method)
preds = exp.predictions()
images = sorted(scores.image_id.unique())
wrong = set()
if preds is not None:
    singles = preds[(preds.kind == "single") & preds.image_id.isin(images)]
    wrong_counts = singles.assign(w=singles.pred != singles.label).groupby("image_id").w.sum()
    wrong = set(wrong_counts[wrong_counts == singles.run_id.nunique()].index)
only_all_wrong = c3.toggle("Only images every model gets wrong", key="cam_all_wrong")
choices = [i for i in images if i in wrong] if only_all_wrong else images
if not choices:
    st.info("No image is misclassified by every model.")
    st.stop()
image_id = c2.selectbox("Image", choices, key="cam_image")
alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="cam_alpha")

img = image_for(exp, image_id, 360)
if img is None:
    st.warning("The image file is not available (missing, or outside the experiment's data root).")
    st.stop()
row_preds = preds[(preds.image_id == image_id) & (preds.kind == "single")].set_index("run_id") if preds is not None else pd.DataFrame()
label = int(row_preds.label.iloc[0]) if len(row_preds) else 0
st.write(f"**{image_id}** · true class **{'malignant' if label else 'benign'}**"
         + (f" · {row_preds.subtype.iloc[0]} · {row_preds.magnification.iloc[0]}X" if len(row_preds) else ""))

maps, probs = {}, {}
for family_row in ROWS:
    cols = st.columns(5)
    family_p = []
    for col, run in zip(cols, family_row):
        run_maps = load_maps(exp.path, method, run)
        if image_id not in run_maps or run not in row_preds.index:
            col.caption(f"{run}: not trained / no map")
            continue
        maps[run] = run_maps[image_id]
        pm = float(row_preds.loc[run, "prob_malignant"])
        p_true = pm if label == 1 else 1 - pm
        pred = int(row_preds.loc[run, "pred"])
        p_pred = pm if pred == 1 else 1 - pm
        probs[run] = (p_true, p_pred)
        family_p.append(p_true)
        s = scores[(scores.run_id == run) & (scores.image_id == image_id)]
        col.image(overlay(img, maps[run], alpha), caption=f"{run} {'✓ right' if pred == label else '✗ wrong'}")
        col.caption(f"P(true) {p_true:.2f} · P(pred) {p_pred:.2f}" + (
            f"  \nagreement IoU {s.mean_iou.iloc[0]:.2f} · deletion AUC {s.deletion_auc.iloc[0]:.2f}" if len(s) else ""))
    if family_p:
        st.caption(f"{parse_run_id(family_row[0]).family.upper()} family mean P(true class) = {np.mean(family_p):.3f}")

st.caption("Agreement IoU: overlap of the top-20% heatmap region with the other models' maps of this image. "
           "Deletion AUC: mean probability of the explained class while the most salient pixels are greyed out "
           "(lower = the map points at evidence the model really uses).")
if maps:
    png = io.BytesIO()
    panel(np.asarray(image_for(exp, image_id, None)), maps, probs, label, alpha=alpha).save(png, format="PNG")
    st.download_button("Download the panel (PNG)", png.getvalue(), file_name=f"{image_id}_{method}_panel.png", mime="image/png")
st.subheader("Faithfulness and agreement per model (all explained images)")
summary = scores.groupby("run_id")[["deletion_auc", "mean_iou", "prob_target"]].mean().round(3)
st.dataframe(summary)
