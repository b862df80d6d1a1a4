"""Embedding map: each run's feature space in 2-D (t-SNE or PCA, precomputed by `python -m pipeline neighbours`), train,
val and test images coloured by class, patient, magnification, split or correctness. Under an image-level split the
patients form islands that straddle train and test: the leak, seen. Selecting points (box or lasso) lists their
thumbnails; a link opens those patients in the image browser. WebGL scatter (Scattergl), so the full database's
7,909 points stay responsive. The view (run, map, colour, patients) is in the URL."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import nav, state, ui
from dashboard.data import image_for
from dashboard.text import code, plain
from dashboard.text import plain_figure
from pipeline.artifacts.catalog import is_run_id

COLOURS = ["class", "patient", "magnification", "split", "correctness"]
MAP_NAMES = {"tsne": "t-SNE", "pca": "PCA"}
LEGEND_LIMIT = 12  # more categories than this (patients): one trace, colours cycled, the category in the hover
MAX_THUMBS = 24
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"]
FIXED = {"benign": "#2ca02c", "malignant": "#d62728", "right": "#2ca02c", "wrong": "#d62728", "train": "#9e9e9e",
         "train (not predicted)": "#c7c7c7", "val": "#ff7f0e", "test": "#1f77b4"}

exp = ui.page_start("Embedding map")
emb = exp.embedding()
ui.require(exp, emb, "neighbours", "2-D maps of the models' feature spaces (embedding.parquet)", exp.catalog.embedding)
manifest = exp.manifest()
ui.require(exp, manifest, "manifest", "The image manifest", exp.catalog.manifest)

run_ids = sorted(r for r in emb["run_id"].astype(str).unique() if is_run_id(r))
if not run_ids:
    st.info(f"embedding.parquet holds no run the pipeline writes. Recompute it with `{exp.command('neighbours')}`.")
    st.stop()
top = st.columns([2, 1, 2])
run = state.selectbox("Run", run_ids, key="em_run", param="run", where=top[0], explicit=True,
                      help="A single model: each has its own feature space (ensembles have none)")
methods = [m for m in MAP_NAMES if ((emb["run_id"] == run) & (emb["method"] == m)).any()]
method = state.radio("Map", methods, key="em_map", param="map", where=top[1], format_func=MAP_NAMES.get, horizontal=True,
                     help="t-SNE keeps neighbourhoods (clusters); PCA keeps the large-scale geometry")
colour = state.selectbox("Colour by", COLOURS, key="em_colour", param="colour", where=top[2])

points = emb[(emb["run_id"] == run) & (emb["method"] == method)][["image_id", "split", "x", "y"]]
meta = manifest[["image_id", "label", "patient_id", "magnification", "subtype"]]
points = points.merge(meta, on="image_id", how="left")
preds = exp.predictions()
pred = (preds[preds["run_id"] == run].drop_duplicates("image_id").set_index("image_id")["pred"] if preds is not None
        else pd.Series(dtype=float))
points["pred"] = points["image_id"].map(pred)
points["class"] = points["label"].map({0: "benign", 1: "malignant"}).fillna("unknown")
points["patient"] = points["patient_id"].astype(object).where(points["patient_id"].notna(), "unknown").astype(str)  # not in the manifest
points["magnification"] = [f"{m}X" if pd.notna(m) else "unknown" for m in points["magnification"]]
points["correctness"] = np.where(points["split"] == "train", "train (not predicted)",
                                 np.where(points["pred"].isna(), "no prediction",
                                          np.where(points["pred"] == points["label"], "right", "wrong")))
points = points.reset_index(drop=True)


def figure(points: pd.DataFrame, colour: str) -> tuple[go.Figure, list[np.ndarray]]:
    """One Scattergl trace per category (legend) or, for many categories, one trace with cycled colours; returns the
    figure and, per trace, the row numbers of its points (to map a selection back to images)."""
    fig = go.Figure()
    hover = [ui.for_plotly(f"{i}<br>{c} · patient {p} · {m} · {s}")
             for i, c, p, m, s in zip(points["image_id"], points["class"], points["patient"], points["magnification"], points["split"])]
    hover = np.asarray(hover, dtype=object)
    rows: list[np.ndarray] = []
    categories = sorted(points[colour].unique().tolist())
    symbols = {"train": "circle", "val": "diamond", "test": "square"}
    if len(categories) <= LEGEND_LIMIT:
        for k, cat in enumerate(categories):
            idx = np.flatnonzero(points[colour].to_numpy() == cat)
            rows.append(idx)
            part = points.iloc[idx]
            fig.add_trace(go.Scattergl(x=part["x"], y=part["y"], mode="markers", name=ui.for_plotly(cat),
                                       marker=dict(size=6, color=FIXED.get(cat, PALETTE[k % len(PALETTE)]), opacity=0.8,
                                                   symbol=[symbols.get(s, "circle") for s in part["split"]]),
                                       hovertext=hover[idx], hoverinfo="text"))
    else:
        codes = {cat: k for k, cat in enumerate(categories)}
        rows.append(np.arange(len(points)))
        fig.add_trace(go.Scattergl(x=points["x"], y=points["y"], mode="markers", showlegend=False,
                                   marker=dict(size=6, opacity=0.8, color=[PALETTE[codes[c] % len(PALETTE)] for c in points[colour]],
                                               symbol=[symbols.get(s, "circle") for s in points["split"]]),
                                   hovertext=hover, hoverinfo="text"))
    fig.update_layout(height=620, margin=dict(l=10, r=10, t=30, b=10), dragmode="lasso",
                      legend=dict(orientation="h", y=-0.05), xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False))
    return fig, rows


fig, trace_rows = figure(points, colour)
n_cat = points[colour].nunique()
event = st.plotly_chart(plain_figure(fig), key="em_chart", on_select="rerun", selection_mode=("points", "box", "lasso"), width="stretch")
st.caption(f"{len(points):,} images of {code(run)} ({MAP_NAMES[method]}); circles train, diamonds val, squares test"
           + (f"; {n_cat} {colour} values, colours repeat (hover a point)" if n_cat > LEGEND_LIMIT else "")
           + ". Draw a box or lasso to list the images.")

# -- selection: chart points, or whole patients ----------------------------------------------------------------
selected_rows: list[int] = []
for p in (event.selection.get("points", []) if event else []):
    curve, index = p.get("curve_number"), p.get("point_index")
    if curve is not None and index is not None and curve < len(trace_rows) and index < len(trace_rows[curve]):
        selected_rows.append(int(trace_rows[curve][index]))
chosen_patients = state.multiselect("Or show the images of patients", sorted(points["patient"].unique()), key="em_patients",
                                    param="patient")
selected = points.iloc[sorted(set(selected_rows))]
if chosen_patients:
    selected = pd.concat([selected, points[points["patient"].isin(chosen_patients)]]).drop_duplicates("image_id")
if selected.empty:
    st.stop()
st.subheader(f"{len(selected)} selected image{'s' if len(selected) != 1 else ''}")
counts = selected.groupby(["patient", "split"]).size().unstack(fill_value=0)
st.caption("Per patient: " + "; ".join(f"{plain(p)}: " + ", ".join(f"{int(n)} {s}" for s, n in row.items() if n)
                                        for p, row in counts.head(12).iterrows())
           + (f"; and {len(counts) - 12} more patients" if len(counts) > 12 else ""))
evaluated = selected[selected["split"].isin(["val", "test"])]
if not evaluated.empty and preds is not None and (preds["run_id"] == run).any():
    split = evaluated["split"].mode().iloc[0]
    st.page_link(nav.page("images"), label="Open these patients in the image browser", icon=":material/image_search:",
                 query_params=state.link_params(exp.name, run=run, split=split, errors="0",
                                                patient=sorted(evaluated["patient"].unique().tolist())))
shown = selected.sort_values(["patient", "split", "image_id"]).head(MAX_THUMBS)
if len(selected) > MAX_THUMBS:
    st.caption(f"The first {MAX_THUMBS} by patient are shown.")
cols = st.columns(6)
for i, (_, r) in enumerate(shown.iterrows()):
    with cols[i % 6]:
        img = image_for(exp, str(r["image_id"]), 160)
        if img is not None:
            st.image(img)
        else:
            st.caption("image file not available")
        st.caption(" · ".join(plain(v) for v in (r["split"], r["class"], f"patient {r['patient']}", r["magnification"])))
