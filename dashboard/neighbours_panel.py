"""Nearest training images of one val/test image, in one run's feature space (``neighbours.parquet``).

Why on every card: a confident error either copies a look-alike of the other class or recognises its patient; the
neighbours (thumbnails with label, patient and similarity) show which. Ensembles have no feature space of their own,
so an ensemble's card shows the neighbours in one member's space (the member the browser's heatmap names, else the
first member with neighbours), and says so.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.data import Experiment, image_for
from dashboard.text import code, plain

CLASS_NAMES = {0: "benign", 1: "malignant"}
THUMB = 160


def space_for(neighbours: pd.DataFrame | None, members: list[str], preferred: str | None = None) -> str | None:
    """The run whose feature space answers for ``members`` (one run for a single model): ``preferred`` when it has
    neighbours, else the first member that has them; None when none has."""
    if neighbours is None or neighbours.empty:
        return None
    have = set(neighbours["run_id"].unique())
    if preferred in have and preferred in members:
        return preferred
    return next((m for m in members if m in have), None)


def rows_for(neighbours: pd.DataFrame, run_id: str, image_id: str) -> pd.DataFrame:
    part = neighbours[(neighbours["run_id"] == run_id) & (neighbours["image_id"] == image_id)]
    return part.sort_values("rank")


def button(exp: Experiment, neighbours: pd.DataFrame | None, members: list[str], image_id: str, *, key: str,
           preferred: str | None = None) -> None:
    """A small button under a card that opens the image's nearest training images (absent: a hint what to run)."""
    space = space_for(neighbours, members, preferred)
    if space is None:
        return
    if st.button("Nearest training images", key=key, icon=":material/travel_explore:", type="tertiary",
                 help=f"The training images closest to this one in {space}'s feature space (cosine of pooled features)"):
        show(exp, rows_for(neighbours, space, image_id), space, image_id)


@st.dialog("Nearest training images", width="large")
def show(exp: Experiment, rows: pd.DataFrame, space: str, image_id: str) -> None:
    panel(exp, rows, space, image_id)


def panel(exp: Experiment, rows: pd.DataFrame, space: str, image_id: str) -> None:
    """Thumbnails of the neighbours with label, patient and similarity; same-patient neighbours are flagged."""
    st.markdown(f"{code(image_id)} in {code(space)}'s feature space")
    if rows.empty:
        st.info(f"No neighbours recorded for this image. Recompute them with `{exp.command('neighbours')}`.")
        return
    own_patient = rows["patient_id"].iloc[0]
    own_label = int(rows["label"].iloc[0])
    cols = st.columns(len(rows))
    for col, r in zip(cols, rows.itertuples(index=False)):
        with col:
            img = image_for(exp, str(r.neighbour_id), THUMB)
            if img is not None:
                st.image(img)
            else:
                st.caption("image file not available")
            same_patient = r.neighbour_patient == own_patient
            badge = ":orange-badge[same patient]" if same_patient else ""
            label = int(r.neighbour_label)
            cls = f"**{CLASS_NAMES[label]}**" if label == own_label else f":red[**{CLASS_NAMES[label]}**]"
            st.markdown(f"#{int(r.rank)} · {cls} · similarity {float(r.similarity):.3f} {badge}")
            st.caption(f"patient {plain(r.neighbour_patient)} · {plain(r.neighbour_id)}")
