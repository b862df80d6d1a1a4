"""Overview: dataset counts, the split's leakage report, every run and ensemble with 95% CIs, the study beside ours."""

import pandas as pd
import streamlit as st

from dashboard.ui import csv_download, page_start, require
from pipeline.core.reference import load_reference
from pipeline.core.splits import leakage_report

exp = page_start("Overview")
manifest = exp.manifest()
require(manifest, "The image manifest", f"python -m pipeline index DATA_ROOT --out artifacts/{exp.name}")

st.subheader("Dataset")
cols = st.columns(4)
cols[0].metric("Images", len(manifest))
cols[1].metric("Benign / malignant", f"{(manifest.label == 0).sum()} / {(manifest.label == 1).sum()}")
cols[2].metric("Patients (folders / numeric ids)", f"{manifest.patient_id.nunique()} / {manifest.patient_num.nunique()}")
cols[3].metric("Subtypes", manifest.subtype.nunique())
left, right = st.columns(2)
left.caption("Images per class and magnification")
left.dataframe(pd.crosstab(manifest.class_name, manifest.magnification, margins=True, margins_name="total"))
right.caption("Images and patients per subtype")
right.dataframe(manifest.groupby(["class_name", "subtype_name"]).agg(images=("image_id", "size"),
                                                                      patients=("patient_id", "nunique")).reset_index(),
                hide_index=True)

st.subheader("Split and leakage")
split = exp.split()
if split is None:
    st.info(f"No split yet: `python -m pipeline split artifacts/{exp.name} --mode patient`")
else:
    report = leakage_report(manifest, split)
    st.dataframe(report, hide_index=True)
    shared = int(report["shared_patient_num"].max())
    if shared:
        st.error(f"{shared} patient(s) appear in more than one of train/val/test: an image-level split. "
                 "Accuracy on it is optimistic (the model can recognise the patient, not the disease).")
    else:
        st.success("Leak-free: no patient appears in more than one of train/val/test.")

st.subheader("Runs and ensembles")
metrics = exp.metrics()
require(metrics, "metrics.parquet", f"python -m pipeline evaluate artifacts/{exp.name}")
split_choice = st.radio("Split", ["test", "val"], horizontal=True, key="overview_split")
table = metrics[(metrics.group_type == "all") & (metrics.split == split_choice)].copy()
for m in ("accuracy", "f1", "roc_auc", "recall", "specificity"):
    if f"{m}_lo" in table:
        table[f"{m} 95% CI"] = [f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(table[f"{m}_lo"], table[f"{m}_hi"])]
show = ["run_id", "kind", "stain", "n", "accuracy", "accuracy 95% CI", "precision", "recall", "specificity", "f1",
        "f1 95% CI", "balanced_accuracy", "roc_auc", "roc_auc 95% CI", "pr_auc", "brier", "ece", "patient_recognition_rate", "patients"]
table = table[[c for c in show if c in table]].sort_values("accuracy", ascending=False)
st.dataframe(table, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                                     ("accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy",
                                                      "roc_auc", "pr_auc", "brier", "ece", "patient_recognition_rate")})
csv_download(table, f"{exp.name}_{split_choice}_metrics.csv")
st.caption("95% CIs: bootstrap over patients (images of one patient are correlated). Sort by clicking a column header.")
best_single = table[table.kind == "single"].head(1)
best_ens = table[table.kind == "ensemble"].head(1)
if len(best_single):
    st.write(f"Best single model on {split_choice}: **{best_single.run_id.iloc[0]}** "
             f"(accuracy {best_single.accuracy.iloc[0]:.3f})"
             + (f"; best ensemble: **{best_ens.run_id.iloc[0]}** ({best_ens.accuracy.iloc[0]:.3f})" if len(best_ens) else ""))

st.subheader("The published study beside ours")
ref = load_reference().rename(columns={c: f"paper_{c}" for c in ("accuracy", "precision", "recall", "f1")})
ours = metrics[(metrics.group_type == "all") & (metrics.split == "test") & (metrics.kind == "single")][
    ["run_id", "accuracy", "precision", "recall", "f1"]]
beside = ref.merge(ours, on="run_id", how="left")
st.dataframe(beside, hide_index=True)
st.caption("Paper: Azmoodeh-Kalati et al., Sci. Rep. 15:21541 (2025), image-level 70/15/15 split of full BreakHis "
           "with ImageNet weights. Ours: this experiment's test split" + (" on SYNTHETIC data." if exp.synthetic else "."))
