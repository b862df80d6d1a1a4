"""One image card, used by the image browser, the confusion matrices' cell listing and the A/B comparison.

A card shows the image (with a Grad-CAM overlay when a map exists: per member or the members' mean), whether
the run got it right, the metadata, a vote strip of the run's own members (never models outside the ensemble)
with the run itself first, and links: the study's 2x5 Grad-CAM panel of this image, and a full-size view.
Missing maps are announced once per page (:func:`maps_notice`), never per card.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import nav, state
from dashboard.data import Experiment, image_for, report_problem, stamp
from dashboard.runs import Runs
from dashboard.text import code, plain
from dashboard.ui import CLASS_NAMES
from pipeline.artifacts.gradcam_cache import load_maps
from pipeline.core.heatmaps import overlay

MEAN = "members' mean"


def slug(image_id: str) -> str:
    """A widget-key-safe, stable name for an image (artifact ids may hold any character)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(image_id))[:60]
    return f"{safe}_{hashlib.sha1(str(image_id).encode()).hexdigest()[:6]}"


@st.cache_data(show_spinner=False, max_entries=64)
def _maps(path: str, file_stamp: tuple, exp_dir: str, method: str, run: str) -> dict[str, np.ndarray]:
    return load_maps(exp_dir, method, run)


def run_maps(exp: Experiment, method: str, runs: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """{run: {image_id: map}} for the runs that have a map file (a corrupt file is reported, not fatal)."""
    out = {}
    for run in runs:
        path = exp.catalog.gradcam_maps(method, run)
        if not path.is_file():
            continue
        try:
            out[run] = _maps(str(path), stamp(path), str(exp.path), method, run)
        except Exception as exc:  # truncated npz, wrong arrays
            report_problem(f"{path} cannot be read ({type(exc).__name__}). Recompute it.", exp.command("gradcam"))
    return out


def maps_notice(exp: Experiment, method: str, members: list[str], maps: dict, runs: Runs) -> None:
    """One page-level line when some members have no maps (cards then show the image alone)."""
    missing = [m for m in members if m not in maps]
    if not missing:
        return
    names = ", ".join(runs.label(m) for m in missing)
    none = len(missing) == len(members)
    what = "none of the members has cached maps" if none else f"{names} {'has' if len(missing) == 1 else 'have'} no cached maps"
    st.info(f"Grad-CAM ({method}): {what}, so cards show {'the image alone' if none else 'the other members'}. "
            f"Compute them with {code(f'python -m pipeline gradcam {exp.cli_dir} --method {method}')}", icon=":material/info:")


def heatmap_for(image_id: str, maps: dict[str, dict[str, np.ndarray]], members: list[str], choice: str) -> np.ndarray | None:
    """The chosen member's map, or the mean of the members' maps (resized to a common grid)."""
    if choice != MEAN:
        return maps.get(choice, {}).get(image_id)
    found = [maps[m][image_id] for m in members if m in maps and image_id in maps[m]]
    if not found:
        return None
    shape = max(m.shape for m in found)
    resized = [m if m.shape == shape else
               np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize(shape[::-1], Image.BILINEAR)) / 255.0 for m in found]
    return np.mean(resized, axis=0)


def vote_strip(image_id: str, run: str, runs: Runs, probs: pd.DataFrame, label: int, run_prob: float, run_pred: int) -> str:
    """Markdown badges: the run itself (highlighted), then each of its members' P(malignant), green when right."""
    def badge(name: str, p: float, pred: int, strong: bool = False) -> str:
        colour = "green" if pred == label else "red"
        text = f"{plain(name)} {p:.2f} {'M' if pred else 'B'}"
        return f":{colour}-badge[**{text}**]" if strong else f":{colour}-badge[{text}]"

    parts = [badge(runs.label(run), run_prob, run_pred, strong=True)]
    members = runs.members_of(run)
    if members != [run] and image_id in probs.index:
        row = probs.loc[image_id]
        parts += [badge(runs.label(m), float(row[m]), int(row[m] >= 0.5)) for m in members if m in row and not np.isnan(row[m])]
    return " ".join(parts)


def card(exp: Experiment, r, run: str, runs: Runs, member_probs: pd.DataFrame, maps: dict, heat_choice: str, alpha: float,
         method: str, key: str, other: tuple[str, float, int] | None = None, width: int = 320) -> None:
    """One bordered card for prediction row ``r`` (image_id, label, pred, prob_malignant, metadata)."""
    image_id = str(r.image_id)
    label, pred, prob = int(r.label), int(r.pred), float(r.prob_malignant)
    with st.container(border=True, key=f"{key}_{slug(image_id)}"):
        img = image_for(exp, image_id, width)
        heat = heatmap_for(image_id, maps, runs.members_of(run), heat_choice) if img is not None else None
        if img is not None and heat is not None:
            a, b = st.columns(2)
            a.image(img)
            b.image(overlay(img, heat, alpha))
        elif img is not None:
            st.image(img)
        else:
            st.caption("image file not available")
        right = pred == label
        st.markdown((":green-badge[✓ right]" if right else ":red-badge[✗ wrong]") + f" {code(image_id)}")
        loss = -np.log(np.clip(prob if label == 1 else 1 - prob, 1e-7, 1))
        st.markdown(f"true **{CLASS_NAMES[label]}** · predicted **{CLASS_NAMES[pred]}** · P(malignant) {prob:.3f} · loss {loss:.2f}")
        fields = set(r._fields)
        meta = []
        if "subtype" in fields and pd.notna(r.subtype):
            meta.append(plain(r.subtype))
        if "magnification" in fields and pd.notna(r.magnification):
            meta.append(f"{plain(r.magnification)}X")
        if "patient_id" in fields and pd.notna(r.patient_id):
            meta.append(f"patient {plain(r.patient_id)}")
        if meta:
            st.caption(" · ".join(meta))
        st.markdown(vote_strip(image_id, run, runs, member_probs, label, prob, pred))
        if other is not None:
            name, p_other, pred_other = other
            st.markdown("vs " + vote_strip(image_id, name, runs, member_probs, label, p_other, pred_other))
        with st.container(horizontal=True, gap="small"):
            st.page_link(nav.page("gradcam"), label="Grad-CAM panel", icon=":material/grid_view:",
                         query_params=state.link_params(exp.name, img=image_id, cam=method if method != "gradcam" else None))
            if st.button("Enlarge", key=f"{key}_full_{slug(image_id)}", icon=":material/open_in_full:", type="tertiary"):
                full_size(exp, image_id, heat, alpha)


@st.dialog("Full-size image", width="large")
def full_size(exp: Experiment, image_id: str, heat: np.ndarray | None, alpha: float) -> None:
    img = image_for(exp, image_id, None)
    if img is None:
        st.warning("Image file not available (missing, corrupt, or outside the data root).")
        return
    st.image(img, caption=plain(image_id))
    if heat is not None:
        st.image(overlay(img, heat, alpha), caption="Grad-CAM overlay (qualitative)")
