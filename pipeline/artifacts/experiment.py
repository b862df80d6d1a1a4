"""An experiment folder (``artifacts/<name>/``) and the frames every stage reads from it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.artifacts.catalog import IMAGE_ID_RE, Catalog
from pipeline.artifacts.io import read_json, read_parquet
from pipeline.artifacts.schemas import check_frame
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import frame_fingerprint

SPLIT_HINT = "python -m pipeline split {dir} --mode patient"
INDEX_HINT = "python -m pipeline index DATA_ROOT --out {dir}"
# Columns the stages rely on: a parquet that reads but lacks them (another table copied over it) is refused.
MANIFEST_REQUIRED = ("image_id", "path", "label", "subtype", "patient_id", "patient_num", "magnification")
SPLIT_REQUIRED = ("image_id", "split", "fold")
SPLIT_VALUES = {"train", "val", "test", "external"}  # external: every image of a `predict` experiment


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: Path, hint: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PipelineError(f"{path} lacks column(s) {', '.join(missing)}: not the expected artifact; re-create it with: {hint}")
    return frame


def load_manifest(exp_dir: Path | str) -> pd.DataFrame:
    """The manifest, with its columns and every path and id checked: stages read and *write* files named by
    them (stain mirrors ``path`` under the experiment), so a hostile row must never leave the data root."""
    path, hint = Catalog(exp_dir).manifest, INDEX_HINT.format(dir=exp_dir)
    manifest = _require_columns(read_parquet(path, "image manifest", hint), MANIFEST_REQUIRED, path, hint)
    manifest = check_frame("manifest", manifest, path, exp_dir)
    paths, ids = manifest["path"].astype(str), manifest["image_id"].astype(str)
    escaping = paths[paths.str.startswith("/") | paths.str.contains(r"(?:^|/)\.\.(?:/|$)|\\", regex=True)]
    if len(escaping):
        raise PipelineError(f"{path} has path {escaping.iloc[0]!r}, which leaves the data root; re-create it with: {hint}")
    odd = ids[~ids.str.fullmatch(IMAGE_ID_RE.pattern)]
    if len(odd):
        raise PipelineError(f"{path} has image_id {odd.iloc[0]!r}, not a file stem the index writes; re-create it with: {hint}")
    return manifest


def load_split(exp_dir: Path | str) -> pd.DataFrame:
    path, hint = Catalog(exp_dir).split, SPLIT_HINT.format(dir=exp_dir)
    split = _require_columns(read_parquet(path, "train/val/test split", hint), SPLIT_REQUIRED, path, hint)
    split = check_frame("split", split, path, exp_dir)
    unknown = sorted(set(split["split"].astype(str)) - SPLIT_VALUES)
    if unknown:
        raise PipelineError(f"{path} has split value(s) {unknown} (expected train, val, test, external); re-create it with: {hint}")
    return split


def load_split_frame(exp_dir: Path | str, fold: int = 0) -> pd.DataFrame:
    """Manifest rows joined with their split for ``fold``: the frame training and evaluation work on."""
    return join_split(load_manifest(exp_dir), load_split(exp_dir), fold)


def join_split(manifest: pd.DataFrame, split: pd.DataFrame, fold: int = 0) -> pd.DataFrame:
    """The loaded manifest joined with the loaded split's ``fold``, sorted by image id; every image must be covered."""
    from pipeline.core.splits import split_for_fold

    frame = manifest.merge(split_for_fold(split, fold), on="image_id", how="inner")
    if len(frame) != len(manifest):
        raise PipelineError(f"split.parquet does not cover the manifest ({len(frame)} of {len(manifest)} images); re-run split")
    return frame.sort_values("image_id").reset_index(drop=True)


def data_fingerprint(frame: pd.DataFrame) -> str:
    """Fingerprint of which images, with which content, are in which split: part of every run's hash.

    The ``sha256`` column (the index stage's content hash of each image) makes it a content fingerprint;
    manifests written before that column existed fall back to ids and paths.
    """
    columns = ["image_id", "path", "label", "split"] + (["sha256"] if "sha256" in frame else [])
    return frame_fingerprint(frame, columns)


def data_root_of(exp_dir: Path | str) -> Path:
    """The data root an experiment was indexed from (``dataset.json``), checked to be an existing folder."""
    info = Catalog(exp_dir).dataset
    if not info.exists():
        raise PipelineError(f"{info} is missing; run `python -m pipeline index DATA_ROOT --out {exp_dir}` first")
    record = read_json(info)
    root = record.get("data_root") if isinstance(record, dict) else None
    if not isinstance(root, str) or not root or not Path(root).is_dir():
        raise PipelineError(f"{info} names data_root {root!r}, which is not an existing folder; "
                            f"re-run `python -m pipeline index DATA_ROOT --out {exp_dir}`")
    return Path(root)


def read_stain_target(exp_dir: Path | str, method: str) -> dict | None:
    """``stain/<method>/target.json`` with its cache key validated (a key is a token, never a path); None if absent."""
    path = Catalog(exp_dir).stain_target(method)
    if not path.exists():
        return None
    target = read_json(path)
    if not isinstance(target, dict):
        raise PipelineError(f"{path} is not a stain target record; re-run `python -m pipeline stain {exp_dir} --method {method}`")
    Catalog(exp_dir).stain_images(method, target.get("key"))  # raises on a hostile or corrupt key
    return target


def require_stain_target(exp_dir: Path | str, method: str) -> dict:
    """The validated stain target of ``method``; a clear error naming the command that makes it when absent."""
    target = read_stain_target(exp_dir, method)
    if target is None:
        raise PipelineError(f"run `python -m pipeline stain {exp_dir} --method {method}` before training a {method} run")
    return target


def normalized_root(exp_dir: Path | str, method: str) -> Path:
    """Folder of the ``method``-normalized images for the current stain target."""
    return stain_root_for(exp_dir, method, read_stain_target(exp_dir, method))


def stain_root_for(exp_dir: Path | str, method: str, target: dict | None) -> Path:
    """Folder of the ``method``-normalized images of an already loaded (validated) ``target`` record."""
    root = Catalog(exp_dir).stain_images(method, target["key"]) if target else None
    if root is None or not root.is_dir():
        raise PipelineError(f"no {method}-normalized images in {exp_dir}; run `python -m pipeline stain {exp_dir} --method {method}` first")
    return root
