"""Compare experiments: the same runs on two or more splits (e.g. the study's image-level split against a patient-level
one, or the folds of one protocol), with each experiment's leakage as its header, accuracy / balanced accuracy /
ROC AUC (and the patient-level numbers) with CIs per experiment and the difference, the baselines each must beat,
and a dumbbell chart that shows the gap at a glance. Fold experiments of one protocol collapse to mean ± sd."""

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import leak_headline, state, ui
from dashboard.data import get_experiment, list_experiments
from dashboard.experiments import COMPARED, baseline_of, collapse, comparison_table, overall_rows, protocols, shared_train_test_patients
from dashboard.runs import display_names
from dashboard.text import code, plain
from dashboard.text import plain_figure
from pipeline.artifacts.catalog import is_run_id, parse_run_id
from pipeline.artifacts.run_names import run_colour, run_sort_key
from pipeline.core.decision import INVERTED, INVERTED_MEANING, auc_inverted, ci_label

NAMES = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "roc_auc": "ROC AUC",
         "patient_accuracy": "Patient-level accuracy", "patient_roc_auc": "Patient-level ROC AUC"}
BASELINE_WORDS = {"accuracy": "majority-class accuracy", "balanced_accuracy": "0.5 (chance)", "roc_auc": "0.5 (chance)",
                  "patient_accuracy": "majority-class share of patients", "patient_roc_auc": "0.5 (chance)"}
SYMBOLS = ["circle", "diamond", "square", "triangle-up", "x", "star"]

current = ui.page_start("Compare experiments")
names = list_experiments()
others = [n for n in names if n != current.name]
chosen = state.multiselect("Experiments", names, key="cx_exps", param="exps", default=[current.name, *others[:1]],
                           help="Two or more experiments: e.g. the image-level split and the patient-level split of the same "
                                "runs, or the fold experiments of one protocol (they collapse to mean ± sd)")
split = state.radio("Split", ["test", "val"], key="cx_split", param="split", horizontal=True)
if len(chosen) < 2:
    st.info("Pick two or more experiments to compare." + ("" if len(names) > 1 else
            " Only one experiment exists under the artifacts folder: train another split of the same runs, e.g. "
            f"{code('python -m pipeline run --config pipeline/configs/paper.toml')}"))
    st.stop()

exps = {n: get_experiment(n) for n in chosen}
configs = {n: e.pipeline_config() for n, e in exps.items()}
tables: dict[str, pd.DataFrame] = {}
missing: dict[str, str] = {}
for name, exp in exps.items():
    metrics = exp.metrics()
    if metrics is None:
        missing[name] = ("its metrics.parquet cannot be read" if exp.is_corrupt(exp.catalog.metrics)
                         else "it has no metrics.parquet yet") + f": {code(exp.command('metrics'))}"
        continue
    rows = overall_rows(metrics, split)
    rows = rows[[is_run_id(r) for r in rows.index]]
    if rows.empty:
        missing[name] = f"its metrics.parquet has no {split} rows: {code(exp.command('metrics'))}"
        continue
    tables[name] = rows
protos = protocols([n for n in chosen if n in tables], configs)
leaks = {name: shared_train_test_patients(exps[name].manifest(), exps[name].split(),
                                          int(((configs[name] or {}).get("split") or {}).get("fold", 0) or 0)) for name in chosen}

# -- one name per run: the current experiment's names (as on every other page), then the others' --------------------
runs = sorted({r for t in tables.values() for r in t.index}, key=run_sort_key)
alias = display_names(current, [exps[n] for n in chosen if n != current.name], runs)

# -- the headline: the leak as one number -------------------------------------------------------------------
leak_headline.render(exps, leaks, {n: exps[n].metrics() for n in chosen}, split, lambda r: alias.get(r, r))

# -- one header per experiment: what split it is and how many patients leak --------------------------------
st.subheader("The experiments")
columns = st.columns(len(chosen))
for col, name in zip(columns, chosen):
    exp, config = exps[name], configs[name] or {}
    with col.container(border=True, key=f"cx_head_{chosen.index(name)}"):
        st.markdown(f"**{plain(name)}**" + (" · SYNTHETIC" if exp.synthetic else ""))
        fold = int((config.get("split") or {}).get("fold", 0) or 0)
        shared = leaks[name]
        if shared is None:
            st.metric("Patients in train and test", "n/a", help="No split.parquet (or no rows for this fold)")
        else:
            st.metric("Patients in train and test", shared, help="Numeric patient ids with images on both sides of the split "
                      f"(fold {fold}); any at all makes accuracy optimistic: the model can recognise the patient")
            st.markdown(":red-badge[leaky: image-level]" if shared else ":green-badge[leak-free: patient-level]")
        mode = (config.get("split") or {}).get("mode")
        folds = (config.get("split") or {}).get("folds")
        st.caption(" · ".join(x for x in (f"split mode {plain(mode)}" if mode else "", f"fold {fold} of {folds}" if folds else "")
                              if x) or "no pipeline_run.json: split settings unknown")
        if name in missing:
            st.warning(f"Not compared: {missing[name]}", icon=":material/block:")
        else:
            table = tables[name]
            st.caption(f"{len(table)} runs and ensembles · majority baseline {ui.fmt(table['majority_accuracy'].iloc[0], 3)}")
            if "patient_accuracy" not in table:
                st.caption(f"No patient-level columns (metrics from an older evaluate): {code(exp.command('metrics'))}")

if len(protos) < 2:
    st.info("Fewer than two of the chosen experiments have metrics to compare (see above for what each is missing)."
            if len(tables) < 2 else "The chosen experiments are the folds of one protocol: their mean ± sd is below; pick "
            "another experiment to compare the protocol with.")
    if len(tables) < 2:
        st.stop()

members = sorted({r for r in runs if parse_run_id(r).kind == "single" and parse_run_id(r).stain == "none"})
present = [m for m in COMPARED if any(m in t for t in tables.values())]

# -- dumbbell chart ------------------------------------------------------------------------------------------
metric = state.radio("Metric", present, key="cx_metric", param="metric", horizontal=True, format_func=lambda m: NAMES[m],
                     help="Chart metric; every metric is in the tables below")
st.subheader(f"{NAMES[metric]} per model ({split})")
summaries = {p.label: collapse(p, tables, metric) for p in protos}
shown = [r for r in runs if any(r in s.index and not pd.isna(s.loc[r, "value"]) for s in summaries.values())]
labels = [alias[r] for r in shown]
fig = go.Figure()
for r, label in zip(shown, labels):  # the dumbbell's bar: from the lowest to the highest protocol value
    values = [s.loc[r, "value"] for s in summaries.values() if r in s.index and not pd.isna(s.loc[r, "value"])]
    if len(values) > 1:
        fig.add_scatter(x=[min(values), max(values)], y=[label, label], mode="lines", showlegend=False, hoverinfo="skip",
                        line=dict(color="#b0b7c3", width=4))
for i, proto in enumerate(protos):
    s = summaries[proto.label].reindex(shown)
    if proto.is_folds:
        err = dict(type="data", array=s["sd"].fillna(0), thickness=1.5)
        points_x = [v for r in shown for v in (s.loc[r, "points"] if isinstance(s.loc[r, "points"], list) else [])]
        points_y = [alias[r] for r in shown for _ in (s.loc[r, "points"] if isinstance(s.loc[r, "points"], list) else [])]
        fig.add_scatter(x=points_x, y=points_y, mode="markers", name=f"{proto.label}: each fold", showlegend=True,
                        marker=dict(symbol=f"{SYMBOLS[i % len(SYMBOLS)]}-open", size=7, color="#6e7781"),
                        hovertemplate="%{y}: %{x:.4f} (one fold)<extra></extra>")
    else:
        err = dict(type="data", symmetric=False, array=(s["hi"] - s["value"]).fillna(0), arrayminus=(s["value"] - s["lo"]).fillna(0),
                   thickness=1.5)
    fig.add_scatter(x=s["value"], y=labels, mode="markers", name=ui.for_plotly(proto.label), error_x=err,
                    marker=dict(symbol=SYMBOLS[i % len(SYMBOLS)], size=12, color=[run_colour(r, members) for r in shown],
                                line=dict(width=1, color="black")),
                    hovertemplate=f"{ui.for_plotly(proto.label)}<br>%{{y}}: %{{x:.4f}}<extra></extra>")
    base = baseline_of(proto, tables, metric)
    if not math.isnan(base):
        fig.add_vline(x=base, line=dict(dash="dot", color="#cf222e", width=1),
                      annotation=dict(text=f"baseline {ui.for_plotly(proto.label)}: {base:.3f}", font=dict(size=10)))
fig.update_layout(height=max(300, 26 * len(labels) + 130), margin=dict(l=10, r=10, t=40, b=10),
                  legend=dict(orientation="h", y=-0.12), xaxis_title=NAMES[metric])
st.plotly_chart(plain_figure(fig), width="stretch", key="cx_chart")
image_level = [n for n in tables if exps[n].ci_unit == "image"]
st.caption("One row per model; one marker per experiment, joined by a bar (the gap). Error bars: patient-bootstrap 95% CI for "
           "one experiment, ± 1 sd across folds for a fold protocol (open markers: each fold). Dotted lines: the baseline each "
           f"experiment must beat ({BASELINE_WORDS[metric]})."
           + (f" {', '.join(plain(n) for n in image_level)}: {ci_label('image')} instead." if image_level else ""))
inverted = {n: [alias.get(r, r) for r in t.index if "roc_auc_hi" in t and auc_inverted(t.loc[r, "roc_auc_hi"])]
            for n, t in tables.items()}
if any(inverted.values()):
    st.warning(f"ROC AUC that {INVERTED}: " + "; ".join(f"{plain(n)}: {', '.join(plain(a) for a in rs)}"
                                                         for n, rs in inverted.items() if rs)
               + f". {INVERTED_MEANING}", icon=":material/swap_vert:")

# -- tables -------------------------------------------------------------------------------------------------
for m in present:
    st.subheader(NAMES[m])
    table = comparison_table(protos, tables, m, runs)
    table.insert(0, "run", [alias[r] for r in table["run_id"]])
    below = [[p.label for p in protos if row[f"below::{p.label}"]] for _, row in table.iterrows()]
    table["does not beat the baseline in"] = [", ".join(b) for b in below]
    deltas = [c for c in table if c.startswith("Δ ")]
    config = {"run": st.column_config.TextColumn("Run", pinned=True)}
    config.update({c: st.column_config.NumberColumn(c, format="%+.4f", help="Later experiment minus the first") for c in deltas})
    config.update({p.label: st.column_config.TextColumn(p.label, help="Value (95% CI), or mean ± sd over folds") for p in protos})
    st.dataframe(table, hide_index=True, key=f"cx_table_{m}", column_order=["run", *[p.label for p in protos], *deltas,
                                                                              "does not beat the baseline in"], column_config=config)
    flagged = [alias[r] for r, b in zip(table["run_id"], below) if b]
    bases = ", ".join(f"{p.label} {ui.fmt(baseline_of(p, tables, m), 3)}" for p in protos)
    st.caption(f"Baseline ({BASELINE_WORDS[m]}): {plain(bases)}."
               + (f" {len(flagged)} run(s) do not beat it somewhere: {plain(', '.join(flagged[:6]))}"
                  + (" …" if len(flagged) > 6 else "") if flagged else " Every run beats it."))
