"""Tables the pages compute once per (artifact files, run, split, colouring) instead of on every rerun (issue 26).

Why: at ten times BreakHis the predictions table holds about half a million rows, and pages that filtered it on
every rerun (the image browser, the confusion and stain pages) or rebuilt an 80,000-point figure (the embedding
map) took seconds per click. Every cache here is keyed by the files' fingerprints (path, mtime, size), so a
rewritten artifact is read afresh; nothing reaches outside the experiment's own files.

``RowIndex`` is shared, not copied (``st.cache_resource``): callers read its frames and copy the rows they change
(pandas' copy-on-write keeps a derived frame's edits out of the shared one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.data import _read_parquet, _stamp
from pipeline.artifacts.entries import ENTRIES
from pipeline.artifacts.io import opened_inside
from pipeline.core.errors import PipelineError
from pipeline.core.sampling import decimate
from pipeline.core.splits import leakage_report


def fingerprint(path: Path) -> tuple:
    """(mtime, size) of ``path``, or () when it is missing: the cache key of a file."""
    try:
        stat = Path(path).stat()
    except OSError:
        return ()
    return stat.st_mtime_ns, stat.st_size


def _read_checked(path: str) -> pd.DataFrame:
    """One of the experiment's parquet files as the pages load it (``dashboard.data._read_parquet``: opened inside its
    folder, validated against its catalog entry, shared): the same cache entry, so the index below never re-reads or
    re-validates the table the page already holds. Raises PipelineError when the file is not what the catalog declares."""
    with opened_inside(Path(path).parent, path) as name:
        return _read_parquet(path, _stamp(Path(path)), name)


@dataclass(frozen=True)
class RowIndex:
    """The predictions table and the positions of each (run_id, split)'s rows in it."""

    frame: pd.DataFrame
    positions: dict
    parts: dict = field(default_factory=dict)  # (run_id, split) -> its rows, taken once (``take`` costs ~0.1 s at 10x)

    def rows(self, run_id: str, split: str) -> pd.DataFrame | None:
        key = (run_id, split)
        if key not in self.parts:
            pos = self.positions.get(key)
            self.parts[key] = None if pos is None else self.frame.take(pos).reset_index(drop=True)
        return self.parts[key]


@st.cache_resource(show_spinner=False, max_entries=8)
def _row_index(path: str, stamp: tuple) -> RowIndex:
    frame = _read_checked(path)
    return RowIndex(frame, {key: np.asarray(pos) for key, pos in frame.groupby(["run_id", "split"], sort=False).indices.items()})


def row_index(exp) -> RowIndex | None:
    """The experiment's predictions indexed by (run, split); None when the file is missing or unreadable (the page's
    own reading reports that)."""
    path = exp.catalog.predictions
    stamp = fingerprint(path)
    if not stamp:
        return None
    try:
        return _row_index(str(path), stamp)
    except Exception:  # noqa: BLE001 - a corrupt file is reported by Experiment.predictions(); filter instead
        return None


def run_rows(exp, preds: pd.DataFrame, run_id: str, split: str) -> pd.DataFrame:
    """The rows of one run on one split: from the index when the run is in the predictions file, else (a built
    ensemble, computed by the page) by filtering ``preds``."""
    index = row_index(exp)
    rows = index.rows(run_id, split) if index is not None else None
    if rows is None:
        rows = preds[(preds["run_id"] == run_id) & (preds["split"] == split)]
    return rows


def pair_rows(exp, preds: pd.DataFrame, a: str, b: str, split: str) -> pd.DataFrame:
    """Both runs' rows on ``split`` (what ``compare.paired_frame`` and the confusion matrices read)."""
    parts = [run_rows(exp, preds, r, split) for r in dict.fromkeys((a, b))]
    return pd.concat(parts, ignore_index=True)


@st.cache_data(show_spinner=False, max_entries=32)
def _member_probs(path: str, stamp: tuple, split: str, members: tuple[str, ...]) -> pd.DataFrame:
    index = _row_index(path, stamp)
    parts = [index.rows(m, split) for m in members]
    parts = [p for p in parts if p is not None]
    if not parts:
        return pd.DataFrame()
    both = pd.concat(parts, ignore_index=True)
    return both.pivot_table(index="image_id", columns="run_id", values="prob_malignant", aggfunc="first")


def member_probs(exp, preds: pd.DataFrame, split: str, members: list[str]) -> pd.DataFrame:
    """image_id x member table of P(malignant) on ``split`` (the cards' member bars), cached per file and members."""
    path = exp.catalog.predictions
    index = row_index(exp)
    if index is not None and all((m, split) in index.positions for m in members):
        return _member_probs(str(path), fingerprint(path), split, tuple(members))
    return preds[(preds["split"] == split) & preds["run_id"].isin(members)].pivot_table(
        index="image_id", columns="run_id", values="prob_malignant", aggfunc="first")


@st.cache_data(show_spinner=False, max_entries=8)
def _errors_by_run(path: str, stamp: tuple, split: str) -> pd.Series:
    frame = _row_index(path, stamp).frame
    part = frame[frame["split"] == split]
    return (part["pred"] != part["label"]).groupby(part["run_id"]).sum()


def errors_by_run(exp, preds: pd.DataFrame, split: str) -> pd.Series:
    """Errors per run on ``split`` (the browser's default run), the file's runs cached, built ensembles added."""
    path = exp.catalog.predictions
    known = _errors_by_run(str(path), fingerprint(path), split) if row_index(exp) is not None else pd.Series(dtype=int)
    extra = preds[~preds["run_id"].isin(known.index) & (preds["split"] == split)]
    if len(extra):
        known = pd.concat([known, (extra["pred"] != extra["label"]).groupby(extra["run_id"]).sum()])
    return known


@st.cache_data(show_spinner=False, max_entries=8)
def _accuracy_by_run(path: str, stamp: tuple, split: str) -> pd.DataFrame:
    frame = _row_index(path, stamp).frame
    part = frame[frame["split"] == split]
    return part.assign(ok=part["pred"] == part["label"]).groupby("run_id")["ok"].mean().rename("accuracy").reset_index()


def accuracy_by_run(exp, preds: pd.DataFrame, split: str) -> pd.DataFrame:
    """Accuracy per run on ``split`` (run_id, accuracy): the file's runs cached, built ensembles computed."""
    path = exp.catalog.predictions
    known = _accuracy_by_run(str(path), fingerprint(path), split) if row_index(exp) is not None else pd.DataFrame(
        columns=["run_id", "accuracy"])
    extra = preds[~preds["run_id"].isin(known["run_id"]) & (preds["split"] == split)]
    if len(extra):
        more = extra.assign(ok=extra["pred"] == extra["label"]).groupby("run_id")["ok"].mean().rename("accuracy").reset_index()
        known = pd.concat([known, more], ignore_index=True)
    return known


# -- the embedding map ------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=16)
def embedding_points(emb_path: str, emb_stamp: tuple, manifest_path: str, manifest_stamp: tuple, preds_path: str,
                     preds_stamp: tuple, run: str, method: str) -> pd.DataFrame:
    """One run's 2-D map joined with the manifest and its predictions, with every colouring column."""
    emb = _read_checked(emb_path)
    points = emb[(emb["run_id"] == run) & (emb["method"] == method)][["image_id", "split", "x", "y"]]
    # only the columns drawn: the whole manifest (paths, hashes) costs ~0.1-0.3 s to read at ten times BreakHis (the
    # page validated the whole file through Experiment.manifest() before it asks for these)
    with opened_inside(Path(manifest_path).parent, manifest_path) as name:
        manifest = ENTRIES["manifest"].read_columns(name, ["image_id", "label", "patient_id", "magnification", "subtype"])
    points = points.merge(manifest, on="image_id", how="left")
    try:  # predictions the page could not read leave the map uncoloured by correctness, not broken
        index = _row_index(preds_path, preds_stamp) if preds_stamp else None
    except (OSError, ValueError, PipelineError):
        index = None
    if index is not None:
        parts = [p for p in (index.rows(run, s) for s in ("val", "test", "external")) if p is not None]
        pred = (pd.concat(parts).drop_duplicates("image_id").set_index("image_id")["pred"] if parts
                else pd.Series(dtype=float))
    else:
        pred = pd.Series(dtype=float)
    points["pred"] = points["image_id"].map(pred)
    points["class"] = points["label"].map({0: "benign", 1: "malignant"}).fillna("unknown")
    points["patient"] = points["patient_id"].astype(object).where(points["patient_id"].notna(), "unknown").astype(str)
    mags = pd.to_numeric(points["magnification"], errors="coerce")
    points["magnification"] = np.where(mags.notna(), mags.fillna(0).astype(np.int64).astype(str) + "X", "unknown")
    points["correctness"] = np.where(points["split"] == "train", "train (not predicted)",
                                     np.where(points["pred"].isna(), "no prediction",
                                              np.where(points["pred"] == points["label"], "right", "wrong")))
    return points.reset_index(drop=True)


@st.cache_data(show_spinner=False, max_entries=16)
def _nearest_same_patient(path: str, stamp: tuple, run: str) -> pd.Series:
    frame = _read_checked(path)
    if not {"rank", "neighbour_patient", "patient_id"} <= set(frame.columns):
        return pd.Series(dtype=bool)
    first = frame[(frame["run_id"] == run) & (frame["rank"] == 1)].drop_duplicates("image_id")
    same = first["neighbour_patient"].astype(str).to_numpy() == first["patient_id"].astype(str).to_numpy()
    return pd.Series(same, index=first["image_id"].astype(str).to_numpy())


def nearest_same_patient(exp, run: str) -> pd.Series:
    """image_id -> whether its nearest training image (rank 1 in ``neighbours.parquet``) is of its own patient, for
    one run; empty when the file is missing, unreadable (the page's own reading reports that) or lacks the columns.
    Once per (file, run): filtering ~800,000 neighbour rows on every render cost ~0.5 s at ten times BreakHis."""
    path = exp.catalog.neighbours
    stamp = fingerprint(path)
    if not stamp:
        return pd.Series(dtype=bool)
    try:
        return _nearest_same_patient(str(path), stamp, run)
    except (OSError, ValueError, PipelineError):  # a corrupt file is reported by Experiment.neighbours(); colour nothing
        return pd.Series(dtype=bool)


def shown_rows(n: int, budget: int, keep: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """The rows the map draws: all up to ``budget``, else a seeded sample (see ``pipeline.core.sampling.decimate``)."""
    return decimate(n, budget, keep=keep, seed=seed)


# -- the overview's leakage check ---------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=8)
def _leakage(manifest_stamp: tuple, split_stamp: tuple, _manifest: pd.DataFrame, _split: pd.DataFrame) -> pd.DataFrame:
    return leakage_report(_manifest, _split)


def leakage(exp, manifest: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """``leakage_report`` of the experiment's manifest and split, once per pair of files (two merges of ~80,000 rows
    at ten times BreakHis: ~0.15 s that the overview paid three times per rerun)."""
    return _leakage((str(exp.catalog.manifest), fingerprint(exp.catalog.manifest)),
                    (str(exp.catalog.split), fingerprint(exp.catalog.split)), manifest, split)


# -- the overview's dataset section --------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=8)
def _manifest_summary(manifest_stamp: tuple, _manifest: pd.DataFrame) -> dict:
    manifest = _manifest
    mags = sorted(manifest.magnification.dropna().unique(), key=lambda m: int(m))  # 40X, 100X, 200X, 400X: by number
    by_mag = pd.Categorical(manifest.magnification.astype(str) + "X", categories=[f"{m}X" for m in mags], ordered=True)
    per_subtype = manifest.groupby(["class_name", "subtype_name"]).agg(images=("image_id", "size"),
                                                                       patient_folders=("patient_id", "nunique"))
    return {"images": len(manifest), "benign": int((manifest.label == 0).sum()), "malignant": int((manifest.label == 1).sum()),
            "folders": len(manifest[["class_name", "subtype", "patient_id"]].drop_duplicates()),
            "patient_nums": int(manifest.patient_num.nunique()), "subtypes": int(manifest.subtype.nunique()),
            "by_magnification": pd.crosstab(manifest.class_name, by_mag, margins=True, margins_name="total"),
            "per_subtype": per_subtype.reset_index()}


def manifest_summary(exp, manifest: pd.DataFrame) -> dict:
    """The overview's dataset counts and its two tables, once per manifest file (a crosstab with margins and a
    groupby of ~80,000 rows at ten times BreakHis cost ~0.2 s per rerun)."""
    return _manifest_summary((str(exp.catalog.manifest), fingerprint(exp.catalog.manifest)), manifest)
