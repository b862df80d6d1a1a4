"""Grad-CAM: the study's 2x5 panel (V1 row B0-B4, V2 row B0-S) for one image, with each model's probabilities,
right/wrong, agreement and faithfulness. The image is in the URL (``?img=...``): every image card links here.
Maps come from the cache written by ``python -m pipeline gradcam``."""

import io

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import state, ui
from dashboard.data import image_for
from dashboard.image_card import run_maps
from dashboard.runs import identify
from dashboard.text import code, plain
from pipeline.artifacts.catalog import GRADCAM_METHODS, parse_run_id
from pipeline.core.heatmaps import overlay, panel

ROWS = [["v1_b0", "v1_b1", "v1_b2", "v1_b3", "v1_b4"], ["v2_b0", "v2_b1", "v2_b2", "v2_b3", "v2_s"]]

exp = ui.page_start("Grad-CAM")
st.caption("Grad-CAM is qualitative: it shows where a model's evidence for a class lies, not why; maps of small inputs "
           "(low-resolution feature grids) are coarse.")
scores_by_method = {m: exp.gradcam_scores(m) for m in GRADCAM_METHODS}
available = [m for m, s in scores_by_method.items() if s is not None and not s.empty]
if not available:
    st.info(f"No cached Grad-CAM maps for this experiment. Compute them with {code(exp.command('gradcam'))}")
    st.stop()
c1, c2, c3 = st.columns([1, 3, 1])
method = state.selectbox("Method", available, key="cam_method", param="cam", where=c1)
scores = scores_by_method[method]
preds = exp.predictions()
ui.require(exp, preds, "predictions", "predictions.parquet", exp.catalog.predictions)
runs = identify(preds)
singles = preds[(preds["kind"] == "single") & preds["run_id"].isin(runs.ids)]
images = sorted(scores["image_id"].astype(str).unique())
with c3:
    st.write("")
    only_all_wrong = state.toggle("All models wrong", key="cam_all_wrong", param="allwrong",
                                  help="Only images that every trained model misclassifies")
choices = images
if only_all_wrong and not singles.empty:
    part = singles[singles["image_id"].isin(images)]
    wrong = part.assign(w=part["pred"] != part["label"]).groupby("image_id")["w"].all()
    choices = [i for i in images if wrong.get(i, False)]
wanted = st.query_params.get("img")
if wanted and wanted not in images and wanted in set(preds["image_id"].astype(str)):
    # the linked image stays the panel's image (and in the URL); its tiles say why a map is missing
    st.warning(f"No {method} map was computed for image {code(wanted)}: the gradcam stage explains every error of val "
               f"and test and then correct images of its split up to its limit ({plain(str(len(images)))} images here). Compute more with "
               f"{code(f'python -m pipeline gradcam {exp.cli_dir} --method {method} --image {wanted}')} (it explains this image for "
               f"every model and keeps its maps in later runs).")
    images = [wanted, *images]
    choices = [wanted, *choices] if wanted not in choices else choices
if not choices:
    st.info("No image is misclassified by every model.")
    st.stop()
image_id = state.selectbox("Image", choices, key="cam_image", param="img", where=c2, filter_mode="contains",
                           help="Type part of an image id to find it")
alpha = state.slider("Heatmap opacity", 0.0, 1.0, key="cam_alpha", param="alpha", default=0.45, step=0.05)

img = image_for(exp, image_id, 360)
if img is None:
    st.warning("The image file is not available (missing, corrupt, or outside the experiment's data root).")
    st.stop()
row_preds = singles[singles["image_id"] == image_id].drop_duplicates("run_id").set_index("run_id") if not singles.empty else pd.DataFrame()
label = int(row_preds["label"].iloc[0]) if len(row_preds) else 0
meta = (f" · {plain(row_preds['subtype'].iloc[0])} · {plain(row_preds['magnification'].iloc[0])}X · patient "
        f"{plain(row_preds['patient_id'].iloc[0])}") if len(row_preds) and "subtype" in row_preds else ""
st.markdown(f"{code(image_id)} · true class **{'malignant' if label else 'benign'}**{meta}")

all_maps = run_maps(exp, method, [r for row in ROWS for r in row])
trained = set(row_preds.index) if len(row_preds) else set()
rows = [[r for r in row if r in runs.ids] for row in ROWS]  # only the models this experiment trained
rows = [row for row in rows if row]
no_map = [r for row in rows for r in row if r in trained and image_id not in all_maps.get(r, {})]
if no_map:
    st.info(f"{', '.join(runs.md(r) for r in no_map)}: no {method} map of this image (it was not among the images the "
            f"gradcam stage explained for {'this model' if len(no_map) == 1 else 'these models'}). Compute them with "
            f"{code(f'python -m pipeline gradcam {exp.cli_dir} --method {method} --image {image_id}')}")
maps, probs = {}, {}
with st.container(key="cam_panel"):
    for family_row in rows:
        cols = st.columns(max(5, len(family_row)))
        family_p = []
        for col, run in zip(cols, family_row):
            name = runs.label(run)
            if run not in trained:
                col.caption(f"{plain(name)}: no prediction for this image")
                continue
            if image_id not in all_maps.get(run, {}):
                col.caption(f"{plain(name)}: no map (image not explained for this model)")
                continue
            maps[run] = all_maps[run][image_id]
            pm = float(row_preds.loc[run, "prob_malignant"])
            pred = int(row_preds.loc[run, "pred"])
            p_true, p_pred = (pm if label == 1 else 1 - pm), (pm if pred == 1 else 1 - pm)
            probs[run] = (p_true, p_pred)
            family_p.append(p_true)
            s = scores[(scores["run_id"] == run) & (scores["image_id"] == image_id)]
            col.image(overlay(img, maps[run], alpha), width="stretch")
            col.markdown(f"**{plain(name)}** " + (":green-badge[✓ right]" if pred == label else ":red-badge[✗ wrong]"))
            col.caption(f"P(true) {p_true:.2f} · P(pred) {p_pred:.2f}" + (
                f"  \nagreement IoU {s['mean_iou'].iloc[0]:.2f} · deletion AUC {s['deletion_auc'].iloc[0]:.2f}" if len(s) else ""))
        if family_p:
            st.caption(f"{parse_run_id(family_row[0]).family.upper()} family mean P(true class) = {np.mean(family_p):.3f}")
ui.colour_bar()
st.caption("Agreement IoU: overlap of the top-20% heatmap region with the other models' maps of this image. Deletion AUC: "
           "mean probability of the explained class while the most salient pixels are greyed out (lower = the map points "
           "at evidence the model really uses).")
if maps:
    full = image_for(exp, image_id, None)
    if full is not None:
        png = io.BytesIO()
        panel(np.asarray(full), maps, probs, label, alpha=alpha).save(png, format="PNG")
        st.download_button("Download the panel (PNG)", png.getvalue(), file_name=f"{image_id}_{method}_panel.png",
                           mime="image/png", icon=":material/download:")

ens = preds[(preds["image_id"] == image_id) & (preds["kind"] == "ensemble") & preds["run_id"].isin(runs.ids)]
if len(ens):
    st.subheader("The ensembles on this image")
    ens = ens.drop_duplicates("run_id")
    st.dataframe(pd.DataFrame({"ensemble": [runs.label(r) for r in ens["run_id"]], "P(malignant)": ens["prob_malignant"].round(3),
                               "verdict": np.where(ens["pred"] == ens["label"], "✓ right", "✗ wrong")}), hide_index=True)

st.subheader("Faithfulness and agreement per model (all explained images)")
summary = scores.groupby("run_id")[["deletion_auc", "mean_iou", "prob_target"]].mean().round(3).reset_index()
summary.insert(0, "model", [runs.label(r) if r in runs.alias else str(r) for r in summary["run_id"]])
st.dataframe(summary.drop(columns=["run_id"]), hide_index=True, column_config={
    "model": st.column_config.TextColumn("Model"),
    "deletion_auc": st.column_config.NumberColumn("Deletion AUC", help="Lower: the map points at evidence the model uses"),
    "mean_iou": st.column_config.NumberColumn("Agreement IoU", help="Overlap with the other models' maps"),
    "prob_target": st.column_config.NumberColumn("P(explained class)")})
