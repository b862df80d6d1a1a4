"""Stage ``stain``: normalize every image of an experiment onto one target, cached and resumable.

Layout: ``DIR/stain/<method>/target.json`` (the chosen target and its stain matrix) and normalized
PNGs in parallel folders ``DIR/stain/<method>/<target_key>/<same relative path as the dataset>``, plus
``index.parquet`` (image_id, source sha256, status). The cache key is (image content, method, target):
a re-run with the same target does nothing; an interrupted run resumes image by image; images where
normalization fails (too little tissue) are copied unchanged and reported as ``fallback`` - never silently.

Up to date (one line, nothing read but the manifest/split hashes and one stat per normalized image) when the
manifest's content, the split and the settings are unchanged and every normalized image is present. Source
content comes from the manifest's ``sha256`` column, so a rerun hashes no image.

Target rule ("auto"): among up to 24 training images (seeded sample), the one whose stain matrix is
closest to the sample's median stain matrix, i.e. the most typical training stain. Training split only.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.entries import Inputs
from pipeline.artifacts.io import atomic_path, opened_inside, read_parquet, write_json, write_parquet
from pipeline.artifacts.stamps import Stamp, up_to_date
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import file_sha256, stable_hash
from pipeline.core.images import read_rgb
from pipeline.core.stain import StainError, StainTarget, fit_target, normalize, stain_matrix
from pipeline.progress import progress
from pipeline.stages.declarations import declared_inputs
from pipeline.workers import WorkerPool, one_blas_thread

STAIN_VERSION = 1


def _load(path: Path, root: Path | str | None = None) -> np.ndarray:
    """The pixels training sees (16-bit and palette PNGs included). With ``root``: the file is opened once and the
    opened file must lie inside ``root``, so an image swapped for a symlink after `index` checked it is refused."""
    if root is None:
        return read_rgb(path)
    with opened_inside(root, path) as name:
        return read_rgb(name)


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
            img = _load(data_root / row["path"], data_root)
            matrices.append(stain_matrix(img, "vahadane" if method == "reinhard" else method, seed).ravel())
            ids.append(row["image_id"])
        except StainError:
            continue
    if not ids:
        raise PipelineError("no training image had enough tissue to serve as stain target")
    matrices = np.stack(matrices)
    distance = np.linalg.norm(matrices - np.median(matrices, axis=0), axis=1)
    return ids[int(np.argmin(distance))]


def _normalize_one(args: tuple) -> tuple[str, str]:
    src, dst, target_dict, seed, root = args
    target = StainTarget.from_dict(target_dict)
    img = _load(Path(src), root)
    try:
        out = normalize(img, target, seed)
        status = "ok"
    except StainError as exc:
        out, status = img, f"fallback (original kept): {exc}"
    with atomic_path(Path(dst), ".png") as tmp:
        Image.fromarray(out).save(tmp, format="PNG")
    return dst, status


def run_stain(exp_dir: Path | str, method: str = "vahadane", target: str = "auto", fold: int = 0, seed: int = 0,
              workers: int = 2, force: bool = False, inputs: Inputs | None = None) -> pd.DataFrame:
    """Normalize every image onto the target (see the module docstring); returns the per-image index.

    Validate, then act: the split, every source image and the target's fit are checked before anything is
    written. New images go to the new target's own folder; ``target.json`` (which train and the dashboard
    follow) is switched, and older targets' folders removed, only once that folder is complete. A failing
    or interrupted command therefore leaves the previous target and its images in use and intact.
    """
    exp_dir = Path(exp_dir)
    catalog = Catalog(exp_dir)
    catalog.stain_dir(method)  # validates the method
    inputs = inputs or Inputs(exp_dir)  # the runner's loaded inputs, or this command's own
    frame = inputs.split_frame(fold)
    data_root = inputs.data_root()
    stamp = Stamp(catalog, f"stain-{method}", {"version": STAIN_VERSION, "method": method, "target": target, "fold": fold,
                                                 "seed": seed}, inputs=declared_inputs("stain", catalog))
    if not force and stamp.is_current() and _cache_complete(inputs, method, frame):
        up_to_date(f"stain {method}", f"{len(frame)} images")
        return read_parquet(catalog.stain_index(method, inputs.stain_target(method)["key"]))
    missing = [p for p in frame["path"] if not (data_root / p).is_file()]
    if missing:
        raise PipelineError(f"{len(missing)} image file(s) listed in the manifest are missing under {data_root}, e.g. {missing[0]}; "
                            "re-run `index`")
    train_ids = set(frame.loc[frame["split"] == "train", "image_id"])
    train_key = stable_hash(sorted(train_ids))
    target_id = target
    if target == "auto":  # reuse the earlier choice while the training images are the same
        prev = _previous_target(inputs, method)
        if prev.get("rule") == "auto" and prev.get("train_key") == train_key and prev.get("seed") == seed:
            target_id = prev["target_image_id"]
        else:
            target_id = choose_target(frame, data_root, method, seed)
    if target_id not in train_ids:
        raise PipelineError(f"stain target {target_id!r} is not a training image of fold {fold} (the target must come from train)")
    target_row = frame.set_index("image_id").loc[target_id]
    target_path = data_root / target_row["path"]
    try:
        fitted = fit_target(_load(target_path, data_root), method, seed)
    except StainError as exc:
        raise PipelineError(f"stain target {target_id} cannot be fitted ({exc}); choose another --target") from None
    key = stable_hash({"method": method, "target": target_id, "sha": file_sha256(target_path), "seed": seed}, 10)
    out_root = catalog.stain_images(method, key)
    index_path = catalog.stain_index(method, key)

    done = read_parquet(index_path) if index_path.exists() and not force else pd.DataFrame(columns=["image_id", "sha256", "status"])
    known = dict(zip(done["image_id"], done["sha256"]))
    statuses, shas = dict(zip(done["image_id"], done["status"])), dict(known)
    todo = []
    for _, row in frame.iterrows():
        sha = _content(frame, data_root, row["image_id"], row)
        dst = out_root / row["path"]
        if known.get(row["image_id"]) == sha and dst.exists():
            continue
        todo.append((str(data_root / row["path"]), str(dst), fitted.to_dict(), seed, row["image_id"], sha, str(data_root)))
    start = time.perf_counter()
    finished = 0
    try:
        for i, (n, (_, status)) in enumerate(progress(_normalize_all(todo, workers), desc=f"stain {method}", total=len(todo))):
            statuses[todo[n][4]], shas[todo[n][4]] = status, todo[n][5]
            finished += 1
            if (i + 1) % 50 == 0:  # persist progress so an interrupted run resumes here
                write_parquet(_index(statuses, shas), index_path)
    finally:
        if todo and 0 < finished < len(todo):  # interrupted or failed: keep what is done for the resume
            write_parquet(_index(statuses, shas), index_path)
    seconds = time.perf_counter() - start
    index = _index({i: statuses[i] for i in frame["image_id"]}, shas)
    write_parquet(index, index_path)
    fallbacks = index[index["status"] != "ok"]
    rate = len(todo) / seconds if todo and seconds > 0 else float("nan")
    write_json({"method": method, "key": key, "images": len(index), "normalized_now": len(todo), "fallbacks": len(fallbacks),
                "seconds": round(seconds, 2), "images_per_s": round(rate, 2)}, catalog.stain_run(method, key))
    # The commit: from here on train, gradcam and the dashboard use the new target's images.
    inputs.save("stain_target", {"method": method, "target_image_id": target_id, "target_path": str(target_row["path"]),
                                 "rule": target, "key": key, "fold": fold, "seed": seed, "target": fitted.to_dict(),
                                 "train_key": train_key}, method)
    for old in catalog.stain_dir(method).iterdir():  # drop caches of older targets
        if old.is_dir() and old.name != key:
            shutil.rmtree(old)
    stamp.record([catalog.stain_target(method), index_path, catalog.stain_run(method, key)])
    print(f"stain {method}: target {target_id}; {len(todo)} normalized now, {len(index) - len(todo)} cached, "
          f"{len(fallbacks)} fallback(s){'' if not todo else f', {rate:.1f} img/s'}")
    for _, row in fallbacks.iterrows():
        print(f"  fallback {row['image_id']}: {row['status']}")
    return index


def _previous_target(inputs: Inputs | Path | str, method: str) -> dict:
    """The earlier target.json, or {} when it is absent, corrupt or hostile: this run replaces it either way
    (refusing here would leave no command that repairs it)."""
    try:
        return (inputs if isinstance(inputs, Inputs) else Inputs(inputs)).stain_target(method) or {}
    except PipelineError as exc:
        print(f"warning: ignoring the previous stain target ({exc}); choosing a new one")
        return {}


def _normalize_all(todo: list[tuple], workers: int):
    """Yield ``(job index, (dst, status))`` as images finish, in worker processes when there are enough."""
    jobs = [(*t[:4], t[6]) for t in todo]
    if workers <= 1 or len(jobs) < 8:
        for n, job in enumerate(jobs):
            yield n, _normalize_one(job)
        return
    with WorkerPool(min(workers, len(jobs)), one_blas_thread) as pool:
        yield from pool.imap_unordered(_normalize_one, jobs)


def _content(frame: pd.DataFrame, data_root: Path, image_id: str, row: pd.Series | None = None) -> str:
    """A source image's content hash: the manifest's ``sha256`` (from index), else hashed here (old manifests)."""
    row = frame.set_index("image_id").loc[image_id] if row is None else row
    if "sha256" in row and isinstance(row["sha256"], str):
        return row["sha256"][:16]
    return file_sha256(data_root / row["path"], 16)


def _cache_complete(inputs: Inputs, method: str, frame: pd.DataFrame) -> bool:
    """Every image of ``frame`` has its normalized file for the current target (one stat per image, no hashing)."""
    target = inputs.stain_target(method)
    if not target:
        return False
    root = inputs.catalog.stain_images(method, target["key"])
    return all((root / p).is_file() for p in frame["path"])


def _index(statuses: dict, shas: dict) -> pd.DataFrame:
    ids = sorted(statuses)
    return pd.DataFrame({"image_id": ids, "sha256": [shas[i] for i in ids], "status": [statuses[i] for i in ids]})
