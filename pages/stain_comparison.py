"""Stain comparison: runs that differ only by stain normalization, compared on the same images."""

import pandas as pd
import streamlit as st

from dashboard.data import image_for
from dashboard.ui import page_start, require
from pipeline.artifacts.catalog import parse_run_id
from pipeline.core.metrics import binary_metrics, mcnemar, paired_bootstrap_delta

exp = page_start("Stain comparison")
preds = exp.predictions()
require(preds, "predictions.parquet", f"python -m pipeline run --config pipeline/configs/{exp.name}.toml")
singles = preds[preds.kind == "single"]
pairs = []
for run in sorted(singles.run_id.unique()):
    ref = parse_run_id(run)
    if ref.stain != "none" and ref.base_run in set(singles.run_id):
        pairs.append((ref.base_run, run))
if not pairs:
    st.info("No stained/unstained pair of runs. Train the same model with and without normalization, e.g.\n\n"
            f"`python -m pipeline stain artifacts/{exp.name} --method vahadane` then "
            f"`python -m pipeline train artifacts/{exp.name} --model efficientnet_b0 --stain vahadane`")
    st.stop()
label = st.selectbox("Pair", [f"{a} vs {b}" for a, b in pairs], key="stain_pair")
base, stained = pairs[[f"{a} vs {b}" for a, b in pairs].index(label)]
split = st.radio("Split", ["test", "val"], horizontal=True, key="stain_split")
a = singles[(singles.run_id == base) & (singles.split == split)].set_index("image_id").sort_index()
b = singles[(singles.run_id == stained) & (singles.split == split)].set_index("image_id").sort_index()
common = a.index.intersection(b.index)
a, b = a.loc[common], b.loc[common]
ma, mb = binary_metrics(a.label, a.prob_malignant, a.pred), binary_metrics(b.label, b.prob_malignant, b.pred)
delta = paired_bootstrap_delta(a.label.to_numpy(), a.pred.to_numpy(), b.pred.to_numpy(), a.patient_num.to_numpy(), seed=0)
test = mcnemar((a.pred == a.label).to_numpy(), (b.pred == b.label).to_numpy())

cols = st.columns(4)
cols[0].metric(f"Accuracy {base}", f"{ma['accuracy']:.4f}")
cols[1].metric(f"Accuracy {stained}", f"{mb['accuracy']:.4f}", f"{mb['accuracy'] - ma['accuracy']:+.4f}")
cols[2].metric("Δ accuracy 95% CI (patient bootstrap)", f"{delta[0]:+.3f} to {delta[1]:+.3f}")
cols[3].metric("McNemar p-value", f"{test['p_value']:.3g}",
               help=f"{test['method']} test; only {base} right: {test['only_a']}, only {stained} right: {test['only_b']}")
table = pd.DataFrame({base: ma, stained: mb}).loc[["accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "brier", "ece"]]
table["delta"] = table[stained] - table[base]
st.dataframe(table.round(4))
verdict = "helped" if test["p_value"] < 0.05 and mb["accuracy"] > ma["accuracy"] else (
    "hurt" if test["p_value"] < 0.05 else "made no significant difference (McNemar p >= 0.05)")
st.write(f"On these {len(common)} {split} images, stain normalization **{verdict}**. "
         "The study reported 0.9882 unnormalized vs 0.9679 Vahadane-normalized (V1-B0, image-level split).")

method = parse_run_id(stained).stain
target = exp.stain_target(method)
st.subheader("Images where the two runs disagree")
disagree = common[(a.pred != b.pred).to_numpy()]
st.write(f"{len(disagree)} image(s)")
if target:
    timg = image_for(exp, target["target_image_id"], 320)
    if timg is not None:
        st.image(timg, caption=f"target image {target['target_image_id']} (chosen from train, rule: {target['rule']})", width=320)
for image_id in disagree[:12]:
    c1, c2, c3 = st.columns([2, 2, 2])
    orig, norm = image_for(exp, image_id, 320), image_for(exp, image_id, 320, method)
    if orig is not None:
        c1.image(orig, caption=f"original · {base}: P(m)={a.loc[image_id, 'prob_malignant']:.2f}")
    if norm is not None:
        c2.image(norm, caption=f"{method} · {stained}: P(m)={b.loc[image_id, 'prob_malignant']:.2f}")
    c3.markdown(f"**{image_id}**  \ntrue: {'malignant' if a.loc[image_id, 'label'] else 'benign'}  \n"
                f"{a.loc[image_id, 'subtype']} · {a.loc[image_id, 'magnification']}X")
