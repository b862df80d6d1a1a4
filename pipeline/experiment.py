"""An experiment folder (``artifacts/<name>/``) and the frames every stage reads from it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.store import PipelineError, frame_fingerprint, read_parquet

SPLIT_HINT = "python -m pipeline split {dir} --mode patient"
INDEX_HINT = "python -m pipeline index DATA_ROOT --out {dir}"


def load_manifest(exp_dir: Path | str) -> pd.DataFrame:
    return read_parquet(Path(exp_dir) / "manifest.parquet", "image manifest", INDEX_HINT.format(dir=exp_dir))


def load_split_frame(exp_dir: Path | str, fold: int = 0) -> pd.DataFrame:
    """Manifest rows joined with their split for ``fold``: the frame training and evaluation work on."""
    from pipeline.splits import split_for_fold

    manifest = load_manifest(exp_dir)
    split = read_parquet(Path(exp_dir) / "split.parquet", "train/val/test split", SPLIT_HINT.format(dir=exp_dir))
    frame = manifest.merge(split_for_fold(split, fold), on="image_id", how="inner")
    if len(frame) != len(manifest):
        raise PipelineError(f"split.parquet does not cover the manifest ({len(frame)} of {len(manifest)} images); re-run split")
    return frame.sort_values("image_id").reset_index(drop=True)


def data_fingerprint(frame: pd.DataFrame) -> str:
    """Fingerprint of which images are in which split: part of every run's cache key."""
    return frame_fingerprint(frame, ["image_id", "path", "label", "split"])
