"""Ensemble builder: toggle members, pick the rule and threshold; everything re-scores instantly. The built
ensemble's errors are one click away, and it can be saved so every run picker offers it.

Scoring uses the same pure functions as the pipeline (``pipeline.core.ensemble``, ``pipeline.core.metrics``) on
probability matrices cached once per experiment, so an interaction costs well under 200 ms. Stacking is the
pipeline's Keras meta-model: the builder shows the pipeline's stacking ensembles read-only (see below).
"""

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from sklearn.metrics import roc_curve

from dashboard import nav, state, ui
from dashboard.data import cached_weights, member_matrices, stamp, validation_arrays
from dashboard.runs import BuiltEnsemble, page_runs, save_token, token_label
from dashboard.text import code, plain
from dashboard.text import csv_safe, plain_figure
from pipeline.artifacts.catalog import parse_run_id
from pipeline.core.decision import (
    aurc,
    certainty_from_members,
    certainty_from_score,
    majority_accuracy,
    refer_least_certain,
    risk_coverage,
    threshold_from_validation,
)
from pipeline.core.ensemble import agreement_matrix, combine, takes_validation_threshold
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import binary_metrics, confusion_counts, reliability_curve
from pipeline.core.reference import load_reference

RULES = ["soft", "hard", "weighted", "stacking"]
PANELS = {"cm": "Confusion matrix", "roc": "ROC", "refer": "Refer the uncertain", "calibration": "Calibration",
          "members": "Members"}  # URL value -> panel label
COLLAPSE = 0.9  # a weighted vote with this share on one member is that member in disguise

exp = ui.page_start("Ensemble builder")
preds, runs = page_runs(exp, "Building and scoring ensembles", need_runs=False)
members = runs.members
if not members:
    st.info("No single-model runs without stain normalization yet: train some with "
            f"{code(f'python -m pipeline train {exp.cli_dir} --model efficientnet_b0')}")
    st.stop()
path = exp.catalog.predictions
arrays = member_matrices(str(path), stamp(path), tuple(members), tuple(exp.eval_splits))
tie_break = exp.hard_tie_break()  # the rule the experiment's own hard votes used (ensembles.json)
TIE_WORDS = {"mean_prob": "ties -> mean probability", "benign": "ties -> benign, the study's scipy.stats.mode rule"}

# -- members (chosen in one multiselect; the choice is in the URL as ?members=...) -----------------------------------
# One widget, not a checkbox per member: a rerun sends one element for the members instead of one per member (plus
# their row containers), which is most of what the builder sends besides the metrics (issue 27, six users at once).
MEMBER_KEY = "ens_member_pick"


def load_members(names: list[str], rule: str | None = None) -> None:
    st.session_state[MEMBER_KEY] = [m for m in members if m in names]
    if rule:
        st.session_state["ens_method"] = rule


@st.cache_data(show_spinner=False, max_entries=64)
def all_member_metrics(key: tuple, split: str, threshold: float) -> dict:
    """Each member's metrics alone (cached: they do not change when other members are toggled)."""
    member_probs, member_meta = arrays[split]
    labels = member_meta["label"].to_numpy()
    return {m: binary_metrics(labels, member_probs[i], None, threshold) for i, m in enumerate(members)}


@st.cache_data(show_spinner=False, max_entries=256)
def member_roc(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One member's ROC curve (cached: it does not change when other members are toggled)."""
    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def referral(y: np.ndarray, score: np.ndarray, pred: np.ndarray, member_rows: np.ndarray, threshold: float, ensemble: bool) -> None:
    """The "refer the most uncertain X%" slider: images referred to a pathologist, errors among them, accuracy on the rest.

    Certainty is member agreement for an ensemble and the distance of P(malignant) from the threshold for one model
    (``pipeline.core.decision``, the same functions behind ``aurc`` in metrics.parquet).
    """
    st.subheader("Refer the most uncertain images to a pathologist")
    if ensemble and member_rows.shape[0] > 1:
        certainty = certainty_from_members(member_rows, pred, threshold)
        how = "member agreement (share of members voting with the ensemble; ties: the mean probability's distance from the threshold)"
    else:
        certainty = certainty_from_score(score, threshold)
        how = "distance of P(malignant) from the threshold"
    left, right = st.columns([2, 3])
    with left:
        share = state.slider("Refer the most uncertain (%)", 0.0, 50.0, key="ens_refer", param="refer", default=0.0, step=5.0,
                             help="These images go to a pathologist; the model decides the rest")
        referred = refer_least_certain(certainty, share / 100)
        errors = pred != y
        kept = ~referred
        cols = st.columns(2)
        cols[0].metric("Images referred", f"{int(referred.sum())} of {len(y)}")
        cols[1].metric("Errors referred", f"{int((errors & referred).sum())} of {int(errors.sum())}",
                       help="Misclassified images that a pathologist would see")
        cols = st.columns(2)
        cols[0].metric("Accuracy on the kept images", ui.fmt(float((~errors[kept]).mean()) if kept.any() else float("nan")),
                       help="The model's accuracy on the images it still decides alone")
        cols[1].metric("AURC", ui.fmt(aurc(~errors, certainty)), help="Area under the risk-coverage curve (lower is better); "
                       "equal to the error rate when certainty says nothing about errors")
        st.caption(f"Certainty: {how}.")
    curve = risk_coverage(~errors, certainty)
    fig = go.Figure(go.Scatter(x=curve["coverage"], y=curve["accuracy"], mode="lines+markers", name="accuracy on kept images",
                               line=dict(shape="hv"), hovertemplate="keep %{x:.0%}: accuracy %{y:.4f}<extra></extra>"))
    fig.add_vline(x=1 - referred.mean(), line=dict(dash="dot", color="#cf222e"))
    fig.update_layout(title="Risk-coverage", xaxis_title="coverage (share of images the model decides)",
                      yaxis_title="accuracy on them", height=300, margin=dict(t=40, b=10), xaxis=dict(range=[0, 1.02]))
    right.plotly_chart(plain_figure(fig), width="stretch", key="ens_referral")


def calibration(y: np.ndarray, score: np.ndarray, method: str) -> None:
    """The reliability diagram of the built ensemble (n/a for a hard vote: its score is a vote share)."""
    if method == "hard":
        st.info("n/a: a hard vote's score is the share of members voting malignant, not a probability, so its "
                "calibration (reliability, Brier, ECE) is not defined.")
        return
    curve = reliability_curve(y, score)
    fig = go.Figure(go.Scatter(x=curve["mean_prob"], y=curve["observed"], mode="lines+markers", name="observed",
                               marker=dict(size=6 + 20 * curve["images"] / max(curve["images"].max(), 1)),
                               customdata=curve["images"], hovertemplate="predicted %{x:.2f}, observed %{y:.2f} "
                                                                         "(%{customdata} images)<extra></extra>"))
    fig.add_scatter(x=[0, 1], y=[0, 1], line=dict(dash="dash", color="grey"), name="perfectly calibrated")
    fig.update_layout(title="Reliability", xaxis_title="mean predicted P(malignant) in the bin",
                      yaxis_title="observed malignant share", height=340, margin=dict(t=40, b=10),
                      xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.02]))
    st.plotly_chart(plain_figure(fig), width="stretch", key="ens_reliability")
    st.caption(f"10 equal-width bins (marker size: images). ECE {ui.fmt(binary_metrics(y, score)['ece'])}: the image-weighted "
               "mean gap between a bin's predicted and observed malignant share.")


def _positive(text: str | None) -> bool:
    """A URL value that reads as a number above 0 (anything else: no)."""
    try:
        return float(text or 0) > 0
    except ValueError:
        return False


# -- the builder: read the controls, score, show the headline and actions, then the open diagnostics panel ----------
# The seams of one re-score. Only ``builder`` is the re-scored fragment; ``diagnostics`` is a fragment nested in it,
# so switching the panel or moving the referral slider reruns (and sends) the panel alone, not the controls, the
# scoring and the headline again (issue 27, "six users at once": a rerun sends what changed). The controls stay in
# the re-scored fragment: moving them into a fragment of their own whose callbacks rerun the results by key
# (``st.rerun("key")``) sent 23 instead of 32 messages per toggle, but every toggle then ran the script twice (the
# callback's rerun replaces the first) and took ~130 ms longer in Chromium (p50 363-383 vs 230-236 ms, 10 members).


@dataclass(frozen=True)
class Controls:
    """What the controls above the headline say: the rule, whether validation picks the threshold, the slider's
    threshold, the split scored and the chosen members (in the members' order, whatever order they were picked in)."""

    method: str
    from_val: bool
    threshold: float
    split: str
    chosen: tuple[str, ...]


@dataclass
class Scored:
    """One built ensemble scored on one split: everything the headline, the actions and the diagnostics show.

    ``threshold`` is the one the decisions used for a vote (the slider's, or validation's); stacking decides at its own
    0.5 (``used``). ``probs``/``val_probs``/``val_labels`` are the vote rules' member matrices, kept so the Members
    panel can re-score leave-one-out subsets; None for stacking (its members are fixed).
    """

    method: str
    split: str
    chosen: list[str]
    token: str
    y: np.ndarray
    score: np.ndarray
    pred: np.ndarray
    meta: pd.DataFrame
    member_rows: np.ndarray
    threshold: float
    weights: np.ndarray | None
    scores: dict
    singles: dict
    elapsed_ms: float
    probs: np.ndarray | None = None
    val_probs: np.ndarray | None = None
    val_labels: np.ndarray | None = None

    @property
    def used(self) -> float:
        """The threshold the decisions used (stacking: its own 0.5)."""
        return self.threshold if self.method != "stacking" else 0.5

    @property
    def best_single(self) -> str | None:
        """The chosen member with the best accuracy alone on this split (None when no member is a single run here)."""
        return max(self.singles, key=lambda m: self.singles[m]["accuracy"]) if self.singles else None

    def subset_accuracy(self, subset: list[str]) -> float:
        """Accuracy of this rule on ``subset`` of the members (weights re-fitted on val for the weighted rule)."""
        sub_idx = [members.index(x) for x in subset]
        w = cached_weights(self.val_probs[sub_idx], self.val_labels, tuple(subset)) if self.method == "weighted" else None
        return float((combine(self.probs[sub_idx], self.method, self.threshold, tie_break, w).pred == self.y).mean())


def read_controls() -> Controls:
    """The rule, threshold and split row and the members picker; every value is bound to the URL (``dashboard.state``)."""
    c1, c2, c3 = st.columns([3, 3, 2])
    method = state.radio("Rule", RULES, key="ens_method", param="rule", where=c1, horizontal=True,
                         help=f"soft: mean probability; hard: majority vote ({TIE_WORDS.get(tie_break, tie_break)}, as this "
                              "experiment's ensembles); weighted: weights fitted on validation; stacking: the pipeline's "
                              "meta-model (read-only)")
    from_val = state.toggle("Threshold from validation", key="ens_vthr", param="vthr", where=c2,
                            disabled=method == "stacking" or not takes_validation_threshold(method),
                            help="Choose the threshold that maximises Youden's J (= balanced accuracy) on the validation "
                                 "split, then apply it here; never chosen on test. Not for hard votes (members vote at 0.5).")
    from_val = from_val and method != "stacking" and takes_validation_threshold(method)  # evaluate's rule too
    threshold = state.slider("Threshold (P(malignant) ≥ threshold is malignant)", 0.05, 0.95, key="ens_threshold", param="thr",
                             default=0.5, step=0.05, where=c2, disabled=method == "stacking" or from_val)
    split = state.radio("Evaluate on", exp.eval_splits, key="ens_split", param="split", where=c3, horizontal=True)
    picked = state.multiselect(
        "Members" + (" (stacking ensembles have the members they were fitted on)" if method == "stacking" else ""),
        members, key=MEMBER_KEY, param="members", default=members, format_func=runs.label, disabled=method == "stacking",
        help="Add or remove members; the study ensembled the V1 family and the V2 family separately")
    return Controls(method, from_val, threshold, split, tuple(m for m in members if m in picked))


def stacking_rows(c: Controls) -> dict | None:
    """The pipeline's stacking ensemble picked here, as rows of ``c.split`` (read-only: the dashboard never loads Keras).

    None, after saying why, when the experiment has none."""
    stack_runs = [r for r in runs.ensembles() if parse_run_id(r).method == "stacking"]
    record = exp.ensembles_record() or {}
    st.info("Stacking is the pipeline's meta-model, a small Keras network on the members' pooled features, saved as "
            "stacking/<group>.keras for `predict` and `export`. The dashboard never loads Keras, so the builder shows the "
            "pipeline's own stacking ensembles read-only; their members are "
            "the groups they were fitted on.", icon=":material/lock:")
    if not stack_runs:
        skipped = {g: v.get("skipped") for g, v in (record.get("stacking") or {}).items() if isinstance(v, dict) and v.get("skipped")}
        st.warning("This experiment has no stacking ensemble" + (": " + "; ".join(f"{plain(g)}: {plain(r)}" for g, r in skipped.items())
                                                                 if skipped else f". Fit them with {code(exp.command('ensembles'))}"))
        return None
    url_stack = st.query_params.get("stack")
    stack = state.selectbox("Stacking ensemble", stack_runs, key="ens_stack", param="stack", format_func=runs.label,
                            default=url_stack if url_stack in stack_runs else stack_runs[0])
    part = preds[(preds["run_id"] == stack) & (preds["split"] == c.split)].sort_values("image_id")
    chosen = list(parse_run_id(stack).members)
    if c.split == "val":
        st.caption("Validation rows of a stacking ensemble are the inner hold-out of the validation split only (the rest "
                   "trained the meta-model).")
    idx = [members.index(m) for m in chosen if m in members]
    member_probs_all, member_meta = arrays[c.split]
    aligned = pd.Series(np.arange(len(member_meta)), index=member_meta["image_id"]).reindex(part["image_id"]).to_numpy()
    return dict(chosen=chosen, token=stack, y=part["label"].to_numpy(), score=part["prob_malignant"].to_numpy(),
                pred=part["pred"].to_numpy(), meta=part, member_rows=member_probs_all[idx][:, aligned],
                threshold=c.threshold, weights=None)


def vote_rows(c: Controls) -> dict | None:
    """The soft, hard or weighted vote of the chosen members on ``c.split`` (weights and, when asked, the threshold
    fitted on validation). None, after saying why, when nothing can be scored."""
    if not c.chosen:
        st.warning("Select at least one member.")
        return None
    chosen = list(c.chosen)
    idx = [members.index(m) for m in chosen]
    probs, meta = arrays[c.split]
    validation = validation_arrays(exp, members)  # an external validation fits on its source's val split
    if validation is None and (c.method == "weighted" or c.from_val):
        st.info("Weighted voting and the validation threshold are fitted on the validation split of the experiment these "
                "models come from; it is not under the artifacts folder, so choose soft or hard voting at a fixed threshold.")
        return None
    val_probs, val_meta = validation if validation is not None else (None, None)
    val_labels = val_meta["label"].to_numpy() if val_meta is not None else None
    weights = cached_weights(val_probs[idx], val_labels, tuple(chosen)) if c.method == "weighted" else None
    threshold = c.threshold
    if c.from_val:
        val_score = combine(val_probs[idx], c.method, 0.5, tie_break, weights).score  # soft/weighted: no threshold inside
        try:
            threshold = round(threshold_from_validation(val_labels, val_score), 4)
            st.caption(f"Threshold {threshold:.4f}: maximises Youden's J on the {len(val_score)} validation images.")
        except PipelineError as exc:
            st.warning(f"No validation threshold ({exc}); using the slider's {threshold:g}.")
    result = combine(probs[idx], c.method, threshold, tie_break, weights)
    token = chosen[0] if len(chosen) == 1 else BuiltEnsemble(c.method, tuple(chosen), threshold).token
    return dict(chosen=chosen, token=token, y=meta["label"].to_numpy(), score=result.score, pred=result.pred, meta=meta,
                member_rows=probs[idx], threshold=threshold, weights=weights, probs=probs, val_probs=val_probs,
                val_labels=val_labels)


def score(c: Controls) -> Scored | None:
    """Score the ensemble the controls describe with the pipeline's pure functions, timed (the builder's budget)."""
    t0 = time.perf_counter()
    rows = stacking_rows(c) if c.method == "stacking" else vote_rows(c)
    if rows is None:
        return None
    used = rows["threshold"] if c.method != "stacking" else 0.5
    scores = binary_metrics(rows["y"], rows["score"], rows["pred"], used)
    member_metrics = all_member_metrics((str(path), stamp(path), tuple(members)), c.split, rows["threshold"])
    singles = {m: member_metrics[m] for m in rows["chosen"] if m in member_metrics}
    elapsed_ms = (time.perf_counter() - t0) * 1000
    st.session_state["ensemble_last_ms"] = elapsed_ms
    return Scored(method=c.method, split=c.split, scores=scores, singles=singles, elapsed_ms=elapsed_ms, **rows)


def render_headline(s: Scored) -> str:
    """The metrics beside the majority baseline, the warnings they call for, the summary line and the fitted weights;
    returns the ensemble's display name."""
    baseline = majority_accuracy(s.y)
    best_single = s.best_single
    best_acc = s.singles[best_single]["accuracy"] if best_single else float("nan")
    with st.container(key="ensemble_metrics", horizontal=True):
        gain = s.scores["accuracy"] - best_acc
        st.metric("Accuracy", f"{s.scores['accuracy']:.4f}", None if best_single is None else f"{gain:+.4f} vs best",
                  delta_color="off" if abs(gain) < 5e-5 else "normal")
        st.metric("Precision", ui.fmt(s.scores["precision"]))
        st.metric("Sensitivity", ui.fmt(s.scores["recall"]))
        st.metric("Specificity", ui.fmt(s.scores["specificity"]))
        st.metric("F1", ui.fmt(s.scores["f1"]))
        st.metric("ROC AUC", ui.fmt(s.scores["roc_auc"]), help="Baseline: 0.5 (a random ranking)")
        st.metric("Majority baseline", ui.fmt(baseline), help="Accuracy of always predicting the larger class of these "
                  f"{len(s.y)} images: the accuracy any model must beat")
    if s.scores["accuracy"] <= baseline:
        st.warning(f"This ensemble does not beat the majority baseline ({baseline:.4f}): always answering the larger class "
                   "would score as well." + (" Its ROC AUC is high, so the ranking is good and the threshold is wrong: try "
                                             "'Threshold from validation'." if s.scores["roc_auc"] >= 0.8 else ""),
                   icon=":material/trending_down:")
    elif not np.isnan(s.scores["roc_auc"]) and s.scores["roc_auc"] <= 0.5:
        st.warning("ROC AUC at or below 0.5: the scores rank no better than chance.", icon=":material/trending_down:")
    name = token_label(s.token, runs)
    st.markdown(f"**{plain(name)}**: {len(s.chosen)} member(s), {s.method} on {len(s.y)} {s.split} images; best single "
                f"member: {runs.md(best_single) if best_single else 'n/a'} (accuracy {ui.fmt(best_acc)}). "
                f"Re-scored in {s.elapsed_ms:.1f} ms.")
    if s.weights is not None:
        st.caption("Weights fitted on validation (minimum log-loss): " + " · ".join(
            f"{runs.md(m)} {w:.2f}" for m, w in sorted(zip(s.chosen, s.weights), key=lambda t: -t[1])))
        top = int(np.argmax(s.weights))
        if len(s.chosen) > 1 and s.weights[top] >= COLLAPSE:
            st.warning(f"Weighted voting puts {s.weights[top]:.0%} of the weight on {runs.md(s.chosen[top])}: this ensemble "
                       "is essentially that one model (its validation log-loss is far lower than the others').",
                       icon=":material/warning:")
    return name


def render_actions(s: Scored, name: str) -> None:
    """Show its errors in the image browser (the referral travels with the link), save it, download its predictions."""
    with st.container(horizontal=True, key="ens_actions"):
        if st.button("Show this ensemble's errors", key="ens_errors", type="primary", icon=":material/image_search:",
                     help="Open the image browser on this ensemble's misclassified images"):
            if s.method != "stacking" and s.token not in runs.ids:
                save_token(exp, s.token)
            share = float(st.session_state.get("ens_refer") or 0.0)  # the referral set here travels with the link
            st.switch_page(nav.page("images"), query_params=state.link_params(exp.name, run=s.token, split=s.split,
                                                                               refer=f"{share:g}" if share else None))
        if s.method != "stacking" and len(s.chosen) > 1:
            if st.button("Save this ensemble", key="ens_save", icon=":material/bookmark_add:",
                         help="Offer it in every run picker (confusion matrices, image browser) for this session"):
                save_token(exp, s.token)
                st.toast(f"Saved {name}: every run picker now offers it.", icon=":material/bookmark:")

        def csv() -> bytes:  # made on click, not on every toggle (thousands of rows at full scale)
            return pd.DataFrame({"image_id": s.meta["image_id"].to_numpy(), "label": s.y, "score": s.score,
                                 "pred": s.pred}).pipe(csv_safe).to_csv(index=False).encode()

        st.download_button("Download its predictions (CSV)", csv, file_name=f"{exp.name}_built_{s.split}.csv",
                           mime="text/csv", key="ens_csv", icon=":material/download:")


@st.fragment
def diagnostics(s: Scored) -> None:
    """One diagnostics panel at a time, picked in a segmented control (in the URL as ?panel=...).

    Only the open panel is computed and sent (its charts, not all five panels'), and this is a fragment of its own:
    picking another panel or moving the referral slider reruns this part alone, with the scored ensemble it was last
    given (a member toggle reruns the builder, which calls it again with the new one)."""
    if "ens_panel" not in st.session_state:  # first render: the panel from the URL (a referral link opens its panel)
        wanted = st.query_params.get("panel") or ("refer" if _positive(st.query_params.get("refer")) else "cm")
        st.session_state["ens_panel"] = wanted if wanted in PANELS else "cm"
    open_panel = st.segmented_control("Diagnostics", list(PANELS), key="ens_panel", required=True, format_func=PANELS.get,
                                      label_visibility="collapsed") or "cm"
    state.publish("panel", open_panel, "cm")
    if open_panel == "cm":
        cm_panel(s.y, s.pred, s.meta)
    elif open_panel == "roc":
        roc_panel(s.y, s.score, s.pred, s.chosen, s.member_rows, s.used, s.token)
    elif open_panel == "refer":
        referral(s.y, s.score, s.pred, s.member_rows, s.used, len(s.chosen) > 1)
    elif open_panel == "calibration":
        calibration(s.y, s.score, s.method)
    else:
        if s.method != "stacking":
            contributions(s.chosen, s.singles, s.scores["accuracy"], s.subset_accuracy)
        agreement(s.chosen, s.member_rows, s.used)


@st.fragment
def builder() -> None:
    """Everything a member toggle, rule, threshold or split change affects: rerun alone (``st.fragment``), so a click
    re-scores without re-running the page's loading above (the browser-measured cost of a full rerun)."""
    controls = read_controls()
    scored = score(controls)
    if scored is None:
        return  # not st.stop(): that would also hide the sections below the fragment
    name = render_headline(scored)
    render_actions(scored, name)
    diagnostics(scored)


def cm_panel(y: np.ndarray, pred: np.ndarray, meta: pd.DataFrame) -> None:
    """Confusion matrix and accuracy per magnification."""
    left, right = st.columns([3, 2])
    c = confusion_counts(y, pred)
    left.caption("Confusion matrix (rows: true class; columns: predicted)")
    left.table(pd.DataFrame({"predicted benign": [c["tn"], c["fn"]], "predicted malignant": [c["fp"], c["tp"]]},
                            index=["benign", "malignant"]))
    if "magnification" in meta:
        by_mag = pd.DataFrame({"magnification": np.asarray(meta["magnification"]), "correct": pred == y})
        right.caption("Accuracy by magnification")
        per_mag = by_mag.groupby("magnification")["correct"].agg(["mean", "size"])
        # st.table, not st.dataframe: a static table is far cheaper for the browser to redraw on every toggle
        right.table(per_mag.rename(columns={"mean": "accuracy", "size": "images"}).style.format({"accuracy": "{:.4f}"}))


def roc_panel(y: np.ndarray, score: np.ndarray, pred: np.ndarray, chosen: list[str], member_rows: np.ndarray,
              threshold: float, token: str) -> None:
    """ROC of the built ensemble with every member's curve and the operating point."""
    counts = confusion_counts(y, pred)
    fig = go.Figure()
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, score)
        fig.add_scatter(x=fpr, y=tpr, name="this ensemble", line=dict(color=runs.colour.get(token, "#1b6e3a"), width=3))
        for row_i, m in enumerate(c for c in chosen if c in members):
            f, t = member_roc(y, member_rows[row_i])
            fig.add_scatter(x=f, y=t, name=runs.label(m), line=dict(color=runs.colour[m], width=1), opacity=0.6)
        op_fpr = counts["fp"] / max(counts["fp"] + counts["tn"], 1)
        op_tpr = counts["tp"] / max(counts["tp"] + counts["fn"], 1)
        fig.add_scatter(x=[op_fpr], y=[op_tpr], mode="markers", name=f"operating point (threshold {threshold:g})",
                        marker=dict(symbol="star", size=16, color="black"))
    fig.add_scatter(x=[0, 1], y=[0, 1], line=dict(dash="dash", color="grey"), showlegend=False)
    fig.update_layout(title="ROC", xaxis_title="1 - specificity", yaxis_title="sensitivity", height=440,
                      margin=dict(t=40, b=10), legend=dict(font=dict(size=10), orientation="v"),
                      xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.02]))
    st.plotly_chart(plain_figure(fig), width="stretch", key="ens_roc")


def contributions(chosen: list[str], singles: dict, accuracy: float, subset_accuracy) -> None:
    """Each member alone, and the ensemble without it (leave-one-out under the current rule)."""
    st.subheader("What each member contributes")
    rows = []
    for m in chosen:
        rest = [x for x in chosen if x != m]
        without = subset_accuracy(rest) if rest else float("nan")
        rows.append({"member": runs.label(m), "alone": singles[m]["accuracy"], "ensemble without it": without,
                     "change if removed": without - accuracy})
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
        "alone": st.column_config.NumberColumn(format="%.4f"),
        "ensemble without it": st.column_config.NumberColumn(format="%.4f"),
        "change if removed": st.column_config.NumberColumn(format="%+.4f", help="Negative: the ensemble needs this member")})


def agreement(chosen: list[str], member_rows: np.ndarray, threshold: float) -> None:
    """Pairwise share of images on which two members predict the same class."""
    st.caption("Member agreement (share of images with the same predicted class); the colour scale spans the observed range")
    names = [runs.label(m) for m in chosen if m in members]
    agree = agreement_matrix((member_rows >= threshold).astype(int), names)
    low = float(agree.values.min())
    heatmap = go.Heatmap(z=agree.values, x=names, y=names, zmin=low if low < 1 else 0.0, zmax=1, colorscale="Viridis",
                         text=agree.round(2).values, texttemplate="%{text}", colorbar=dict(title="agree"))
    st.plotly_chart(plain_figure(go.Figure(heatmap)).update_layout(height=max(220, 60 * len(names) + 80), margin=dict(t=10, b=10),
                                                     yaxis=dict(autorange="reversed")), width="stretch", key="ens_agree")

def study_reference() -> None:
    """The published ensembles (static: outside the fragment, so a toggle does not resend them)."""
    st.caption("The study's ensembles (test, image-level split, full BreakHis)")
    ref = load_reference()
    st.dataframe(ref[ref.method.isin(["soft", "hard", "stacking"])][["run_id", "accuracy", "precision", "recall", "f1"]].rename(
        columns={"run_id": "ensemble", "recall": "sensitivity"}), hide_index=True,
        column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ("accuracy", "precision", "sensitivity", "f1")})


def best_subsets() -> None:
    """The pipeline's exhaustive subset search, ranked on validation. Outside the fragment (it does not depend on
    the member toggles); selecting a row loads that subset and its rule into the builder."""
    st.subheader("Best subsets (ranked on validation; test shown alongside)")
    subsets = exp.subsets()
    if subsets is None:
        if not exp.is_corrupt(exp.catalog.subsets):
            st.info(f"Run {code(exp.command('subsets'))} for the exhaustive subset search.")
        return
    sub_method = state.radio("Subsets of the rule", ["soft", "hard"], key="ens_sub_rule", param="subrule", horizontal=True,
                             default="hard" if st.session_state.get("ens_method") == "hard" else "soft",
                             help="The search ranks subsets for soft and for hard voting separately")
    top = subsets[subsets["method"] == sub_method].head(15).reset_index(drop=True)
    shown = top.assign(members=[" + ".join(runs.label(m) for m in s.split("+") if m) for s in top["members"]])

    def load_subset() -> None:
        rows_sel = st.session_state["ens_subsets"].selection.rows
        if rows_sel:
            load_members(top["members"].iloc[rows_sel[0]].split("+"), sub_method)

    st.dataframe(shown[["val_rank", "members", "n_members", "val_accuracy", "test_accuracy", "val_log_loss"]], hide_index=True,
                 on_select=load_subset, selection_mode="single-row", key="ens_subsets",
                 column_config={"val_rank": st.column_config.NumberColumn("Rank (val)", pinned=True),
                                "members": st.column_config.TextColumn("Members"),
                                "n_members": st.column_config.NumberColumn("Size"),
                                "val_accuracy": st.column_config.NumberColumn("Val accuracy", format="%.4f",
                                                                              help="The ranking uses validation only"),
                                "test_accuracy": st.column_config.NumberColumn("Test accuracy", format="%.4f",
                                                                               help="Shown alongside; never used to rank"),
                                "val_log_loss": st.column_config.NumberColumn("Val log-loss", format="%.4f",
                                                                              help="Tie-breaker: log-loss of the soft mean")})
    st.caption("Select a row to load that subset (and its rule) into the builder above.")
    st.download_button("Download all subsets (CSV)", csv_safe(subsets).to_csv(index=False).encode(), file_name=f"{exp.name}_subsets.csv",
                       mime="text/csv", key="ens_subsets_csv", icon=":material/download:")

builder()
best_subsets()
study_reference()
