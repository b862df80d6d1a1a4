"""Stain comparison: a stain-normalized run (B) against its unstained twin (A) on the same images. The verdict
weighs accuracy, ROC AUC and calibration together; then the images where the two disagree, original beside
normalized, with which run was right."""

import streamlit as st

from dashboard import cached, compare, state, ui
from dashboard.data import image_for
from dashboard.runs import page_runs
from dashboard.text import code, plain
from pipeline.artifacts.catalog import parse_run_id

exp = ui.page_start("Stain comparison")
preds, runs = page_runs(exp, "Comparing stain normalizations", need_runs=False)
singles = set(runs.singles())
pairs = {r: parse_run_id(r).base_run for r in runs.singles() if parse_run_id(r).stain != "none" and parse_run_id(r).base_run in singles}
if not pairs:
    st.info("No stained/unstained pair of runs. Train the same model with and without normalization, e.g.\n\n"
            f"{code(f'python -m pipeline stain {exp.cli_dir} --method vahadane')} then "
            f"{code(f'python -m pipeline train {exp.cli_dir} --model efficientnet_b0 --stain vahadane')}")
    st.stop()
c1, c2 = st.columns([3, 1])
stained = state.selectbox("Stain-normalized run (B) against its unstained twin (A)", list(pairs), key="st_pair", param="run",
                          where=c1, format_func=lambda r: f"{runs.label(r)} vs {runs.label(pairs[r])}")
split = state.radio("Split", exp.eval_splits, key="st_split", param="split", where=c2, horizontal=True)
base, method = pairs[stained], parse_run_id(stained).stain
frame = compare.paired_frame(cached.pair_rows(exp, preds, base, stained, split), base, stained, split)
compare.summary(frame, runs, base, stained, split, what="stain normalization (B)")
st.caption("The study reported 0.9882 unnormalized vs 0.9679 Vahadane-normalized accuracy (V1-B0, image-level split).")

st.subheader("Images where the two runs disagree")
root = exp.stain_root(method)
target = exp.stain_target(method)
if root is None and not target:
    st.warning(f"The {method}-normalized images are not cached, so only the originals are shown. Recreate them with "
               f"{code(f'python -m pipeline stain {exp.cli_dir} --method {method}')}", icon=":material/hide_image:")
elif root is None:
    st.warning(f"The {method} stain cache named by stain/{method}/target.json is missing, so only the originals are shown. "
               f"Recreate it with {code(f'python -m pipeline stain {exp.cli_dir} --method {method}')}", icon=":material/hide_image:")
if target and isinstance(target.get("target_image_id"), str):
    timg = image_for(exp, target["target_image_id"], 240)
    if timg is not None:
        with st.expander("The target image every image was normalized to"):
            st.image(timg, width=240)
            st.caption(f"{plain(target['target_image_id'])}, chosen from the training split (rule: {plain(target.get('rule', '?'))})")


def show_images(row, cols) -> None:
    orig = image_for(exp, row["image_id"], 280)
    if orig is not None:
        cols[0].image(orig, caption="original (A's input)", width="stretch")
    norm = image_for(exp, row["image_id"], 280, method) if root is not None else None
    if norm is not None:
        cols[1].image(norm, caption=f"{method}-normalized (B's input)", width="stretch")
    elif root is not None:
        cols[1].caption("normalized image not in the cache")


compare.disagreements(frame, runs, base, stained, key="st_dis", images=show_images)
