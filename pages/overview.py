"""Overview, results first: headline cards (best single model, best ensemble, majority baseline, the study's
number, leakage), accuracy and ROC AUC with 95% CIs against the study's values, the full table (pinned run
column, readable names with tooltips, a column chooser, ties named as ties), then the dataset and the split."""

import numpy as np
import pandas as pd
import streamlit as st
from plotly.subplots import make_subplots

from dashboard import cached, compare, nav, state, ui
from dashboard.runs import identify, notice_skipped
from dashboard.verdict import STUDY_PROTOCOL, TIE_RULE, paired_verdict, pick_best, study_comparable
from dashboard.text import plain
from dashboard.text import csv_safe, plain_figure
from pipeline.artifacts.catalog import parse_run_id
from pipeline.artifacts.run_names import model_alias, run_sort_key
from pipeline.core.decision import INVERTED, INVERTED_MEANING, auc_inverted, ci_label
from pipeline.core.reference import load_reference

COLUMNS = {  # metrics column -> (readable name, tooltip, default shown)
    "rank": ("Rank", "By accuracy; '1 (tie)' when runs share a value", True),
    "kind": ("Kind", "single model or ensemble", False),
    "n": ("Images", "Images in this split", False),
    "accuracy": ("Accuracy", "Share of images classified correctly", True),
    "accuracy_ci": ("Accuracy 95% CI", "Bootstrap over patients (images of one patient are correlated)", True),
    "majority_accuracy": ("Majority baseline", "Accuracy of always predicting the larger class of this split", True),
    "baseline": ("Beats baseline?", "No when accuracy ≤ the majority baseline, or ROC AUC ≤ 0.5", True),
    "precision": ("Precision", "Of the images called malignant, the share that are", False),
    "recall": ("Sensitivity", "Recall: of the malignant images, the share found", True),
    "specificity": ("Specificity", "Of the benign images, the share called benign", True),
    "f1": ("F1", "Harmonic mean of precision and sensitivity (malignant is positive)", False),
    "balanced_accuracy": ("Balanced accuracy", "Mean of sensitivity and specificity", False),
    "roc_auc": ("ROC AUC", "Ranking quality of P(malignant), threshold-free", True),
    "roc_auc_ci": ("ROC AUC 95% CI", "Bootstrap over patients", False),
    "pr_auc": ("PR AUC", "Average precision", False),
    "brier": ("Brier score", "Mean squared error of P(malignant): calibration and sharpness, lower is better", True),
    "ece": ("ECE", "Expected calibration error (10 bins), lower is better", False),
    "patient_recognition_rate": ("Patient score", "BreakHis patient recognition rate: mean over patients of each patient's accuracy", True),
    "patients": ("Patients", "Patients in this split", False),
    "patient_accuracy": ("Patient accuracy", "Per patient: mean of its image scores ≥ threshold, against the patient's label", True),
    "patient_accuracy_ci": ("Patient accuracy 95% CI", "Bootstrap over patients", False),
    "patient_roc_auc": ("Patient ROC AUC", "Ranking of patients by their mean image score", False),
    "aurc": ("AURC", "Area under the risk-coverage curve (referring the least certain first); lower is better", False),
    "threshold": ("Threshold", "Decision threshold used (0.5, or chosen on validation: [evaluate] threshold)", False),
    "score_type": ("Score", "probability, or vote_share for hard votes (their Brier/ECE are n/a)", False),
    "same_patient_neighbour_rate": ("Same-patient neighbours", "Share of images whose nearest training image (the model's "
                                    "feature space, cosine) is of the same patient: the patient leak, 0 under a patient split", True),
}
NUMBERS = ["accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "roc_auc", "pr_auc", "brier", "ece",
           "patient_recognition_rate", "majority_accuracy", "patient_accuracy", "patient_roc_auc", "aurc", "threshold",
           "same_patient_neighbour_rate"]

MISSING = "n/a"  # what a missing value reads as (a hard vote's Brier score, a metric a stage did not compute)
SHOWN = " (shown)"  # suffix of the text column the table shows for a metric column (the frame keeps the numbers)


def readable(values: pd.Series, column: str) -> list[str]:
    """A column as the text people read: 4 decimals, whole counts, ``n/a`` where a value is missing.

    Why text: Streamlit draws a missing number as "None" whatever the format or styler says (checked in Chromium).
    Text sorts like the numbers here: every metric lies in [0, 1] and is written with 4 decimals."""
    def one(v: object) -> str:
        if v is None or (not isinstance(v, str) and pd.isna(v)) or v == "":
            return MISSING
        if column in NUMBERS:
            return f"{float(v):.4f}"
        if column in ("n", "patients"):
            return f"{int(v)}"
        return str(v)

    return [one(v) for v in values]


exp = ui.page_start("Overview")
manifest, split, metrics, preds = exp.manifest(), exp.split(), exp.metrics(), exp.predictions()
split_choice = state.radio("Split", exp.eval_splits, key="ov_split", param="split", horizontal=True,
                           help="Test is the held-out split; validation picked the checkpoints, weights and subsets; external: "
                                "new images scored by `predict`")

table = None
if metrics is None:
    if not exp.labelled:
        st.info("No metrics: this external validation has no labels (predictions only). Score the images again with "
                "`--labels FILE.csv` to measure accuracy.")
    elif not exp.is_corrupt(exp.catalog.metrics):
        st.info(f"No metrics yet. Compute them with `{exp.command('metrics')}`.")
    if preds is not None and not preds.empty:  # while the pipeline runs: the runs finished so far, plain accuracy
        so_far = identify(preds)
        part = preds[(preds["split"] == split_choice) & preds["run_id"].isin(so_far.ids)]
        scores = (part.assign(correct=part["pred"] == part["label"]).groupby("run_id")
                  .agg(images=("correct", "size"), accuracy=("correct", "mean")).reset_index())
        scores.insert(0, "run", [so_far.label(r) for r in scores["run_id"]])
        st.subheader(f"Runs finished so far ({split_choice})")
        st.dataframe(scores.sort_values(["accuracy", "run"], ascending=[False, True]), hide_index=True, key="ov_so_far",
                     column_order=["run", "accuracy", "images"],
                     column_config={"run": st.column_config.TextColumn("Run", pinned=True),
                                    "accuracy": st.column_config.NumberColumn("Accuracy", format="%.4f")})
        st.caption("Accuracy at threshold 0.5 from each finished run's predictions; the full table with confidence "
                   "intervals appears when the evaluate stage has run.")
else:
    runs = identify(preds if preds is not None else metrics)
    notice_skipped(runs)
    table = metrics[(metrics["group_type"] == "all") & (metrics["split"] == split_choice) & metrics["run_id"].isin(runs.ids)].copy()

# -- headline cards -------------------------------------------------------------------------------------------
def study_label(ref: pd.Series) -> str:
    """The study's row named as our runs are named (``V2-B1``, ``V2 soft``)."""
    return model_alias(ref["run_id"]) if ref["method"] == "single" else f"{ref['family'].upper()} {ref['method']}"


def ci_text(row: pd.Series, metric: str = "accuracy") -> str:
    lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    return "" if lo is None or pd.isna(lo) else f"{ci_label(exp.ci_unit)} {lo:.3f}–{hi:.3f}"


reference = load_reference()
shared_patients = None if manifest is None or split is None else int(cached.leakage(exp, manifest, split)["shared_patient_num"].max())
best: dict[str, tuple[str | None, list[str]]] = {}
with st.container(key="headline"):
    cards = st.columns(5)
    if table is not None and not table.empty:
        order = sorted(runs.ids, key=run_sort_key)
        best = {"single": pick_best(table, runs.singles(), order), "ensemble": pick_best(table, runs.ensembles(), order)}
        by_run = table.set_index("run_id")
        for col, title, kind in ((cards[0], "Best single model", "single"), (cards[1], "Best ensemble", "ensemble")):
            winner, tied = best[kind]
            with col.container(border=True, key=f"card_{title.split()[1]}"):
                if winner is None:
                    st.metric(title, "n/a")
                    st.caption("none trained yet")
                    continue
                row = by_run.loc[winner]
                st.metric(title, ui.fmt(row["accuracy"]), help=f"{split_choice} accuracy. " + runs.tip[winner])
                tie = (f"  \ntied on accuracy with {plain(', '.join(runs.label(r) for r in tied[1:4]))}"
                       + (f" and {len(tied) - 4} more" if len(tied) > 4 else "") + f" ({TIE_RULE})" if len(tied) > 1 else "")
                st.markdown(f"**{runs.md(winner)}**  \n{split_choice} accuracy, {ci_text(row)}{tie}")
                if title == "Best ensemble":
                    if st.button("Worst errors", key="best_ens_errors", type="primary", icon=":material/image_search:",
                                 help="Its misclassified images, most confident errors first"):
                        st.switch_page(nav.page("images"), query_params=state.link_params(exp.name, run=winner, split=split_choice))
                    ref = parse_run_id(winner)
                    rule = {"soft-best": "soft", "hard-best": "hard"}.get(ref.method, ref.method)
                    st.page_link(nav.page("ensemble"), label="Open in builder", icon=":material/join:",
                                 query_params=state.link_params(exp.name, members=list(ref.members), rule=rule,
                                                                stack=winner if rule == "stacking" else None))
        first = table.iloc[0]
        positives = int(first["tp"] + first["fn"])
        majority = max(positives, int(first["n"]) - positives) / max(int(first["n"]), 1)
        with cards[2].container(border=True, key="card_majority"):
            st.metric("Majority baseline", ui.fmt(majority),
                      help="Accuracy of always predicting the larger class: any model must beat this")
            larger = "malignant" if positives * 2 >= first["n"] else "benign"
            st.markdown(f"always **{larger}**  \non {int(first['n'])} {split_choice} images")
    study = reference[reference["method"] != "stain"]
    top = study[study["accuracy"] == study["accuracy"].max()]
    reasons = study_comparable(exp.synthetic, shared_patients, exp.pipeline_config())
    with cards[3].container(border=True, key="card_study"):
        value = ui.fmt(top["accuracy"].iloc[0])
        if reasons:
            st.markdown(f"The study  \n### :gray[{value}]")
        else:
            st.metric("The study", value)
        st.markdown(f"**{plain(' = '.join(study_label(r) for _, r in top.iterrows()))}**"
                    f"{' (tie)' if len(top) > 1 else ''}  \ntest accuracy; {STUDY_PROTOCOL}")
        if reasons:
            st.caption("Not comparable with this experiment: " + ", ".join(reasons) + ".")
    with cards[4].container(border=True, key="card_leakage"):
        if manifest is None or split is None:
            st.metric("Leakage", "n/a")
            st.caption("no split yet")
        else:
            shared = shared_patients
            st.metric("Shared patients", shared,
                      help="Patients with images in more than one of train/val/test (by numeric patient id)")
            st.markdown(":red-badge[leaky split]  \npatients in several splits: optimistic" if shared
                        else ":green-badge[leak-free]  \npatient-level split")

# -- is the best ensemble better than the best single model? ---------------------------------------------------
if best.get("single", (None,))[0] and best.get("ensemble", (None,))[0] and preds is not None:
    single, ensemble = best["single"][0], best["ensemble"][0]
    frame = compare.paired_frame(cached.pair_rows(exp, preds, single, ensemble, split_choice), single, ensemble, split_choice)
    with st.container(key="ov_verdict"):
        if frame.empty:
            st.info("The best ensemble and the best single model share no images on this split: no paired verdict.")
        else:
            y = frame["label"].to_numpy().astype(int)
            groups = frame["patient_num"].to_numpy() if "patient_num" in frame else np.arange(len(frame))
            stats = compare.ab_stats(y, frame["prob_a"].to_numpy(), frame["pred_a"].to_numpy(), frame["prob_b"].to_numpy(),
                                     frame["pred_b"].to_numpy(), groups)
            v = paired_verdict(stats, len(frame))
            box = st.success if v.word == "better" else st.error if v.word == "worse" else st.info
            ci = "no CI" if any(map(np.isnan, v.ci)) else f"95% CI {v.ci[0]:+.3f} to {v.ci[1]:+.3f}"
            box(f"**Is the best ensemble better than the best single model?** {runs.md(ensemble)} against "
                f"{runs.md(single)} on the same {v.images} {split_choice} images: **{v.word}** (accuracy Δ {v.delta:+.4f}, "
                f"{ci}, paired bootstrap over patients; McNemar p = {v.p_value:.3g}).", icon=":material/balance:")
            st.page_link(nav.page("confusion"), label="Open this comparison (A/B)", icon=":material/compare:",
                         query_params=state.link_params(exp.name, a=single, b=ensemble, split=split_choice))

# -- accuracy / AUC chart ----------------------------------------------------------------------------------------
if table is not None and not table.empty:
    st.subheader(f"Accuracy and ROC AUC with 95% CIs ({split_choice})")
    order = table.sort_values(["accuracy", "roc_auc"], ascending=True)
    labels = [runs.label(r) for r in order["run_id"]]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.03, subplot_titles=("Accuracy", "ROC AUC"))
    for c, metric in enumerate(("accuracy", "roc_auc"), start=1):
        lo, hi = order.get(f"{metric}_lo"), order.get(f"{metric}_hi")
        err = None if lo is None else dict(type="data", symmetric=False, array=(hi - order[metric]).fillna(0),
                                           arrayminus=(order[metric] - lo).fillna(0), thickness=1.5)
        fig.add_scatter(x=order[metric], y=labels, mode="markers", error_x=err, row=1, col=c, showlegend=False,
                        marker=dict(size=10, color=[runs.colour[r] for r in order["run_id"]]),
                        hovertemplate="%{y}: %{x:.4f}<extra></extra>")
    by_alias = {runs.label(r): r for r in runs.ids}
    ref_x, ref_y = [], []
    for _, ref in reference[reference["method"] != "stain"].iterrows():
        alias = study_label(ref)
        if alias in labels:
            ref_x.append(ref["accuracy"])
            ref_y.append(alias)
    if ref_x:
        fig.add_scatter(x=ref_x, y=ref_y, mode="markers", name="the study (image-level split)", row=1, col=1,
                        marker=dict(symbol="diamond-open", size=13, color="black", line=dict(width=2)),
                        hovertemplate="study: %{x:.4f}<extra>%{y}</extra>")
    positives = int(order["tp"].iloc[0] + order["fn"].iloc[0])
    base_acc = max(positives, int(order["n"].iloc[0]) - positives) / max(int(order["n"].iloc[0]), 1)
    for c, base in ((1, base_acc), (2, 0.5)):
        fig.add_vline(x=base, line=dict(dash="dot", color="#cf222e", width=1), row=1, col=c)
    fig.update_layout(height=max(300, 26 * len(labels) + 110), margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.08 if len(labels) > 6 else -0.2))
    st.plotly_chart(plain_figure(fig), width="stretch", key="ov_chart")
    st.caption(f"Dots: this experiment, with its {ci_label(exp.ci_unit)}s. Open diamonds: the study's reported test accuracy "
               "for the same model or family ensemble (its split is image-level, so patients are shared). Dotted red lines: "
               f"the baselines to beat (majority-class accuracy {base_acc:.4f}; ROC AUC 0.5).")

    # -- the table --------------------------------------------------------------------------------------------
    st.subheader("Every run and ensemble")
    table["run"] = [runs.label(r) for r in table["run_id"]]
    rank = table["accuracy"].rank(method="min", ascending=False)
    ties = rank.map(rank.value_counts())
    table["rank"] = [f"{int(r)}" + (" (tie)" if t > 1 else "") if pd.notna(r) else "" for r, t in zip(rank, ties)]
    if "majority_accuracy" not in table:  # metrics from an older evaluate: the baseline follows from the counts
        positives = table["tp"] + table["fn"]
        table["majority_accuracy"] = [max(p, n - p) / max(n, 1) for p, n in zip(positives, table["n"])]
    fails = (table["accuracy"] <= table["majority_accuracy"]) | (table["roc_auc"] <= 0.5)
    table["baseline"] = ["no" if f else "yes" for f in fails]
    if fails.any():
        st.warning(f"{int(fails.sum())} run(s) do not beat the baseline (accuracy ≤ the majority baseline "
                   f"{table['majority_accuracy'].iloc[0]:.4f}, or ROC AUC ≤ 0.5): "
                   + ", ".join(runs.md(r) for r in table.loc[fails, "run_id"][:8]) + (" …" if fails.sum() > 8 else "")
                   + ". A high ROC AUC with a low accuracy means a good ranking at a wrong threshold: see `[evaluate] threshold "
                     "= \"validation\"`.", icon=":material/trending_down:")
    inverted = table["roc_auc_hi"].map(auc_inverted) if "roc_auc_hi" in table else pd.Series(False, index=table.index)
    if inverted.any():
        st.warning(f"{int(inverted.sum())} run(s) {INVERTED} (ROC AUC 95% CI wholly below 0.5): "
                   + ", ".join(runs.md(r) for r in table.loc[inverted, "run_id"][:8]) + (" …" if inverted.sum() > 8 else "")
                   + f". {INVERTED_MEANING}", icon=":material/swap_vert:")
        table.loc[inverted, "baseline"] = "no: inverted"
    for m in ("accuracy", "roc_auc", "patient_accuracy"):
        if f"{m}_lo" in table:
            table[f"{m}_ci"] = [f"{lo:.3f}–{hi:.3f}" if pd.notna(lo) else "" for lo, hi in zip(table[f"{m}_lo"], table[f"{m}_hi"])]
    table = table.sort_values(["accuracy", "run"], ascending=[False, True]).reset_index(drop=True)
    optional = [c for c in COLUMNS if c in table]
    shown = state.multiselect("Columns", optional, key="ov_cols", param="cols",
                              default=[c for c in optional if COLUMNS[c][2]], format_func=lambda c: COLUMNS[c][0],
                              help="Choose the columns; the run column stays pinned on the left")
    config = {"run": st.column_config.TextColumn("Run", pinned=True, help="Short run name; the full member list is in the "
                                                  "description column and in every picker's tooltip")}
    for c in shown:
        name, tip, _ = COLUMNS[c]
        table[f"{c}{SHOWN}"] = readable(table[c], c)
        config[f"{c}{SHOWN}"] = st.column_config.TextColumn(name, help=tip, alignment="right" if c in NUMBERS else None)
    table["description"] = [runs.tip[r] for r in table["run_id"]]
    config["description"] = st.column_config.TextColumn("Description", help="What the run is, with every member", width="large")
    selection = st.dataframe(table, hide_index=True, column_order=["run", *(f"{c}{SHOWN}" for c in shown), "description"],
                             column_config=config, on_select="rerun", selection_mode="multi-row", key="ov_table")
    chosen = [table["run_id"].iloc[i] for i in selection.selection.rows] if selection else []
    with st.container(horizontal=True, key="ov_actions"):
        if len(chosen) == 2:
            if st.button(f"Compare {runs.md(chosen[0])} and {runs.md(chosen[1])}", key="ov_compare", type="primary",
                         icon=":material/compare:", help="Their confusion matrices side by side, A/B"):
                st.switch_page(nav.page("confusion"), query_params=state.link_params(exp.name, a=chosen[0], b=chosen[1],
                                                                                      split=split_choice))
        elif len(chosen) == 1:
            if st.button(f"Errors of {runs.md(chosen[0])}", key="ov_errors", type="primary", icon=":material/image_search:"):
                st.switch_page(nav.page("images"), query_params=state.link_params(exp.name, run=chosen[0], split=split_choice))
        else:
            st.caption("Select one row to browse its errors, or two to compare them.")
        ui_csv = csv_safe(table[["run_id", "run", *[c for c in shown if c in table]]])
        st.download_button("Download CSV", ui_csv.to_csv(index=False).encode(), file_name=f"{exp.name}_{split_choice}_metrics.csv",
                           mime="text/csv", key="ov_csv", icon=":material/download:")

    # -- the study beside ours -------------------------------------------------------------------------------
    st.subheader(f"The published study beside ours ({exp.eval_splits[0]} split)")
    test_all = metrics[(metrics["group_type"] == "all") & (metrics["split"] == exp.eval_splits[0])].set_index("run_id")
    rows = []
    for _, ref in reference[reference["method"] != "stain"].iterrows():
        alias = study_label(ref)
        ours = by_alias.get(alias)
        row = {"run": alias, "study accuracy": ref["accuracy"],
               "our accuracy": test_all.loc[ours, "accuracy"] if ours in test_all.index else None}
        row["Δ (ours − study)"] = None if row["our accuracy"] is None else row["our accuracy"] - ref["accuracy"]
        row["study F1"] = ref["f1"]
        row["our F1"] = test_all.loc[ours, "f1"] if ours in test_all.index else None
        rows.append(row)
    beside = pd.DataFrame(rows)
    # numbers as text: a run this experiment did not train reads "not trained here", never "None"
    for c, form in (("study accuracy", "{:.4f}"), ("our accuracy", "{:.4f}"), ("Δ (ours − study)", "{:+.4f}"),
                    ("study F1", "{:.4f}"), ("our F1", "{:.4f}")):
        beside[c] = [form.format(v) if v is not None and pd.notna(v) else "not trained here" for v in beside[c]]
    st.dataframe(beside, hide_index=True, column_config={
        "run": st.column_config.TextColumn("Run", pinned=True),
        "Δ (ours − study)": st.column_config.TextColumn("Δ (ours − study)",
                                                        help="Negative: below the study (which used an image-level split)")})
    st.caption("Study: Azmoodeh-Kalati et al., Sci. Rep. 15:21541 (2025), image-level 70/15/15 split of full BreakHis with "
               "ImageNet weights. Ours: this experiment's test split" + (" on SYNTHETIC data." if exp.synthetic else "."))

# -- dataset and split --------------------------------------------------------------------------------------------
st.subheader("Dataset")
if manifest is None:
    if not exp.is_corrupt(exp.catalog.manifest):
        st.info(f"The image manifest is not found. Produce it with `{exp.command('manifest')}`.")
else:
    counts = cached.manifest_summary(exp, manifest)  # once per manifest file
    cols = st.columns(4)
    cols[0].metric("Images", counts["images"])
    cols[1].metric("Benign / malignant", f"{counts['benign']} / {counts['malignant']}")
    cols[2].metric("Patient folders / numeric ids", f"{counts['folders']} / {counts['patient_nums']}",
                   help="Folders: distinct (class, subtype, patient code) folders, as BreakHis counts them (a code can "
                        "appear under two subtypes). Numeric ids: distinct patient numbers, the stricter grouping.")
    cols[3].metric("Subtypes", counts["subtypes"])
    left, right = st.columns(2)
    left.caption("Images per class and magnification")
    left.dataframe(counts["by_magnification"])
    right.caption("Images and patient folders per subtype")
    right.dataframe(counts["per_subtype"], hide_index=True, column_config={
        "class_name": "Class", "subtype_name": "Subtype", "images": "Images", "patient_folders": "Patient folders"})

st.subheader("Split and leakage")
if split is None or manifest is None:
    if not exp.is_corrupt(exp.catalog.split):
        st.info(f"No split yet: `{exp.command('split')}`")
else:
    report = cached.leakage(exp, manifest, split).rename(columns=lambda c: c.replace("_", " ").replace("num", "(numeric id)")
                                                     .replace("patient id", "patient (folder code)"))
    st.dataframe(report, hide_index=True)
    if int(cached.leakage(exp, manifest, split)["shared_patient_num"].max()):
        st.error("Some patients appear in more than one of train/val/test: an image-level split. Accuracy on it is "
                 "optimistic (the model can recognise the patient, not the disease).")
    else:
        st.success("Leak-free: no patient appears in more than one of train/val/test.")
