"""Reading cached Grad-CAM maps and scores (numpy only: the dashboard reads them without TensorFlow).

Maps are stored per (method, run) as ``gradcam/<method>/<run_id>.npz`` with ``image_id`` and ``maps``
(uint8, 0-255 = 0-1, at the model's input size).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import read_parquet_file
from pipeline.core.errors import PipelineError


def load_maps(exp_dir: Path | str, method: str, run_id: str) -> dict[str, np.ndarray]:
    """{image_id: float map in [0, 1]} for one run; empty when not computed."""
    path = Catalog(exp_dir).gradcam_maps(method, run_id)
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {i: m.astype(np.float32) / 255.0 for i, m in zip(data["image_id"].tolist(), data["maps"])}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise PipelineError(f"{path} is not a readable Grad-CAM cache ({type(exc).__name__}); "
                            f"re-create it with: python -m pipeline gradcam {exp_dir} --method {method} --runs {run_id}") from None


def load_scores(exp_dir: Path | str, method: str) -> pd.DataFrame:
    path = Catalog(exp_dir).gradcam_scores(method)
    return read_parquet_file(path) if path.exists() else pd.DataFrame()
