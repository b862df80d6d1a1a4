"""Cached, read-only access to an experiment's artifacts for the dashboard (no TensorFlow, no training).

Every loader is keyed on the file's modification time, so a re-run of the pipeline shows up on the next
interaction while unchanged files are served from Streamlit's cache. Image paths from artifacts are
resolved only inside the experiment's data root (or its stain cache); anything escaping it is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from pipeline.artifacts.catalog import Catalog, check_stain_key
from pipeline.artifacts.io import read_parquet_file
from pipeline.artifacts.predictions import probability_matrix
from pipeline.core.ensemble import fit_weights
from pipeline.core.errors import PipelineError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def artifacts_root() -> Path:
    return Path(os.environ.get("HISTOCOMPARE_ARTIFACTS", PROJECT_ROOT / "artifacts")).resolve()


def list_experiments(root: Path | None = None) -> list[str]:
    root = root or artifacts_root()
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and Catalog(p).manifest.exists())


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else -1.0


@st.cache_data(show_spinner=False, max_entries=64)
def _read_parquet(path: str, mtime: float) -> pd.DataFrame:
    return read_parquet_file(path)


@st.cache_data(show_spinner=False, max_entries=64)
def _read_json(path: str, mtime: float) -> dict:
    return json.loads(Path(path).read_text())


def read_parquet(path: Path) -> pd.DataFrame | None:
    """The parquet at ``path`` (cached by mtime) or None when it does not exist."""
    return _read_parquet(str(path), _mtime(path)) if path.exists() else None


def read_json(path: Path) -> dict | None:
    return _read_json(str(path), _mtime(path)) if path.exists() else None


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.path)

    @property
    def dataset(self) -> dict:
        return read_json(self.catalog.dataset) or {}

    @property
    def synthetic(self) -> bool:
        return bool(self.dataset.get("synthetic"))

    @property
    def data_root(self) -> Path | None:
        root = self.dataset.get("data_root")
        return Path(root).resolve() if root else None

    def manifest(self) -> pd.DataFrame | None:
        return read_parquet(self.catalog.manifest)

    def split(self) -> pd.DataFrame | None:
        return read_parquet(self.catalog.split)

    def predictions(self) -> pd.DataFrame | None:
        return read_parquet(self.catalog.predictions)

    def metrics(self) -> pd.DataFrame | None:
        return read_parquet(self.catalog.metrics)

    def subsets(self) -> pd.DataFrame | None:
        return read_parquet(self.catalog.subsets)

    def history(self, run_id: str) -> pd.DataFrame | None:
        return read_parquet(self.catalog.run(run_id).history)

    def run_info(self, run_id: str) -> dict | None:
        return read_json(self.catalog.run(run_id).info)

    def stain_target(self, method: str) -> dict | None:
        return read_json(self.catalog.stain_target(method))


def get_experiment(name: str) -> Experiment:
    return Experiment(name, artifacts_root() / name)


def safe_image_path(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it stays inside ``root`` and exists; None otherwise (never follow ../ out)."""
    root = root.resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        return None
    return candidate if candidate.is_file() else None


@st.cache_data(show_spinner=False, max_entries=2048)
def load_image(path: str, mtime: float, width: int | None = None) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if width and img.width > width:
            img = img.resize((width, round(img.height * width / img.width)), Image.BILINEAR)
        return np.asarray(img)


def image_for(exp: Experiment, image_id: str, width: int | None = 320, stain: str = "none") -> np.ndarray | None:
    """The (optionally stain-normalized) image of ``image_id`` as RGB, or None if missing/refused."""
    manifest = exp.manifest()
    if manifest is None or exp.data_root is None:
        return None
    rows = manifest.loc[manifest["image_id"] == image_id, "path"]
    if rows.empty:
        return None
    if stain == "none":
        root = exp.data_root
    else:
        target = exp.stain_target(stain)
        if not target or not isinstance(target.get("key"), str):
            return None
        try:
            root = exp.catalog.stain_images(stain, check_stain_key(target["key"]))
        except PipelineError:
            return None
    path = safe_image_path(root, rows.iloc[0])
    return None if path is None else load_image(str(path), _mtime(path), width)


@st.cache_data(show_spinner=False, max_entries=32)
def member_matrices(preds_path: str, mtime: float, members: tuple[str, ...]) -> dict:
    """Val and test probability matrices of ``members`` (the ensemble builder's cached arrays)."""
    preds = read_parquet_file(preds_path)
    out = {}
    for split in ("val", "test"):
        probs, meta = probability_matrix(preds, list(members), split)
        out[split] = (probs, meta)
    return out


@st.cache_data(show_spinner=False, max_entries=1024)
def cached_weights(val_probs: np.ndarray, val_labels: np.ndarray, key: tuple) -> np.ndarray:
    """Weighted-vote weights for one member subset, fitted on validation (cached per subset)."""
    return fit_weights(val_probs, val_labels)
