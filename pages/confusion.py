"""Confusion matrices of two runs, A and B, side by side; their difference coloured by what it means for B; a
click on any cell lists its images (with the other run's prediction beside each). Filters, runs and the open
cell are in the URL."""

import pandas as pd
import streamlit as st

from dashboard import cached, compare, image_card, nav, state, ui
from dashboard.runs import best_runs, page_runs
from pipeline.artifacts.catalog import parse_run_id
from pipeline.core.metrics import confusion_counts

PAGE_SIZE = 12

exp = ui.page_start("Confusion matrices")
preds, runs = page_runs(exp, "A confusion matrix", (st.query_params.get("a", ""), st.query_params.get("b", "")))


def close_cell() -> None:
    """Forget the open cell (and the charts' point selection, so the same cell can be clicked again)."""
    state.clear("cell", "dpage", "cpage")
    st.session_state["cm_nonce"] = st.session_state.get("cm_nonce", 0) + 1


f1, f2, f3, f4 = st.columns([1, 2, 2, 1])
split = state.radio("Split", exp.eval_splits, key="cm_split", param="split", where=f1, horizontal=True, on_change=close_cell)
mags = state.multiselect("Magnification", sorted(preds["magnification"].dropna().unique().tolist()), key="cm_mag", param="mag",
                         where=f2, on_change=close_cell)
subtypes = state.multiselect("Subtype", sorted(preds["subtype"].dropna().unique().tolist()), key="cm_subtype", param="subtype",
                             where=f3, on_change=close_cell)
with f4:
    st.write("")
    normalize = state.toggle("Row-normalized", key="cm_norm", param="norm")

accuracy = cached.accuracy_by_run(exp, preds, exp.eval_splits[0])
singles = [r for r in runs.singles() if parse_run_id(r).stain == "none"] or runs.ids
best_single = (best_runs(accuracy, singles) or runs.ids)[0]
best_ensemble = (best_runs(accuracy, runs.ensembles()) or [r for r in runs.ids if r != best_single] or runs.ids)[0]
a, b = compare.ab_pickers(runs, key="cm", default_a=best_single, default_b=best_ensemble, on_change=close_cell)

view = cached.pair_rows(exp, preds, a, b, split)  # from a (run, split) index, not a scan of every row
if mags:
    view = view[view["magnification"].isin(mags)]
if subtypes:
    view = view[view["subtype"].isin(subtypes)]
if view.empty:
    st.info("No predictions match these filters: remove a magnification or subtype filter.")
    st.stop()
counts = {r: confusion_counts(g["label"], g["pred"]) for r, g in view.groupby("run_id")}
cell_param = st.query_params.get("cell", "")
side, _, cell = cell_param.partition(":")
side, cell = (side, cell) if side in ("a", "b") and cell in ui.CELLS else ("", "")


def on_cell(side_name: str):
    def select() -> None:
        points = st.session_state[f"cm_chart_{side_name}_{nonce}"].selection.points
        if points:
            state.set_params(cell=f"{side_name}:{points[0]['customdata']}", cpage=None)
    return select


nonce = st.session_state.get("cm_nonce", 0)
cols = st.columns(3)
for col, side_name, run in ((cols[0], "a", a), (cols[1], "b", b)):
    if run not in counts:
        col.info(f"{runs.md(run)} has no predictions under these filters.")
        continue
    with col:
        st.plotly_chart(ui.confusion_figure(counts[run], f"{side_name.upper()}: {runs.label(run)}", normalize,
                                            selected=cell if side == side_name else None),
                        key=f"cm_chart_{side_name}_{nonce}", on_select=on_cell(side_name), selection_mode="points",
                        config={"displayModeBar": False})
if a in counts and b in counts and a != b:
    cols[2].plotly_chart(ui.difference_figure(counts[a], counts[b], f"B − A ({runs.label(b)} minus {runs.label(a)})"),
                         key="cm_diff", config={"displayModeBar": False, "staticPlot": True})
st.caption("Click a cell of A or B to list its images. The difference is coloured for B: green better (more TP/TN or "
           "fewer FN/FP), red worse.")
if a != b:
    with st.expander(f"A/B: verdict, metric deltas and the images where {runs.md(a)} and {runs.md(b)} disagree"):
        paired = compare.paired_frame(view, a, b, split)
        compare.summary(paired, runs, a, b, split)
        compare.disagreements(paired, runs, a, b, key="cm_dis")

# -- the images of the chosen cell ------------------------------------------------------------------------------
if not cell:
    st.stop()
run, other = (a, b) if side == "a" else (b, a)
truth, predicted = ui.CELLS[cell]
rows = view[(view["run_id"] == run) & (view["label"] == truth) & (view["pred"] == predicted)]
rows = rows.sort_values(["prob_malignant", "image_id"], ascending=[predicted == 1, True])
with st.container(key="cm_cell"):
    head = st.columns([4, 2, 1])
    head[0].subheader(f"{ui.CELL_NAMES[cell]} · {side.upper()}: {runs.md(run)}")
    head[1].page_link(nav.page("images"), label="Open in the image browser", icon=":material/image_search:",
                      query_params=state.link_params(exp.name, run=run, split=split, errors="0" if truth == predicted else None,
                                                     true=[ui.CLASS_NAMES[truth]], pred=[ui.CLASS_NAMES[predicted]],
                                                     mag=mags or None, subtype=subtypes or None))
    if head[2].button("Close", key="cm_close", icon=":material/close:"):
        close_cell()
        st.rerun()
    if rows.empty:
        st.info("This cell is empty.")
        st.stop()
    page = ui.pager(len(rows), PAGE_SIZE, key="cm_page", param="cpage")
    shown = rows.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    other_rows = view[view["run_id"] == other].drop_duplicates("image_id").set_index("image_id")
    members = sorted(set(runs.members_of(run)) | set(runs.members_of(other)))
    member_probs = cached.member_probs(exp, preds, split, members)
    maps = image_card.run_maps(exp, "gradcam", runs.members_of(run))
    image_card.maps_notice(exp, "gradcam", runs.members_of(run), maps, runs)
    grid = st.columns(4)
    for i, r in enumerate(shown.itertuples(index=False)):
        o = other_rows.loc[r.image_id] if r.image_id in other_rows.index else None
        other_info = None if o is None or pd.isna(o["prob_malignant"]) else (other, float(o["prob_malignant"]), int(o["pred"]))
        with grid[i % 4]:
            image_card.card(exp, r, run, runs, member_probs, maps, image_card.MEAN, 0.45, "gradcam", key="cm_card",
                            other=other_info, width=240)
