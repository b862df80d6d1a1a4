"""Embedding map: each run's feature space in 2-D (t-SNE or PCA, precomputed by `python -m pipeline neighbours`), train,
val and test images coloured by class, patient, magnification, split or correctness. Under an image-level split the
patients form islands that straddle train and test: the leak, seen. Selecting points (box or lasso) lists their
thumbnails (every image inside the box or lasso, drawn or not); a link opens those patients in the image browser.
WebGL scatter (Scattergl); above 20,000 points a seeded sample is drawn (all on request), and the figure is built
once per run, map and colouring. The view (run, map, colour, patients) is in the URL."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import cached, nav, state, ui
from dashboard.data import image_for
from dashboard.runs import identify
from dashboard.text import plain, plain_figure
from pipeline.artifacts.catalog import is_run_id
from pipeline.core.sampling import in_box, in_polygon

NEAREST = "nearest training image"
COLOURS = ["class", "patient", "magnification", "split", "correctness", NEAREST]
SAME, OTHER = "same patient (the leak)", "another patient"
MAP_NAMES = {"tsne": "t-SNE", "pca": "PCA"}
LEGEND_LIMIT = 12  # more categories than this (patients): one trace, colours cycled, the category in the hover
MAX_THUMBS = 24
POINT_BUDGET = 20_000  # above this many points the map draws a seeded sample unless asked for all (issue 26)
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"]
FIXED = {"benign": "#2ca02c", "malignant": "#d62728", "right": "#2ca02c", "wrong": "#d62728", "train": "#9e9e9e",
         SAME: "#d62728", OTHER: "#1f77b4", "no neighbour computed": "#c7c7c7",
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
preds = exp.predictions()
names = identify(preds).alias if preds is not None else {}
top = st.columns([2, 1, 2])
run = state.selectbox("Run", run_ids, key="em_run", param="run", where=top[0], explicit=True,
                      format_func=lambda r: names.get(r, r),
                      help="A single model: each has its own feature space (ensembles have none)")
methods = [m for m in MAP_NAMES if ((emb["run_id"] == run) & (emb["method"] == m)).any()]
method = state.radio("Map", methods, key="em_map", param="map", where=top[1], format_func=MAP_NAMES.get, horizontal=True,
                     help="t-SNE keeps neighbourhoods (clusters); PCA keeps the large-scale geometry")
colour = state.selectbox("Colour by", COLOURS, key="em_colour", param="colour", where=top[2],
                         help="'nearest training image': whether the image's nearest training image in this model's feature "
                              "space is of the same patient (red: the model may recognise the patient, not the disease)")

points = cached.embedding_points(str(exp.catalog.embedding), cached.fingerprint(exp.catalog.embedding),
                                 str(exp.catalog.manifest), cached.fingerprint(exp.catalog.manifest),
                                 str(exp.catalog.predictions), cached.fingerprint(exp.catalog.predictions), run, method)
points = points.copy()
if exp.catalog.neighbours.exists():
    exp.neighbours()  # validated once per file (a broken file is reported here, the map stays uncoloured)
same = cached.nearest_same_patient(exp, run)
nearest = pd.Series(np.where(same.to_numpy(dtype=bool), SAME, OTHER), index=same.index, dtype=object)
points[NEAREST] = np.where(points["split"] == "train", "train",
                           points["image_id"].astype(str).map(nearest).fillna("no neighbour computed"))
only_same = state.toggle("Only images whose nearest training image is of the same patient", key="em_same", param="same",
                         help="Keeps the val/test images the model places next to a training image of their own patient "
                              "(and the training images, for reference)")
if only_same:
    points = points[points[NEAREST].isin([SAME, "train"])]
points = points.reset_index(drop=True)


def figure(points: pd.DataFrame, colour: str) -> tuple[go.Figure, list[np.ndarray]]:
    """One Scattergl trace per category (legend) or, for many categories, one trace with cycled colours; returns the
    figure and, per trace, the row numbers of its points (to map a selection back to images)."""
    fig = go.Figure()
    # one vectorised string concatenation (a Python f-string per point cost ~0.2 s for 80,000 points)
    hover = ui.for_plotly_column(points["image_id"]) + " · " + ui.for_plotly_column(points["class"]) + " · patient " \
        + ui.for_plotly_column(points["patient"]) + " · " + ui.for_plotly_column(points["magnification"]) + " · " \
        + ui.for_plotly_column(points["split"])
    hover = hover.to_numpy(dtype=object)
    xs, ys = points["x"].to_numpy(), points["y"].to_numpy()
    rows: list[np.ndarray] = []
    categories = sorted(points[colour].unique().tolist())
    symbols = {"train": "circle", "val": "diamond", "test": "square"}
    # one trace per split (and category), each with one symbol: plotly validates a per-point symbol list point by
    # point in Python (~0.7 s for 20,000 points, issue 26)
    splits, values = points["split"].to_numpy(), points[colour].to_numpy()
    if len(categories) <= LEGEND_LIMIT:
        for k, cat in enumerate(categories):
            for j, split in enumerate(sorted(set(splits[values == cat]))):
                idx = np.flatnonzero((values == cat) & (splits == split))
                rows.append(idx)
                fig.add_trace(go.Scattergl(x=xs[idx], y=ys[idx], mode="markers", name=ui.for_plotly(cat),
                                           legendgroup=str(k), showlegend=j == 0,
                                           marker=dict(size=6, color=FIXED.get(cat, PALETTE[k % len(PALETTE)]), opacity=0.8,
                                                       symbol=symbols.get(split, "circle")),
                                           hovertext=hover[idx], hoverinfo="text"))
    else:
        codes = {cat: k for k, cat in enumerate(categories)}
        for split in sorted(set(splits)):
            idx = np.flatnonzero(splits == split)
            rows.append(idx)
            fig.add_trace(go.Scattergl(x=xs[idx], y=ys[idx], mode="markers", showlegend=False,
                                       marker=dict(size=6, opacity=0.8, color=[PALETTE[codes[c] % len(PALETTE)] for c in values[idx]],
                                                   symbol=symbols.get(split, "circle")),
                                       hovertext=hover[idx], hoverinfo="text"))
    fig.update_layout(height=620, margin=dict(l=10, r=10, t=30, b=10), dragmode="lasso",
                      legend=dict(orientation="h", y=-0.05), xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False))
    return fig, rows


@st.cache_resource(show_spinner=False, max_entries=16)
def cached_figure(key: tuple, colour: str, drawn: np.ndarray) -> tuple[go.Figure, list[np.ndarray]]:
    """The figure of one (files, run, map, colouring, drawn rows): built once, not on every rerun (issue 26). Its rows
    are numbered in the full ``points`` table."""
    fig, rows = figure(points.iloc[drawn].reset_index(drop=True), colour)
    return fig, [np.asarray(drawn)[r] for r in rows]


chosen_patients = state.multiselect("Or show the images of patients", sorted(points["patient"].unique()), key="em_patients",
                                    param="patient")
draw_all = len(points) > POINT_BUDGET and st.toggle(f"Draw all {len(points):,} points", key="em_all",
                                                    help=f"Above {POINT_BUDGET:,} points the map draws a seeded sample (and "
                                                         "every point of the chosen patients); a box or lasso still lists "
                                                         "every image inside it")
chosen_rows = np.flatnonzero(points["patient"].isin(chosen_patients).to_numpy())
drawn = cached.shown_rows(len(points), len(points) if draw_all else POINT_BUDGET, keep=chosen_rows)
files = tuple(cached.fingerprint(f) for f in (exp.catalog.embedding, exp.catalog.manifest, exp.catalog.predictions))
fig, trace_rows = cached_figure((files, run, method, only_same), colour, drawn)  # an array: hashed as bytes, fast
n_cat = points[colour].nunique()
event = st.plotly_chart(plain_figure(fig), key="em_chart", on_select="rerun", selection_mode=("points", "box", "lasso"), width="stretch")
st.caption(f"{len(points):,} images of {plain(names.get(run, run))} ({MAP_NAMES[method]})"
           + (f", {len(drawn):,} drawn (a seeded sample)" if len(drawn) < len(points) else "")
           + "; circles train, diamonds val, squares test"
           + (f"; {n_cat} {colour} values, colours repeat (hover a point)" if n_cat > LEGEND_LIMIT else "")
           + ". Draw a box or lasso to list the images.")

# -- selection: chart points, every point inside a box or lasso, or whole patients --------------------------------
selected_rows: list[int] = []
for p in (event.selection.get("points", []) if event else []):
    curve, index = p.get("curve_number"), p.get("point_index")
    if curve is not None and index is not None and curve < len(trace_rows) and index < len(trace_rows[curve]):
        selected_rows.append(int(trace_rows[curve][index]))
x_all, y_all = points["x"].to_numpy(), points["y"].to_numpy()
for box in (event.selection.get("box", []) if event else []):
    if len(box.get("x", [])) == 2 and len(box.get("y", [])) == 2:
        selected_rows += in_box(x_all, y_all, box["x"], box["y"]).tolist()
for lasso in (event.selection.get("lasso", []) if event else []):
    if len(lasso.get("x", [])) >= 3 and len(lasso.get("x", [])) == len(lasso.get("y", [])):
        selected_rows += in_polygon(x_all, y_all, lasso["x"], lasso["y"]).tolist()
if "em_selection_seeded" not in st.session_state:  # first run of this view: the selection comes from the URL
    st.session_state["em_selection_seeded"] = True
    wanted = set(st.query_params.get_all("sel"))
    selected_rows = points.index[points["image_id"].astype(str).isin(wanted)].tolist() if wanted else selected_rows
else:
    state.set_params(sel=sorted(points.loc[sorted(set(selected_rows)), "image_id"].astype(str)) or None)
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
index = cached.row_index(exp)
if not evaluated.empty and index is not None and any(r == run for r, _ in index.positions):
    split = evaluated["split"].mode().iloc[0]
    st.page_link(nav.page("images"), label="Open these patients in the image browser", icon=":material/image_search:",
                 query_params=state.link_params(exp.name, run=run, split=split, errors="0",
                                                patient=sorted(evaluated["patient"].unique().tolist())))
selected = selected.assign(_leak=selected[NEAREST] != SAME)  # same-patient nearest neighbours first
shown = selected.sort_values(["_leak", "patient", "split", "image_id"]).head(MAX_THUMBS)
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
        st.caption(" · ".join(plain(v) for v in (r["split"], r["class"], f"patient {r['patient']}", r["magnification"]))
                   + (" · nearest training image: same patient" if r[NEAREST] == SAME else ""))
