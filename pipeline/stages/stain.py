"""Stage ``stain``: normalize every image of an experiment onto one target, cached and resumable.

Layout: ``DIR/stain/<method>/target.json`` (the chosen target and its stain matrix) and normalized
PNGs in parallel folders ``DIR/stain/<method>/<target_key>/<same relative path as the dataset>``, plus
``index.parquet`` (image_id, source sha256, status). The cache key is (image content, method, target):
a re-run with the same target does nothing; an interrupted run resumes image by image; images where
normalization fails (too little tissue) are copied unchanged and reported as ``fallback`` - never silently.

Target rule ("auto"): among up to 24 training images (seeded sample), the one whose stain matrix is
closest to the sample's median stain matrix, i.e. the most typical training stain. Training split only.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.experiment import data_root_of, load_split_frame, read_stain_target
from pipeline.artifacts.io import atomic_path, read_parquet, write_json, write_parquet
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import file_sha256, stable_hash
from pipeline.core.images import read_rgb
from pipeline.core.stain import StainError, StainTarget, fit_target, normalize, stain_matrix
from pipeline.progress import progress


def _load(path: Path) -> np.ndarray:
    return read_rgb(path)  # the pixels training sees (16-bit and palette PNGs included)


def choose_target(frame: pd.DataFrame, data_root: Path, method: str, seed: int = 0, sample: int = 24) -> str:
    """The documented 'auto' rule: most typical stain among a seeded sample of training images."""
    train = frame[frame["split"] == "train"].sort_values("image_id")
    if train.empty:
        raise PipelineError("no training images to choose a stain target from")
    rng = np.random.default_rng(seed)
    picked = train.iloc[rng.choice(len(train), min(sample, len(train)), replace=False)]
    matrices, ids = [], []
    for _, row in picked.iterrows():
        try:
            img = _load(data_root / row["path"])
            matrices.append(stain_matrix(img, "vahadane" if method == "reinhard" else method, seed).ravel())
            ids.append(row["image_id"])
        except StainError:
            continue
    if not ids:
        raise PipelineError("no training image had enough tissue to serve as stain target")
    matrices = np.stack(matrices)
    distance = np.linalg.norm(matrices - np.median(matrices, axis=0), axis=1)
    return ids[int(np.argmin(distance))]


def _normalize_one(args: tuple[str, str, dict, int]) -> tuple[str, str]:
    src, dst, target_dict, seed = args
    target = StainTarget.from_dict(target_dict)
    img = _load(Path(src))
    try:
        out = normalize(img, target, seed)
        status = "ok"
    except StainError as exc:
        out, status = img, f"fallback (original kept): {exc}"
    with atomic_path(Path(dst), ".png") as tmp:
        Image.fromarray(out).save(tmp, format="PNG")
    return dst, status


def run_stain(exp_dir: Path | str, method: str = "vahadane", target: str = "auto", fold: int = 0, seed: int = 0,
              workers: int = 2) -> pd.DataFrame:
    exp_dir = Path(exp_dir)
    catalog = Catalog(exp_dir)
    frame = load_split_frame(exp_dir, fold)
    data_root = data_root_of(exp_dir)
    target_id = target
    if target == "auto":  # reuse the earlier choice while the training images are the same
        train_key = stable_hash(sorted(frame.loc[frame["split"] == "train", "image_id"]))
        prev = _previous_target(exp_dir, method)
        if prev.get("rule") == "auto" and prev.get("train_key") == train_key and prev.get("seed") == seed:
            target_id = prev["target_image_id"]
        else:
            target_id = choose_target(frame, data_root, method, seed)
    train_ids = set(frame.loc[frame["split"] == "train", "image_id"])
    if target_id not in train_ids:
        raise PipelineError(f"stain target {target_id!r} is not a training image of fold {fold} (the target must come from train)")
    target_row = frame.set_index("image_id").loc[target_id]
    target_path = data_root / target_row["path"]
    fitted = fit_target(_load(target_path), method, seed)
    key = stable_hash({"method": method, "target": target_id, "sha": file_sha256(target_path), "seed": seed}, 10)
    out_root = catalog.stain_images(method, key)
    write_json({"method": method, "target_image_id": target_id, "target_path": str(target_row["path"]), "rule": target,
                "key": key, "fold": fold, "seed": seed, "target": fitted.to_dict(),
                "train_key": stable_hash(sorted(train_ids))}, catalog.stain_target(method))
    for old in catalog.stain_dir(method).iterdir():  # drop caches of older targets
        if old.is_dir() and old.name != key:
            shutil.rmtree(old)

    index_path = out_root / "index.parquet"
    done = read_parquet(index_path) if index_path.exists() else pd.DataFrame(columns=["image_id", "sha256", "status"])
    known = dict(zip(done["image_id"], done["sha256"]))
    todo = []
    for _, row in frame.iterrows():
        src = data_root / row["path"]
        sha = file_sha256(src, 16)
        dst = out_root / row["path"]
        if known.get(row["image_id"]) == sha and dst.exists():
            continue
        todo.append((str(src), str(dst), fitted.to_dict(), seed, row["image_id"], sha))
    start = time.perf_counter()
    statuses = dict(zip(done["image_id"], done["status"]))
    shas = dict(known)
    if todo:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_normalize_one, [t[:4] for t in todo], chunksize=4)
            for i, (job, (_, status)) in enumerate(progress(zip(todo, results), desc=f"stain {method}", total=len(todo))):
                statuses[job[4]], shas[job[4]] = status, job[5]
                if (i + 1) % 50 == 0:  # persist progress so an interrupted run resumes here
                    write_parquet(_index(statuses, shas), index_path)
    seconds = time.perf_counter() - start
    index = _index(statuses, shas)
    write_parquet(index, index_path)
    fallbacks = index[index["status"] != "ok"]
    rate = len(todo) / seconds if todo and seconds > 0 else float("nan")
    write_json({"method": method, "key": key, "images": len(index), "normalized_now": len(todo), "fallbacks": len(fallbacks),
                "seconds": round(seconds, 2), "images_per_s": round(rate, 2)}, out_root / "stain_run.json")
    print(f"stain {method}: target {target_id}; {len(todo)} normalized now, {len(index) - len(todo)} cached, "
          f"{len(fallbacks)} fallback(s){'' if not todo else f', {rate:.1f} img/s'}")
    for _, row in fallbacks.iterrows():
        print(f"  fallback {row['image_id']}: {row['status']}")
    return index


def _previous_target(exp_dir: Path, method: str) -> dict:
    """The earlier target.json, or {} when it is absent, corrupt or hostile: this run replaces it either way
    (refusing here would leave no command that repairs it)."""
    try:
        return read_stain_target(exp_dir, method) or {}
    except PipelineError as exc:
        print(f"warning: ignoring the previous stain target ({exc}); choosing a new one")
        return {}


def _index(statuses: dict, shas: dict) -> pd.DataFrame:
    ids = sorted(statuses)
    return pd.DataFrame({"image_id": ids, "sha256": [shas[i] for i in ids], "status": [statuses[i] for i in ids]})
