"""A/B comparison of two runs on the same images (in the spirit of W&B's evaluation tables).

Pick A (the reference) and B explicitly; every delta is B minus A and is coloured by what it means for B
(green better, red worse: lower is better for Brier and ECE). The verdict weighs accuracy (paired patient
bootstrap CI and McNemar), ROC AUC and calibration (Brier) together, because a run can keep its accuracy while
its ranking or its probabilities get much worse. Used by the confusion matrices and the stain comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import ui
from dashboard.runs import Runs, run_picker
from dashboard.text import code, plain
from pipeline.core.metrics import binary_metrics, mcnemar, paired_bootstrap_deltas

SHOWN = ["accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "brier", "ece"]
LOWER_IS_BETTER = {"brier", "ece"}
NAMES = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall (sensitivity)", "specificity": "Specificity",
         "f1": "F1", "roc_auc": "ROC AUC", "brier": "Brier score", "ece": "ECE (calibration error)"}
TIE = 5e-5  # |delta| below this is shown as no change (a "+0.0000" is not an improvement)


def ab_pickers(runs: Runs, *, key: str, default_a: str | None, default_b: str | None, options: list[str] | None = None,
               on_change=None) -> tuple[str | None, str | None]:
    """Two explicit run pickers, A (reference) and B (compared), bound to the URL as ``a`` and ``b``."""
    left, right = st.columns(2)
    a = run_picker("A (reference)", runs, key=f"{key}_a", param="a", default=default_a, options=options, where=left,
                   on_change=on_change)
    b = run_picker("B (compared with A)", runs, key=f"{key}_b", param="b", default=default_b, options=options, where=right,
                   on_change=on_change)
    if a is not None and a == b:
        st.warning("A and B are the same run: pick two different runs to compare.")
    return a, b


def paired_frame(preds: pd.DataFrame, a: str, b: str, split: str) -> pd.DataFrame:
    """One row per image both runs predicted on ``split``: label, prob/pred of A and of B, and the metadata."""
    part = preds[preds["split"] == split]
    ra = part[part["run_id"] == a].drop_duplicates("image_id").set_index("image_id")
    rb = part[part["run_id"] == b].drop_duplicates("image_id").set_index("image_id")
    common = ra.index.intersection(rb.index).sort_values()
    meta = [c for c in ("label", "magnification", "subtype", "patient_id", "patient_num") if c in ra]
    out = ra.loc[common, meta].copy()
    out["prob_a"], out["pred_a"] = ra.loc[common, "prob_malignant"].astype(float), ra.loc[common, "pred"].astype(int)
    out["prob_b"], out["pred_b"] = rb.loc[common, "prob_malignant"].astype(float), rb.loc[common, "pred"].astype(int)
    return out.reset_index()


@st.cache_data(show_spinner=False, max_entries=64)
def ab_stats(y: np.ndarray, prob_a: np.ndarray, pred_a: np.ndarray, prob_b: np.ndarray, pred_b: np.ndarray, groups: np.ndarray,
             n_boot: int = 1000) -> dict:
    """Both runs' metrics, the paired patient-bootstrap CI of every delta, and McNemar's test."""
    return {"a": binary_metrics(y, prob_a, pred_a), "b": binary_metrics(y, prob_b, pred_b),
            "ci": paired_bootstrap_deltas(y, prob_a, pred_a, prob_b, pred_b, groups, n_boot=n_boot, seed=0),
            "mcnemar": mcnemar(pred_a == y, pred_b == y)}


def judge(metric: str, delta: float, ci: tuple[float, float] | None) -> str:
    """'better', 'worse' or 'no clear difference' for B, from the CI of the delta (sign flipped for lower-is-better)."""
    if ci is None or any(map(math.isnan, ci)) or math.isnan(delta):
        return "not estimable"
    lo, hi = ci
    if metric in LOWER_IS_BETTER:
        lo, hi = -hi, -lo
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "no clear difference"


def verdict(stats: dict) -> tuple[str, list[str]]:
    """Overall word for B and one line per aspect: accuracy, ROC AUC, calibration (Brier)."""
    lines, words = [], []
    for metric, name in (("accuracy", "accuracy"), ("roc_auc", "ROC AUC"), ("brier", "calibration (Brier score)")):
        delta = stats["b"][metric] - stats["a"][metric]
        ci = stats["ci"].get(metric)
        word = judge(metric, delta, ci)
        words.append(word)
        extra = f"; McNemar p = {stats['mcnemar']['p_value']:.3g}" if metric == "accuracy" else ""
        ci_text = "" if ci is None or any(map(math.isnan, ci)) else f", 95% CI {ci[0]:+.3f} to {ci[1]:+.3f}"
        shown = "±0" if abs(delta) < TIE else f"{delta:+.4f}"
        lines.append(f"**{name}**: {word} (Δ {shown}{ci_text}{extra})")
    if "worse" in words and "better" in words:
        overall = "mixed: better on one aspect, worse on another"
    elif "worse" in words:
        overall = "worse"
    elif "better" in words:
        overall = "better"
    else:
        overall = "not clearly different on accuracy, ROC AUC or calibration"
    return overall, lines


def _colour(metric: str, delta: float) -> str:
    if math.isnan(delta) or abs(delta) < TIE:
        return f"color: {ui.NEUTRAL}"
    good = delta < 0 if metric in LOWER_IS_BETTER else delta > 0
    return f"color: {ui.BETTER if good else ui.WORSE}; font-weight: 600"


def _by_sign(metric: str, delta: float) -> str:
    """Metrics without a CI (ECE) are judged by sign only, and say so."""
    if math.isnan(delta) or abs(delta) < TIE:
        return "unchanged (no CI)"
    good = delta < 0 if metric in LOWER_IS_BETTER else delta > 0
    return f"{'better' if good else 'worse'} (no CI)"


def _word_colour(word: str) -> str:
    if word.startswith("better"):
        return f"color: {ui.BETTER}; font-weight: 600"
    if word.startswith("worse"):
        return f"color: {ui.WORSE}; font-weight: 600"
    return f"color: {ui.NEUTRAL}"


def delta_table(stats: dict, label_a: str, label_b: str):
    """Metrics of A and B with the delta coloured for B (green better, red worse, grey unchanged)."""
    rows = []
    for m in SHOWN:
        va, vb = stats["a"][m], stats["b"][m]
        delta = vb - va
        ci = stats["ci"].get(m)
        rows.append({"metric": NAMES[m], f"A: {label_a}": ui.fmt(va), f"B: {label_b}": ui.fmt(vb),
                     "Δ (B − A)": "±0" if abs(delta) < TIE else f"{delta:+.4f}",
                     "95% CI of Δ": "" if ci is None or any(map(math.isnan, ci)) else f"{ci[0]:+.3f} to {ci[1]:+.3f}",
                     "for B": judge(m, delta, ci) if ci else _by_sign(m, delta),
                     "_m": m, "_d": delta})
    frame = pd.DataFrame(rows)
    styles = frame.apply(lambda row: [_colour(row["_m"], row["_d"]) if c == "Δ (B − A)" else
                                      (_word_colour(row["for B"]) if c == "for B" else "") for c in frame.columns],
                         axis=1, result_type="expand")
    styles.columns = frame.columns
    shown = frame.drop(columns=["_m", "_d"])
    return shown.style.apply(lambda _: styles.drop(columns=["_m", "_d"]), axis=None)


def summary(frame: pd.DataFrame, runs: Runs, a: str, b: str, split: str, what: str = "B") -> dict | None:
    """The A/B header: verdict first, then the coloured delta table. Returns the statistics."""
    if frame.empty:
        st.info("The two runs share no images on this split.")
        return None
    y = frame["label"].to_numpy().astype(int)
    groups = frame["patient_num"].to_numpy() if "patient_num" in frame else np.arange(len(frame))
    stats = ab_stats(y, frame["prob_a"].to_numpy(), frame["pred_a"].to_numpy(), frame["prob_b"].to_numpy(),
                     frame["pred_b"].to_numpy(), groups)
    overall, lines = verdict(stats)
    box = st.success if overall == "better" else st.error if overall == "worse" else st.warning if overall.startswith("mixed") else st.info
    with st.container(key="ab_verdict"):
        box(f"**Verdict for {what} ({runs.md(b)}) against A ({runs.md(a)})** on {len(frame)} {split} images: "
            f"**{overall}**.\n\n" + "\n\n".join(f"- {line}" for line in lines), icon=":material/balance:")
    st.dataframe(delta_table(stats, runs.label(a), runs.label(b)), hide_index=True)
    st.caption("Δ is B minus A; green is better for B, red worse (lower is better for Brier and ECE). CIs: paired "
               "bootstrap over patients, both runs on the same resamples. ‘No clear difference’ means the CI includes 0.")
    return stats


def disagreements(frame: pd.DataFrame, runs: Runs, a: str, b: str, *, key: str, page_size: int = 12,
                  images: Callable[[pd.Series, list], None] | None = None) -> None:
    """Images on which A and B predict different classes, with both predictions and right/wrong badges, paged."""
    diff = frame[frame["pred_a"] != frame["pred_b"]].copy()
    diff["b_right"] = diff["pred_b"] == diff["label"]
    diff = diff.sort_values(["b_right", "image_id"]).reset_index(drop=True)  # B's new errors first
    only_a = int((~diff["b_right"]).sum())
    st.markdown(f"**{len(diff)}** image(s) where A and B disagree: **{only_a}** where only A is right, "
                f"**{len(diff) - only_a}** where only B is right.")
    if diff.empty:
        return
    page = ui.pager(len(diff), page_size, key=f"{key}_page", param="dpage")
    for _, row in diff.iloc[(page - 1) * page_size: page * page_size].iterrows():
        with st.container(border=True):
            if images:  # the two images, then the text; without images the text takes the whole row
                cols = st.columns([2, 2, 3])
                images(row, cols[:2])
                text = cols[-1]
            else:
                text = st.container()
            text.markdown(code(row["image_id"]) + f" · true **{ui.CLASS_NAMES[int(row['label'])]}**")
            for side, run in (("a", a), ("b", b)):
                right = int(row[f"pred_{side}"]) == int(row["label"])
                badge = ":green-badge[✓ right]" if right else ":red-badge[✗ wrong]"
                text.markdown(f"{side.upper()} · {runs.md(run)}: {badge} predicted {ui.CLASS_NAMES[int(row[f'pred_{side}'])]} "
                              f"(P(malignant) {row[f'prob_{side}']:.2f})")
            meta = [plain(row["subtype"])] if "subtype" in row and pd.notna(row["subtype"]) else []
            meta += [f"{plain(row['magnification'])}X"] if "magnification" in row and pd.notna(row["magnification"]) else []
            meta += [f"patient {plain(row['patient_id'])}"] if "patient_id" in row and pd.notna(row["patient_id"]) else []
            if meta:
                text.caption(" · ".join(meta))
