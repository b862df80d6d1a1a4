"""The Compare experiments page's headline: the patient leak as one number per metric (pipeline/core/leak.py), with
each experiment's same-patient-neighbour rate beside it, and what was compared stated in words (which runs paired,
on how many common test images, or why the difference is not comparable)."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from dashboard.text import plain
from pipeline.artifacts.catalog import is_run_id
from pipeline.core.leak import LEAK_METRICS, LeakDifference, leak_difference, neighbour_rate

NAMES = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "roc_auc": "ROC AUC"}
LOWER = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "roc_auc": "ROC AUC"}
COLUMNS = ["run_id", "image_id", "label", "prob_malignant", "pred", "patient_num"]


@st.cache_data(show_spinner="Pairing the runs of both experiments ...", max_entries=16)
def cached_difference(image_level: pd.DataFrame, patient_level: pd.DataFrame, n_boot: int = 1000) -> LeakDifference:
    return leak_difference(image_level, patient_level, n_boot=n_boot)


def _split_rows(preds: pd.DataFrame | None, split: str) -> pd.DataFrame | None:
    if preds is None or not set(COLUMNS) <= set(preds.columns):
        return None
    part = preds[(preds["split"] == split) & preds["run_id"].map(is_run_id)]
    return part[COLUMNS].reset_index(drop=True) if not part.empty else None


def pick_pair(leaks: dict[str, int | None]) -> tuple[str, str] | None:
    """(image-level, patient-level): the first leaky and the first leak-free experiment, in the chosen order."""
    leaky = [n for n, shared in leaks.items() if shared]
    clean = [n for n, shared in leaks.items() if shared == 0]
    return (leaky[0], clean[0]) if leaky and clean else None


def signed(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def render(exps: dict, leaks: dict[str, int | None], metrics: dict[str, pd.DataFrame | None], split: str, alias) -> None:
    """The headline block (``alias``: run id -> display name, the page's one naming function)."""
    pair = pick_pair(leaks)
    with st.container(key="cx_leak"):
        st.subheader("How much the image-level split inflates the metrics")
        if pair is None:
            st.info("The headline needs one leaky (image-level) and one leak-free (patient-level) experiment among the chosen "
                    "ones: pick such a pair to see the inflation as one number.")
            return
        img, pat = pair
        img_t, pat_t = plain(img), plain(pat)  # folder names: shown as text
        a, b = _split_rows(exps[img].predictions(), split), _split_rows(exps[pat].predictions(), split)
        if a is None or b is None:
            st.info(f"No {split} predictions in {'both experiments' if a is None and b is None else (img_t if a is None else pat_t)}: "
                    "the paired difference needs predictions.parquet.")
            return
        result = cached_difference(a, b)
        if not result.pairs:
            st.warning(f"{img_t} and {pat_t} share no run (no model, and no ensemble with the same rule and members): "
                       "nothing to pair.")
            return
        cols = st.columns(len(LEAK_METRICS) + 2)
        for col, m in zip(cols, LEAK_METRICS):
            with col.container(border=True, key=f"cx_leak_{m}"):
                if result.comparable:
                    lo, hi = result.ci[m]
                    col_value = signed(result.estimate[m])
                    st.metric(f"{NAMES[m]} Δ", col_value,
                              help="Mean over the paired runs of (image-level − patient-level), on the test images both "
                                   "experiments share; the CI resamples those images' patients")
                    st.markdown(f"95% CI {signed(lo)} to {signed(hi)}")
                    st.caption("image-level − patient-level")
                else:
                    st.metric(f"{NAMES[m]} Δ", "not comparable",
                              help="Too few test images in common to measure both experiments on the same images")
                    st.caption(f"on different test sets: {signed(result.full_estimate[m])} (no CI; test-set difficulty "
                               "is mixed in)")
        paired_runs = [a for a, _ in result.pairs]
        for col, name in zip(cols[len(LEAK_METRICS):], (img, pat)):
            rate = neighbour_rate(metrics.get(name), split)
            with col.container(border=True, key=f"cx_leak_nn_{'img' if name == img else 'pat'}"):
                st.metric("Same-patient neighbour", "n/a" if math.isnan(rate) else f"{rate:.0%}",
                          help="Share of test images whose nearest training image (the model's feature space) is of the "
                               "same patient, mean over the runs: the leak measured directly; 0% under a patient split")
                st.caption(f"{plain(name)}: " + ("leaky, image-level" if leaks.get(name) else "leak-free, patient-level"))
        names = ", ".join(plain(alias(r)) for r in paired_runs[:8]) + (f" and {len(paired_runs) - 8} more" if len(paired_runs) > 8 else "")
        if result.comparable:
            st.caption(f"{len(result.pairs)} runs paired (ensembles by rule and members): {names}. The test sets differ "
                       f"({result.images[0]} images in {img_t}, {result.images[1]} in {pat_t}); the difference is measured on the "
                       f"{result.common_images} images of {result.common_patients} patients that both tested. On the full "
                       "test sets it would be " + ", ".join(f"{LOWER[m]} {signed(result.full_estimate[m])}"
                                                            for m in LEAK_METRICS) + ".")
        else:
            st.caption(f"{len(result.pairs)} runs paired: {names}. The test sets share only {result.common_images} images "
                       f"({result.images[0]} in {img_t}, {result.images[1]} in {pat_t}): too few to compare on the same images, "
                       "so the difference is marked not comparable.")
