"""The image browser: one run's images (errors first by default), filtered, sorted and paged. Active filters are
chips in the main area and reset when the run changes; every card links to its 2x5 Grad-CAM panel. The whole
view (run, split, filters, sort, page, heatmap) is in the URL."""

import numpy as np
import streamlit as st

from dashboard import cached, image_card, neighbours_panel, state, ui
from dashboard.runs import page_runs, run_picker
from pipeline.artifacts.catalog import GRADCAM_METHODS
from pipeline.core.decision import certainty_from_members, certainty_from_score, refer_least_certain

PAGE_SIZE = 12
SORTS = ["most confident errors first", "highest loss first", "image id"]
LIST_FILTERS = {"br_true": ("true", "true"), "br_pred": ("pred", "predicted"), "br_subtype": ("subtype", "subtype"),
                "br_mag": ("mag", "magnification"), "br_patient": ("patient", "patient")}  # key -> (param, chip name)

exp = ui.page_start("Image browser")
preds, runs = page_runs(exp, "Browsing errors", (st.query_params.get("run", ""),))


def reset_filters() -> None:
    """A new run starts from a clean slate: its errors, no filters, first page."""
    for key in LIST_FILTERS:
        st.session_state[key] = []
    st.session_state["br_conf"] = 0.5
    st.session_state["br_errors"] = True
    st.session_state["br_page"] = 1


errors = cached.errors_by_run(exp, preds, exp.eval_splits[0])
errors = errors[errors.index.isin(runs.ids)]
default_run = errors.idxmax() if len(errors) else runs.ids[0]
top = st.columns([3, 1, 1, 2])
run = run_picker("Run or ensemble", runs, key="br_run", param="run", default=default_run, where=top[0], on_change=reset_filters)
split = state.radio("Split", exp.eval_splits, key="br_split", param="split", where=top[1], horizontal=True)
with top[2]:
    st.write("")
    only_errors = state.toggle("Errors only", key="br_errors", param="errors", default=True)
sort = state.selectbox("Sort", SORTS, key="br_sort", param="sort", where=top[3])

rows = cached.run_rows(exp, preds, run, split).copy()  # from a (run, split) index, not a scan of every row
names = {0: "benign", 1: "malignant"}
with st.sidebar:
    st.header("Filters")
    truth = state.multiselect("True class", ["benign", "malignant"], key="br_true", param="true")
    predicted = state.multiselect("Predicted class", ["benign", "malignant"], key="br_pred", param="pred")
    subtype = state.multiselect("Subtype", sorted(rows["subtype"].dropna().unique().tolist()), key="br_subtype", param="subtype")
    mag = state.multiselect("Magnification", sorted(rows["magnification"].dropna().unique().tolist()), key="br_mag", param="mag")
    patient = state.multiselect("Patient", sorted(rows["patient_id"].dropna().astype(str).unique().tolist()), key="br_patient",
                                param="patient")
    conf = state.slider("Minimum confidence in the predicted class", 0.5, 1.0, key="br_conf", param="conf", default=0.5, step=0.01)
    refer = state.slider("Hide the most uncertain (%): referred", 0.0, 50.0, key="br_refer", param="refer", default=0.0, step=5.0,
                         help="Hide the images a referral of this share would send to a pathologist (least certain first: "
                              "member agreement for an ensemble, distance from 0.5 for one model), leaving the errors the "
                              "model would make on its own")
    st.header("Grad-CAM")
    members = runs.members_of(run)
    maps_by_method = {m: image_card.run_maps(exp, m, members) for m in GRADCAM_METHODS}
    methods = [m for m in GRADCAM_METHODS if maps_by_method[m]] or ["gradcam"]
    method = state.selectbox("Method", methods, key="br_cam", param="cam")
    heat_options = [image_card.MEAN, *members] if len(members) > 1 else members
    heat = state.selectbox("Heatmap", heat_options, key="br_heat", param="heat",
                           format_func=lambda m: m if m == image_card.MEAN else runs.label(m),
                           help="One member's map, or the mean of the members' maps")
    alpha = state.slider("Heatmap opacity", 0.0, 1.0, key="br_alpha", param="alpha", default=0.45, step=0.05)
    maps = maps_by_method.get(method, {})
    if maps:
        ui.colour_bar()

# -- filtering ------------------------------------------------------------------------------------------------
def certainty(rows, members: list[str]) -> np.ndarray:
    """Member agreement when every member's prediction of these images is present, else distance from 0.5."""
    if len(members) > 1:
        table = cached.member_probs(exp, preds, split, members)
        if set(members) <= set(table.columns) and set(rows["image_id"]) <= set(table.index):
            probs = table.loc[rows["image_id"].to_numpy(), members].to_numpy(dtype=float).T
            if not np.isnan(probs).any():
                return certainty_from_members(probs, rows["pred"].to_numpy())
    return certainty_from_score(rows["prob_malignant"].to_numpy())


if refer > 0 and len(rows):
    referred = refer_least_certain(certainty(rows, members), refer / 100)
    st.caption(f"{int(referred.sum())} of {len(rows)} images ({refer:g}%, the least certain) would be referred to a pathologist "
               f"and are hidden, {int((rows['pred'] != rows['label'])[referred].sum())} of them errors.")
    rows = rows[~referred]
rows["confidence"] = np.where(rows["pred"] == 1, rows["prob_malignant"], 1 - rows["prob_malignant"])
rows["loss"] = -np.log(np.clip(np.where(rows["label"] == 1, rows["prob_malignant"], 1 - rows["prob_malignant"]), 1e-7, 1))
if only_errors:
    rows = rows[rows["pred"] != rows["label"]]
if truth:
    rows = rows[rows["label"].map(names).isin(truth)]
if predicted:
    rows = rows[rows["pred"].map(names).isin(predicted)]
if subtype:
    rows = rows[rows["subtype"].isin(subtype)]
if mag:
    rows = rows[rows["magnification"].isin(mag)]
if patient:
    rows = rows[rows["patient_id"].astype(str).isin(patient)]
rows = rows[rows["confidence"] >= conf - 1e-9]
by = {"most confident errors first": ("confidence", False), "highest loss first": ("loss", False), "image id": ("image_id", True)}[sort]
rows = rows.sort_values([by[0], "image_id"], ascending=[by[1], True])


# -- chips ------------------------------------------------------------------------------------------------------
def remover(key: str, value=None):
    def remove() -> None:
        if key == "br_conf":
            st.session_state[key] = 0.5
        elif key == "br_errors":
            st.session_state[key] = False
        else:
            st.session_state[key] = [v for v in st.session_state[key] if v != value]
        st.session_state["br_page"] = 1
    return remove


def clear_all() -> None:
    reset_filters()
    st.session_state["br_errors"] = False


active = [("errors only", remover("br_errors"))] if only_errors else []
for key, (_, chip) in LIST_FILTERS.items():
    active += [(f"{chip}: {v}{'X' if key == 'br_mag' else ''}", remover(key, v)) for v in st.session_state.get(key, [])]
if conf > 0.5:
    active.append((f"confidence ≥ {conf:.2f}", remover("br_conf")))
ui.chips(active, key="br", on_clear_all=clear_all)

image_card.maps_notice(exp, method, members, maps, runs)
if rows.empty:
    st.info("No image matches: " + ("this run makes no errors under these filters; remove a chip or turn off "
                                     "‘Errors only’." if only_errors else "remove a filter chip."))
    st.stop()
page = ui.pager(len(rows), PAGE_SIZE, key="br_page", param="page")
shown = rows.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
member_probs = cached.member_probs(exp, preds, split, members)
neighbours = exp.neighbours()
if neighbours_panel.space_for(neighbours, members) is None and not exp.is_corrupt(exp.catalog.neighbours):
    st.caption(f"Nearest training images of each card: compute them with `{exp.command('neighbours')}`.")
cols = st.columns(3)
for i, r in enumerate(shown.itertuples(index=False)):
    with cols[i % 3]:
        image_card.card(exp, r, run, runs, member_probs, maps, heat, alpha, method, key="br_card")
        neighbours_panel.button(exp, neighbours, members, str(r.image_id), key=f"br_nb_{image_card.slug(str(r.image_id))}",
                                preferred=heat)
