"""The predictions contract: ``predictions.parquet``, one row per (run, image) for val and test.

Single runs and ensembles write the same columns, so the evaluation and the dashboard treat them alike.
A run's rows are replaced atomically when it is re-run; other runs' rows are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import Catalog, parse_run_id
from pipeline.artifacts.io import read_parquet_file, write_parquet
from pipeline.core.errors import PipelineError
from pipeline.core.model_specs import MODEL_SPECS

PREDICTION_COLUMNS = ["run_id", "kind", "model", "family", "stain", "image_id", "split", "label", "prob_malignant", "pred"]
META_COLUMNS = ["magnification", "subtype", "patient_id", "patient_num"]


def predictions_path(exp_dir: Path | str) -> Path:
    return Catalog(exp_dir).predictions


def make_rows(run_id: str, kind: str, model: str, family: str, stain: str, frame: pd.DataFrame,
              prob_malignant: np.ndarray, threshold: float = 0.5, pred: np.ndarray | None = None) -> pd.DataFrame:
    """Prediction rows for ``frame`` (image_id, split, label and metadata columns) and its probabilities."""
    prob = np.asarray(prob_malignant, dtype=np.float32)
    if len(prob) != len(frame):
        raise PipelineError(f"{run_id}: {len(prob)} probabilities for {len(frame)} images")
    out = pd.DataFrame({
        "run_id": run_id, "kind": kind, "model": model, "family": family, "stain": stain,
        "image_id": frame["image_id"].to_numpy(), "split": frame["split"].to_numpy(),
        "label": frame["label"].to_numpy().astype("int8"), "prob_malignant": prob,
        "pred": (prob >= threshold).astype("int8") if pred is None else np.asarray(pred, dtype="int8"),
    })
    for col in META_COLUMNS:
        if col in frame:
            out[col] = frame[col].to_numpy()
    return out


def load_predictions(exp_dir: Path | str) -> pd.DataFrame:
    path = predictions_path(exp_dir)
    if not path.exists():
        return pd.DataFrame(columns=PREDICTION_COLUMNS + META_COLUMNS)
    return read_parquet_file(path)


def replace_rows(exp_dir: Path | str, new_rows: pd.DataFrame, run_ids: list[str] | None = None) -> pd.DataFrame:
    """Swap the rows of ``run_ids`` (default: those in ``new_rows``) for ``new_rows``; write atomically."""
    run_ids = sorted(set(new_rows["run_id"])) if run_ids is None else run_ids
    current = load_predictions(exp_dir)
    kept = current[~current["run_id"].isin(run_ids)]
    merged = pd.concat([kept, new_rows], ignore_index=True) if len(kept) else new_rows.reset_index(drop=True)
    write_parquet(merged, predictions_path(exp_dir))
    return merged


def probability_matrix(preds: pd.DataFrame, run_ids: list[str], split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """(members x images) probability matrix for ``split`` plus the aligned image frame.

    A member missing any image of the split is a clear error: ensembles must compare like with like.
    """
    part = preds[(preds["split"] == split) & preds["run_id"].isin(run_ids)]
    wide = part.pivot_table(index="image_id", columns="run_id", values="prob_malignant", aggfunc="first")
    missing = [r for r in run_ids if r not in wide.columns]
    if missing:
        raise PipelineError(f"no {split} predictions for member(s) {missing}")
    wide = wide[run_ids]
    incomplete = wide.columns[wide.isna().any()].tolist()
    if incomplete:
        raise PipelineError(f"member(s) {incomplete} lack predictions for some {split} images; re-run them")
    meta_cols = ["image_id", "label", "split"] + [c for c in META_COLUMNS if c in part]
    meta = part.drop_duplicates("image_id").set_index("image_id").loc[wide.index].reset_index()[meta_cols]
    return wide.to_numpy(dtype=np.float64).T, meta


def member_runs(preds: pd.DataFrame) -> list[str]:
    """Ensemble members: single-model runs without stain normalization (as in the study), in model order."""
    singles = preds[(preds["kind"] == "single") & (preds["stain"] == "none")]
    order = {spec.short: i for i, spec in enumerate(MODEL_SPECS.values())}
    return sorted(singles["run_id"].unique().tolist(), key=lambda r: (order.get(parse_run_id(r).model, 99), r))


def member_groups(members: list[str]) -> dict[str, list[str]]:
    """The study's family ensembles (V1, V2), plus all members when both families are present."""
    v1 = [m for m in members if parse_run_id(m).family == "v1"]
    v2 = [m for m in members if parse_run_id(m).family == "v2"]
    groups = {"v1": v1, "v2": v2, "all": members if v1 and v2 else []}
    return {name: ms for name, ms in groups.items() if len(ms) >= 2}
