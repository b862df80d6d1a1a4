"""Stage ``gradcam``: tf-keras-vis Grad-CAM / Grad-CAM++ / Faster-ScoreCAM maps, cached for the dashboard.

Maps (see :mod:`pipeline.ml.explain`) target each model's predicted class, or the true class.

Beyond the study, each map gets:
* ``deletion_auc``: delete (grey out) the most salient pixels first in ``deletion_steps`` steps and
  average the model's probability for the target class; lower = the map points at what the model uses.
* ``mean_iou``: mean IoU of its top-20% region with the other members' maps of the same image.
"""

from __future__ import annotations

import time
import zipfile
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import GRADCAM_METHODS, Catalog, parse_run_id
from pipeline.artifacts.entries import Inputs
from pipeline.artifacts.gradcam_cache import load_maps
from pipeline.artifacts.gradcam_requests import EVALUATED_SPLITS, requested_images
from pipeline.artifacts.io import atomic_path, read_json, read_json_object, read_parquet, write_json, write_parquet
from pipeline.artifacts.predictions import load_predictions
from pipeline.artifacts.stamps import Stamp, content_digest, up_to_date
from pipeline.config import GradcamConfig
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import stable_hash
from pipeline.core.heatmaps import region_iou
from pipeline.ml.data import load_images, source_identity
from pipeline.workers import map_in_workers

GRADCAM_VERSION = 1


def check_completed_runs(exp_dir: Path | str, runs: list[str]) -> None:
    """Every run in ``runs`` has finished training (run.json and model.keras): say which ones have if not."""
    catalog = Catalog(exp_dir)
    for run_id in runs:
        files = catalog.run(run_id)
        if not files.info.exists() or not files.model.exists():
            known = [r for r in catalog.run_ids_on_disk() if catalog.run(r).info.exists()]
            raise PipelineError(f"no completed run {run_id!r} in {exp_dir} (completed runs: {', '.join(known) or 'none'})")


def single_runs(exp_dir: Path | str) -> list[str]:
    preds = load_predictions(exp_dir)
    return sorted(preds.loc[preds["kind"] == "single", "run_id"].unique().tolist())


def run_gradcam(exp_dir: Path | str, cfg: GradcamConfig = GradcamConfig(), runs: list[str] | None = None, fold: int = 0,
                workers: int | None = None, force: bool = False, executor=None, inputs: Inputs | None = None) -> pd.DataFrame:
    """Maps + scores for every (method, run); ``workers`` (default ``cfg.workers``) > 1 explains runs in parallel.

    Each (method, run) is up to date when its model, its predictions, the explained images and the settings are
    unchanged (checked here, without TensorFlow, before any worker starts); ``scores.parquet`` is rewritten only
    when one of its runs was. ``inputs``: the experiment's loaded inputs (the runner's); a fresh one by default.
    """
    exp_dir = Path(exp_dir)
    catalog = Catalog(exp_dir)
    runs = runs or single_runs(exp_dir)
    if not runs:
        raise PipelineError(f"no trained runs in {exp_dir}; run `train` first")
    inputs = inputs or Inputs(exp_dir)
    frame = inputs.split_frame(fold)
    preds = load_predictions(exp_dir)
    image_ids = with_requested(images_to_explain(frame, preds, cfg.split, cfg.max_images), frame, preds, runs,
                               requested_images(exp_dir))
    jobs = [(str(exp_dir), method, run_id, image_ids, cfg, fold) for method in cfg.methods for run_id in runs]
    keys = [explain_key(*job, inputs=inputs) for job in jobs]  # validates every run before any work starts
    stale = [job for job, key in zip(jobs, keys) if force or not _explained(catalog, job[1], job[2], key)]
    for job in jobs:
        if job not in stale:
            up_to_date(f"gradcam {job[1]} {job[2]}")
    if stale and executor is not None:  # e.g. Ray: one task per (method, run); failures reported together
        from pipeline.executors import JobFailed, Task

        results = executor.map([Task(f"gradcam {job[1]} {job[2]}", _explain_run_job, (*job, force, inputs)) for job in stale])
        failed = [(job, r.error) for job, r in zip(stale, results) if isinstance(r, JobFailed)]
        if failed:
            lines = [f"{job[1]} {job[2]}: {(str(err).strip() or type(err).__name__).splitlines()[0]}" for job, err in failed]
            raise PipelineError(f"gradcam failed for {len(failed)} run(s): " + "; ".join(lines))
    elif stale:
        map_in_workers(_explain_run_job, [(*job, force, inputs) for job in stale], workers or cfg.workers)
    out = []
    for method in cfg.methods:
        per_run = [catalog.gradcam_run_scores(method, r) for r in runs] + [catalog.gradcam_maps(method, r) for r in runs]
        stamp = Stamp(catalog, f"gradcam-{GRADCAM_METHODS[method]}", {"version": GRADCAM_VERSION, "runs": runs}, inputs=per_run)
        if not force and stamp.is_current():
            out.append(read_parquet(catalog.gradcam_scores(method)))
            continue
        scores = pd.concat([read_parquet(catalog.gradcam_run_scores(method, r)) for r in runs], ignore_index=True)
        scores = add_agreement(exp_dir, scores)
        inputs.save("gradcam_scores", scores, method)  # through its catalog entry: schema-checked first
        stamp.record([catalog.gradcam_scores(method)])
        out.append(scores)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()  # methods = []: nothing to explain


def select_images(image_ids: list[str], preds: pd.DataFrame, split: str, max_images: int = 0) -> list[str]:
    """The images to explain: every image of ``split`` that any run or ensemble misclassifies (never capped: each error
    must be explainable from its card), then correct images up to ``max_images`` in all (0: every image), drawn with a
    fixed seed. Sorted by id, the same list for every run so that the maps of one image can be compared."""
    part = preds[(preds["split"] == split) & preds["image_id"].isin(image_ids)]
    errors = set(part.loc[part["pred"] != part["label"], "image_id"].astype(str))
    chosen = [i for i in image_ids if i in errors]
    rest = [i for i in image_ids if i not in errors]
    room = len(rest) if not max_images else max(0, max_images - len(chosen))
    if room < len(rest):
        rest = pd.Series(rest).sample(room, random_state=0).tolist()
    return sorted(chosen + rest)




def images_to_explain(frame: pd.DataFrame, preds: pd.DataFrame, split: str, max_images: int = 0) -> list[str]:
    """:func:`select_images` on ``split`` (its errors, then correct images up to ``max_images``), plus every error of
    the other evaluated splits (val errors are browsed and linked to Grad-CAM too; never capped, and no correct
    image of theirs is added). Sorted by id: one list for every run."""
    def ids_of(name: str) -> list[str]:
        return sorted(frame.loc[frame["split"] == name, "image_id"].astype(str))

    chosen = set(select_images(ids_of(split), preds, split, max_images))
    for other in EVALUATED_SPLITS:
        if other != split:
            mine = set(ids_of(other))
            part = preds[(preds["split"] == other) & preds["image_id"].astype(str).isin(mine)]
            chosen |= set(part.loc[part["pred"] != part["label"], "image_id"].astype(str))
    return sorted(chosen)


def with_requested(chosen: list[str], frame: pd.DataFrame, preds: pd.DataFrame, runs: list[str], requested: list[str]) -> list[str]:
    """The stage's choice plus the images a user asked for (``gradcam --image``) that every one of ``runs`` predicted
    on an evaluated split of this fold; sorted, one list for every run."""
    if not requested:
        return chosen
    mine = set(frame["image_id"].astype(str))
    part = preds[preds["run_id"].isin(runs) & preds["split"].isin(EVALUATED_SPLITS)]
    per_image = part.groupby(part["image_id"].astype(str))["run_id"].nunique()
    covered = {i for i in requested if i in mine and per_image.get(i, 0) == len(set(runs))}
    return sorted(set(chosen) | covered)


def _explain_run_job(job: tuple) -> pd.DataFrame:
    """``explain_run`` on one job tuple (module-level so a spawned worker can unpickle it)."""
    return explain_run(*job)


def explain_key(exp_dir: Path | str, method: str, run_id: str, image_ids: list[str], cfg: GradcamConfig, fold: int = 0,
                inputs: Inputs | None = None) -> str:
    """What a run's maps and scores depend on: its model, its predictions, the images and the settings."""
    exp_dir = Path(exp_dir)
    inputs = inputs or Inputs(exp_dir)
    catalog = Catalog(exp_dir)
    files = catalog.run(run_id)
    check_completed_runs(exp_dir, [run_id])
    info = read_json_object(files.info)
    frame = inputs.split_frame(fold).set_index("image_id").loc[image_ids].reset_index()
    stain = info["stain"]
    images = source_identity(exp_dir, inputs.data_root(), frame, stain, inputs.stain_target(stain) if stain != "none" else None)
    return stable_hash({"version": GRADCAM_VERSION, "method": method, "model": info.get("model_sha256") or info["config_hash"],
                        "predictions": content_digest(files.predictions), "ids": image_ids, "images": images,
                        "size": info["image_size"], "target": cfg.target, "steps": cfg.deletion_steps})


def _extendable(exp_dir: Path, catalog: Catalog, method: str, run_id: str, image_ids: list[str], cfg: GradcamConfig,
                fold: int, inputs: Inputs) -> list[str]:
    """The cached image ids of this (method, run) when the cache is up to date for them and they are a proper subset of
    ``image_ids`` (same model, predictions, images and settings): only the rest needs explaining. Else []."""
    path = catalog.gradcam_maps(method, run_id)
    if not path.exists():
        return []
    try:
        with np.load(path, allow_pickle=False) as data:
            cached = [str(i) for i in data["image_id"].tolist()]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return []  # unreadable: recompute everything
    if not cached or not set(cached) < set(image_ids) or len(set(cached)) != len(cached):
        return []
    return cached if _explained(catalog, method, run_id, explain_key(exp_dir, method, run_id, cached, cfg, fold, inputs)) else []


def _explained(catalog: Catalog, method: str, run_id: str, key: str) -> bool:
    paths = (catalog.gradcam_maps(method, run_id), catalog.gradcam_run_meta(method, run_id), catalog.gradcam_run_scores(method, run_id))
    return all(p.exists() for p in paths) and read_json(paths[1]).get("key") == key


def explain_run(exp_dir: Path | str, method: str, run_id: str, image_ids: list[str], cfg: GradcamConfig, fold: int = 0,
                force: bool = False, inputs: Inputs | None = None) -> pd.DataFrame:
    """Grad-CAM maps (cached as npz) and per-map scores of one run; skipped when the cache is up to date."""
    exp_dir = Path(exp_dir)
    inputs = inputs or Inputs(exp_dir)
    catalog = Catalog(exp_dir)
    files = catalog.run(run_id)
    key = explain_key(exp_dir, method, run_id, image_ids, cfg, fold, inputs)
    target, meta_path = catalog.gradcam_maps(method, run_id), catalog.gradcam_run_meta(method, run_id)
    scores_path = catalog.gradcam_run_scores(method, run_id)
    if not force and _explained(catalog, method, run_id, key):
        up_to_date(f"gradcam {method} {run_id}")
        return read_parquet(scores_path)
    from pipeline.ml.runtime import quiet_tensorflow

    quiet_tensorflow()
    from pipeline.ml.explain import compute_maps, deletion_auc
    from pipeline.ml.models import GRADCAM_LAYER, load_classifier

    # maps of a smaller, otherwise identical list already cached (images asked for with `--image`): explain only the
    # new images and merge. Each image's map and deletion curve depend on that image alone (inference mode), so the
    # merged cache equals a full recomputation (tests/test_gradcam_requests.py compares them).
    done = [] if force else _extendable(exp_dir, catalog, method, run_id, image_ids, cfg, fold, inputs)
    cached = set(done)
    todo = [i for i in image_ids if i not in cached]
    info = read_json_object(files.info)
    part = inputs.split_frame(fold).set_index("image_id").loc[todo].reset_index()
    model = load_classifier(files.model)
    grid = model.get_layer(GRADCAM_LAYER).output.shape[1]
    if grid is not None and grid < 2:
        print(f"warning: {run_id} at {info['image_size']} px has a {grid}x{grid} '{GRADCAM_LAYER}' grid: its Grad-CAM maps are "
              "constant; train at >= 64 px for spatial maps", flush=True)
    stain = info["stain"]
    images = np.asarray(load_images(exp_dir, inputs.data_root(), part, info["image_size"], info["resolved_config"]["train"]["resize"],
                                    stain, stain_target=inputs.stain_target(stain) if stain != "none" else None))
    run_preds = read_parquet(files.predictions).set_index("image_id").loc[todo]
    classes = (part["label"].to_numpy() if cfg.target == "true" else run_preds["pred"].to_numpy()).astype(int)
    start = time.perf_counter()
    maps = compute_maps(model, images, classes, method, cfg.batch_size)
    seconds = time.perf_counter() - start
    deletion = deletion_auc(model, images, maps, classes, cfg.deletion_steps)
    prob_m = run_preds["prob_malignant"].to_numpy()
    scores = pd.DataFrame({"method": method, "run_id": run_id, "image_id": todo, "target_class": classes,
                           "prob_target": np.where(classes == 1, prob_m, 1 - prob_m), "deletion_auc": deletion})
    stored = (maps * 255).round().astype(np.uint8)
    if done:
        with np.load(target, allow_pickle=False) as old:
            stored = np.concatenate([old["maps"], stored])
        scores = pd.concat([read_parquet(scores_path)[scores.columns], scores], ignore_index=True)
        order = pd.Index(done + todo).get_indexer(image_ids)  # back to the one sorted list every run shares
        stored, scores = stored[order], scores.iloc[order].reset_index(drop=True)
    with atomic_path(target, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, image_id=np.asarray(image_ids).astype(str), maps=stored)
    write_parquet(scores, scores_path)
    write_json({"key": key, "images": len(image_ids), "computed": len(todo), "seconds": round(seconds, 2),
                "maps_per_s": round(len(todo) / max(seconds, 1e-9), 2)}, meta_path)
    print(f"gradcam {method} {run_id}: {len(todo)} maps" + (f" (+{len(done)} cached)" if done else "")
          + f", {len(todo) / max(seconds, 1e-9):.1f} maps/s", flush=True)
    return scores


def add_agreement(exp_dir: Path, scores: pd.DataFrame, fraction: float = 0.2) -> pd.DataFrame:
    """Per map: mean top-20% IoU with the other members' maps of the same image (stain-normalized runs excluded)."""
    out = []
    for method, sub in scores.groupby("method"):
        runs = sorted(r for r in sub["run_id"].unique() if parse_run_id(r).stain == "none")
        maps = {r: load_maps(exp_dir, method, r) for r in runs}
        ious: dict[tuple[str, str], list[float]] = {}
        for image_id in sub["image_id"].unique():
            have = [r for r in runs if image_id in maps[r]]
            for a, b in combinations(have, 2):
                iou = region_iou(maps[a][image_id], maps[b][image_id], fraction)
                ious.setdefault((a, image_id), []).append(iou)
                ious.setdefault((b, image_id), []).append(iou)
        sub = sub.copy()
        sub["mean_iou"] = [float(np.mean(ious[(r, i)])) if (r, i) in ious else np.nan for r, i in zip(sub["run_id"], sub["image_id"])]
        out.append(sub)
    return pd.concat(out, ignore_index=True)


def save_panel(exp_dir: Path | str, image_id: str, method: str = "gradcam", out: Path | str | None = None) -> Path:
    """Render the study's 2 x 5 multi-model panel for one image from cached maps and save it as PNG."""
    from pipeline.core.heatmaps import panel
    from pipeline.core.images import read_rgb

    exp_dir = Path(exp_dir)
    preds = load_predictions(exp_dir)
    rows = preds[(preds["image_id"] == image_id) & (preds["kind"] == "single") & (preds["stain"] == "none")]
    if rows.empty:
        raise PipelineError(f"no predictions for image {image_id!r} in {exp_dir}")
    label = int(rows["label"].iloc[0])
    maps, probs = {}, {}
    for _, r in rows.iterrows():
        run_maps = load_maps(exp_dir, method, r["run_id"])
        if image_id in run_maps:
            maps[r["run_id"]] = run_maps[image_id]
            pm = float(r["prob_malignant"])
            probs[r["run_id"]] = (pm if label else 1 - pm, pm if r["pred"] else 1 - pm)
    if not maps:
        raise PipelineError(f"no cached {method} maps for {image_id!r}; run `python -m pipeline gradcam {exp_dir} --method {method}`")
    inputs = Inputs(exp_dir)
    manifest = inputs.split_frame().set_index("image_id")
    image = read_rgb(inputs.data_root() / manifest.loc[image_id, "path"])
    out = Path(out) if out else Catalog(exp_dir).gradcam_panel(method, image_id)
    with atomic_path(out, ".png") as tmp:
        panel(image, maps, probs, label).save(tmp, format="PNG")
    return out
