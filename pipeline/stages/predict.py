"""Stage ``predict``: external validation. Apply every trained model and ensemble of an experiment to new images.

A model tested only on a split of its own database has not been validated. ``predict EXP --data ROOT --out NEW``
scores a folder of images from another source with EXP's models, unchanged, and writes NEW as an ordinary
experiment folder (manifest, rejects, a split in which every image is ``external``, per-run and ensemble
predictions, metrics when labels exist), so every dashboard page and ``evaluate`` work on it.

* **Input**: a BreakHis-layout tree (labels, subtypes, patients, magnifications from the names, parsed by the
  ``index`` stage) or any folder of PNGs, with an optional labels CSV (``image`` relative path, ``label`` 0/1 or
  benign/malignant, optional ``patient``). Every image is decoded by the shared reader; what cannot be used is a
  row of ``rejects.parquet`` with the reason. Without labels, ``label`` is -1 and no metrics are computed.
* **Single runs**: each completed run of EXP scores every image at its own input size and resize mode, decoded
  once per size into NEW's image cache, with ``load_images`` and ``predict_with_features``: the very code that
  wrote EXP's own predictions. A stained twin first normalizes the new images onto EXP's recorded stain target.
* **Ensembles**: recomputed from those scores with EXP's fitted parameters, read from EXP's ``ensembles.json``
  (groups, exact weights, threshold, tie rule, best subsets) and EXP's saved stacking meta-models. Nothing is
  refitted on the new images: that would be training on the validation data.
* **State**: one stamp per run (``predict-<run>``), one for the inputs and one for the ensembles; a rerun on
  unchanged inputs does nothing, an interrupted run resumes with the first run not yet written.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import IMAGE_ID_RE, Catalog
from pipeline.artifacts.entries import Inputs
from pipeline.artifacts.io import atomic_path, ensure_dir, read_json, read_json_object, read_parquet, write_json, write_parquet
from pipeline.artifacts.predictions import completed_runs, ensemble_rows, load_predictions, make_rows, merge_predictions
from pipeline.artifacts.stamps import Stamp, up_to_date
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import file_sha256, listing_digest
from pipeline.stages.index import (MANIFEST_COLUMNS, SYNTHETIC_MARKER, check_png, find_breast_root, find_synthetic_marker,
                                   entry_reject, index_dataset, walk_entries)

PREDICT_VERSION = 1
EXTERNAL_SPLIT = "external"
NO_LABEL = -1
LABEL_WORDS = {"0": 0, "1": 1, "benign": 0, "malignant": 1, "b": 0, "m": 1}


# -- the new images ---------------------------------------------------------------------------------------
def is_breakhis_tree(data_root: Path) -> bool:
    try:
        find_breast_root(data_root)
    except PipelineError:
        return False
    return True


def index_flat_folder(data_root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every PNG under ``data_root`` (any names, any depth) as manifest rows without labels; the rest as rejects."""
    rows, rejects = [], []
    for path, problem in sorted(walk_entries(data_root)):
        rel, reject = entry_reject(data_root, path, problem)
        if reject:
            rejects.append(reject)
            continue
        if path.suffix.lower() != ".png":
            rejects.append({"path": rel, "reason": "not a PNG file (extension); convert JPEG/TIFF images to PNG first"})
            continue
        if not IMAGE_ID_RE.fullmatch(path.stem):
            rejects.append({"path": rel, "reason": "file name is not usable as an image id (letters, digits, . _ - only)"})
            continue
        size = check_png(path)
        if isinstance(size, str):
            rejects.append({"path": rel, "reason": size})
            continue
        rows.append({"image_id": path.stem, "path": rel, "label": NO_LABEL, "class_name": "unknown", "subtype": "unknown",
                     "subtype_name": "unknown", "patient_id": path.stem, "patient_num": 0, "magnification": 0, "seq": 0,
                     "year": 0, "width": size[0], "height": size[1], "sha256": file_sha256(path, 32)})
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    dupes = manifest[manifest["image_id"].duplicated(keep="first")]
    if len(dupes):
        rejects.extend({"path": p, "reason": "duplicate image_id (same file name in two places)"} for p in dupes["path"])
        manifest = manifest.drop(dupes.index)
    return manifest.reset_index(drop=True), pd.DataFrame(rejects, columns=["path", "reason"])


def read_labels(labels_file: Path, manifest: pd.DataFrame, rejects: pd.DataFrame) -> pd.DataFrame:
    """``manifest`` with labels (and patients) from the CSV; every image named must be there, every image labelled."""
    if not labels_file.is_file():
        raise PipelineError(f"labels file {labels_file} does not exist")
    try:
        table = pd.read_csv(labels_file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PipelineError(f"{labels_file} is not a readable CSV ({why})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    dup = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if dup:  # "label" and " Label" name one column once normalised: which one is meant cannot be guessed
        raise PipelineError(f"{labels_file} has duplicate column(s) {', '.join(dup)} (headers are compared trimmed, "
                            "ignoring case); keep one")
    missing_cols = [c for c in ("image", "label") if c not in table]
    if missing_cols:
        raise PipelineError(f"{labels_file} lacks column(s) {', '.join(missing_cols)} (expected image,label[,patient])")
    images = table["image"].str.strip().str.replace("\\", "/", regex=False)
    labels = table["label"].str.strip().str.lower().map(LABEL_WORDS)
    bad = table.loc[labels.isna(), "label"]
    if len(bad):
        raise PipelineError(f"{labels_file}: label {bad.iloc[0]!r} is not 0/1 or benign/malignant ({len(bad)} such rows)")
    if images.duplicated().any():
        raise PipelineError(f"{labels_file} names image {images[images.duplicated()].iloc[0]!r} twice")
    by_path = dict(zip(images, labels.astype(int)))
    known = set(manifest["path"])
    absent = [p for p in images if p not in known]
    if absent:
        why = dict(zip(rejects["path"], rejects["reason"]))
        reason = f" (rejected: {why[absent[0]]})" if absent[0] in why else " (no such image under the data folder)"
        raise PipelineError(f"{labels_file} names {len(absent)} image(s) that are not valid images of the folder, "
                            f"e.g. {absent[0]!r}{reason}")
    unlabelled = manifest.loc[~manifest["path"].isin(by_path), "path"]
    if len(unlabelled):
        raise PipelineError(f"{len(unlabelled)} image(s) have no row in {labels_file}, e.g. {unlabelled.iloc[0]!r}; "
                            "label every image or none")
    out = manifest.copy()
    out["label"] = out["path"].map(by_path).astype("int8")
    out["class_name"] = np.where(out["label"] == 1, "malignant", "benign")
    if "patient" in table:
        patients = dict(zip(images, table["patient"].str.strip()))
        out["patient_id"] = [patients[p] or i for p, i in zip(out["path"], out["image_id"])]
    return out


def index_external(data_root: Path, labels_file: Path | None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(manifest, rejects, layout) of the new images; a clear error when none is usable."""
    if not data_root.is_dir():
        raise PipelineError(f"--data {data_root} is not a folder of images")
    if is_breakhis_tree(data_root):
        if labels_file is not None:
            raise PipelineError("a BreakHis-layout folder carries its labels in the file names; drop --labels")
        manifest, rejects = index_dataset(data_root)
        layout = "breakhis"
    else:
        manifest, rejects = index_flat_folder(data_root)
        layout = "flat"
    if manifest.empty:
        reasons = rejects.groupby("reason").size().sort_values(ascending=False).head(3) if len(rejects) else pd.Series(dtype=int)
        why = "; ".join(f"{n} x {r}" for r, n in reasons.items()) or "no files"
        raise PipelineError(f"no valid image under {data_root} ({len(rejects)} files rejected: {why})")
    if labels_file is not None:
        manifest = read_labels(labels_file, manifest, rejects)
    if layout == "flat":  # patient numbers for the patient bootstrap: one per patient (each image its own without --labels patients)
        manifest["patient_num"] = pd.factorize(manifest["patient_id"], sort=True)[0].astype("int32")
    manifest = manifest.astype({"label": "int8", "patient_num": "int32", "magnification": "int16", "seq": "int16",
                                "width": "int32", "height": "int32"})
    return manifest, rejects, layout


def ci_unit_of(manifest: pd.DataFrame) -> str:
    """``image`` when every image is its own patient (a flat folder without a ``patient`` column): the "patient"
    bootstrap then resamples images, and the pages must say so; else ``patient``."""
    return "patient" if manifest["patient_id"].nunique() < len(manifest) else "image"


# -- the source experiment --------------------------------------------------------------------------------
def trained_runs(source: Path) -> list[str]:
    """The completed single runs of ``source`` whose model file is there (the models ``predict`` applies)."""
    catalog = Catalog(source)
    runs = [r for r in completed_runs(source) if catalog.run(r).model.is_file()]
    if not runs:
        raise PipelineError(f"{source} has no trained runs (no runs/<id>/run.json marked complete with its model.keras); "
                            f"run `python -m pipeline train {source} --model ...` first")
    return runs


def check_folders(source: Path, out: Path, data_root: Path) -> None:
    """NEW must not be EXP, must not sit inside the images, and must not be another (non-external) experiment."""
    if not Catalog(source).manifest.exists():
        raise PipelineError(f"{source} is not an experiment folder (no manifest.parquet)")
    if out.exists() and not out.is_dir():
        raise PipelineError(f"--out {out} is a file, not a folder")
    if out.resolve() == source.resolve():
        raise PipelineError("--out must be a new folder, not the source experiment")
    if out.resolve().is_relative_to(data_root.resolve()):
        raise PipelineError(f"--out {out} is inside the images {data_root}; write the experiment elsewhere")
    dataset = Catalog(out).dataset
    if dataset.exists():
        record = read_json(dataset)
        if not (isinstance(record, dict) and isinstance(record.get("external"), dict)):
            raise PipelineError(f"--out {out} holds another experiment (not an external validation); choose a new folder")
        if Path(record["external"].get("source_experiment", "")) != source.resolve():
            raise PipelineError(f"--out {out} holds the external validation of {record['external'].get('source_experiment')}; "
                                "choose a new folder")


# -- the stage --------------------------------------------------------------------------------------------
def run_predict(source: Path | str, data_root: Path | str, out: Path | str, labels_file: Path | str | None = None,
                evaluate: bool = True, bootstrap: int = 1000, seed: int = 0, batch_size: int = 64, force: bool = False) -> pd.DataFrame:
    """Score ``data_root`` with every model and ensemble of ``source`` into the experiment ``out``; returns its predictions."""
    source, data_root, out = Path(source), Path(data_root).resolve(), Path(out)
    labels_file = Path(labels_file).resolve() if labels_file else None
    check_folders(source, out, data_root)
    runs = trained_runs(source)
    catalog = Catalog(out)
    inputs, source_inputs = Inputs(out), Inputs(source)  # each file of either experiment read once, through its entry
    _write_inputs(source, data_root, out, labels_file, force, inputs)
    frame = inputs.split_frame()
    for run_id in runs:
        _score_run(source, out, data_root, run_id, frame, batch_size, force, source_inputs)
    _score_ensembles(source, out, runs, force)
    merge_predictions(out)
    labelled = bool((frame["label"] != NO_LABEL).all())
    if evaluate and labelled:
        from pipeline.config import EvaluateConfig
        from pipeline.stages.evaluate import run_evaluate

        run_evaluate(out, EvaluateConfig(bootstrap=bootstrap), seed=seed, force=force, inputs=inputs)
    elif not labelled:
        catalog.metrics.unlink(missing_ok=True)  # no labels: no metrics (never stale ones from an earlier labelled run)
        catalog.metrics_info.unlink(missing_ok=True)
    return inputs.load("predictions")


def _write_inputs(source: Path, data_root: Path, out: Path, labels_file: Path | None, force: bool,
                  inputs: Inputs | None = None) -> None:
    """manifest, rejects, dataset.json (with the source experiment) and the all-``external`` split; skipped when unchanged.
    The manifest and the split are saved through their catalog entries (checked before the atomic write)."""
    catalog = Catalog(out)
    inputs = inputs if inputs is not None else Inputs(out)
    stamp = Stamp(catalog, "predict-index", {"version": PREDICT_VERSION, "data_root": str(data_root), "source": str(source.resolve()),
                                             "labels": str(labels_file) if labels_file else None},
                  inputs=[labels_file] if labels_file else [], extra={"tree": listing_digest(data_root)})
    if not force and stamp.is_current():
        up_to_date("predict inputs", f"{len(inputs.manifest())} images")
        return
    start = time.perf_counter()
    manifest, rejects, layout = index_external(data_root, labels_file)
    marker = (find_synthetic_marker(data_root, find_breast_root(data_root)) if layout == "breakhis"
              else (data_root / SYNTHETIC_MARKER if (data_root / SYNTHETIC_MARKER).is_file() else None))
    ensure_dir(out, "experiment folder")
    inputs.save("manifest", manifest)
    write_parquet(rejects, catalog.rejects)
    inputs.save("split", pd.DataFrame({"image_id": manifest["image_id"], "split": EXTERNAL_SPLIT, "fold": 0}))
    labelled = bool((manifest["label"] != NO_LABEL).all())
    write_json({"data_root": str(data_root), "synthetic": marker is not None, "synthetic_marker": str(marker) if marker else None,
                "images": len(manifest), "rejects": len(rejects), "seconds": round(time.perf_counter() - start, 2),
                "external": {"source_experiment": str(source.resolve()), "source_name": source.resolve().name, "layout": layout,
                             "labels": labelled, "labels_file": str(labels_file) if labels_file else None,
                             "ci_unit": ci_unit_of(manifest)}},
               catalog.dataset)
    stamp.record([catalog.manifest, catalog.rejects, catalog.split, catalog.dataset])
    print(f"predict: {len(manifest)} images ({layout} layout, {'labelled' if labelled else 'no labels'}), {len(rejects)} rejected")


def _prepare_stain(source: Path, out: Path, data_root: Path, method: str, frame: pd.DataFrame,
                   source_inputs: Inputs | None = None) -> dict:
    """Normalize the new images onto the source's recorded stain target (never a new target fitted on them); returns
    that target (now also ``out``'s)."""
    from pipeline.stages.stain import _normalize_all

    target = (source_inputs if source_inputs is not None else Inputs(source)).require_stain_target(method)
    catalog = Catalog(out)
    current = read_json(catalog.stain_target(method)) if catalog.stain_target(method).exists() else None
    if current != target:  # first time, or the source was re-stained onto another target: start this method afresh
        if catalog.stain_dir(method).exists():
            shutil.rmtree(catalog.stain_dir(method))
        write_json(target, catalog.stain_target(method))
    out_root = catalog.stain_images(method, target["key"])
    # the stain stage's job shape: (source, destination, target, seed, image id, content hash, root it must stay in)
    todo = [(str(data_root / p), str(out_root / p), target["target"], int(target.get("seed", 0)), i, None, str(data_root))
            for p, i in zip(frame["path"], frame["image_id"]) if not (out_root / p).is_file()]
    statuses = []
    for n, (_, status) in _normalize_all(todo, workers=2):
        statuses.append((todo[n][4], status))
    fallbacks = [s for s in statuses if s[1] != "ok"]
    if todo:
        print(f"stain {method}: {len(todo)} new images normalized onto {source.name}'s target {target.get('target_image_id')}"
              f"{f', {len(fallbacks)} fallback(s)' if fallbacks else ''}")
    return target


def _score_run(source: Path, out: Path, data_root: Path, run_id: str, frame: pd.DataFrame, batch_size: int, force: bool,
               source_inputs: Inputs | None = None) -> None:
    """One run of the source on every new image: predictions, pooled features, the run's record (skipped when current)."""
    from pipeline.ml.data import load_images
    from pipeline.ml.models import load_classifier
    from pipeline.stages.train import predict_with_features

    src, dst = Catalog(source).run(run_id), Catalog(out).run(run_id)
    info = read_json_object(src.info)
    stain, size = info.get("stain", "none"), int(info["image_size"])
    train_cfg = (info.get("resolved_config") or {}).get("train") or {}
    resize = train_cfg.get("resize", "square")
    inputs = [src.model, Catalog(out).manifest]
    if stain != "none":
        inputs.append(Catalog(source).stain_target(stain))
    stamp = Stamp(Catalog(out), f"predict-{run_id}", {"version": PREDICT_VERSION, "run": run_id, "config_hash": info.get("config_hash"),
                                                     "batch": batch_size}, inputs=inputs)
    if not force and stamp.is_current():
        up_to_date(f"predict {run_id}")
        return
    from pipeline.ml.runtime import quiet_tensorflow

    quiet_tensorflow()  # only once there is work: an up-to-date rerun never starts TensorFlow
    start = time.perf_counter()
    target = _prepare_stain(source, out, data_root, stain, frame, source_inputs) if stain != "none" else None
    images = load_images(out, data_root, frame, size, resize, stain, stain_target=target)
    model = load_classifier(src.model)
    model.run_eagerly = bool(train_cfg.get("run_eagerly", False))  # as the train stage predicted with it
    probs, feats = predict_with_features(model, np.asarray(images), batch_size)
    ensure_dir(dst.dir)
    with atomic_path(dst.features, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, image_id=frame["image_id"].to_numpy().astype(str), features=feats)
    rows = make_rows(run_id, "single", info["model"], info["family"], stain, frame, probs)
    write_parquet(rows, dst.predictions)
    outputs = [dst.features, dst.predictions, dst.info]
    if src.history.exists():  # the model's own training curves, for the dashboard
        with atomic_path(dst.history, ".parquet") as tmp:
            shutil.copyfile(src.history, tmp)
        outputs.append(dst.history)
    seconds = time.perf_counter() - start
    record = {**info, "external": {"source_experiment": str(source.resolve()), "source_run": run_id, "images": len(frame),
                                   "seconds": round(seconds, 2), "model_sha256": file_sha256(src.model, 32)}}
    record.pop("val_accuracy", None), record.pop("test_accuracy", None)  # the source's numbers, not this experiment's
    write_json(record, dst.info)
    stamp.record(outputs)
    print(f"predict {run_id}: {len(frame)} images at {size}px{f' ({stain})' if stain != 'none' else ''} in {seconds:.1f}s", flush=True)


def _score_ensembles(source: Path, out: Path, runs: list[str], force: bool) -> None:
    """Every ensemble of the source, recomputed from the new scores with the source's fitted parameters."""
    src, dst = Catalog(source), Catalog(out)
    if not src.ensembles.exists():
        print(f"predict: {source} has no ensembles.json (run `ensemble` there to include its ensembles)")
        return
    record = read_json(src.ensembles)
    groups = record.get("groups", {}) if isinstance(record, dict) else {}
    stacked = [g for g, s in (record.get("stacking") or {}).items() if isinstance(s, dict) and s.get("model_saved")]
    members = sorted({m for names in groups.values() for m in names})
    inputs = [src.ensembles] + [src.stacking_model(g) for g in stacked] + [dst.run(m).predictions for m in members if m in runs]
    inputs += [dst.run(m).features for m in members if m in runs and stacked]
    stamp = Stamp(dst, "predict-ensemble", {"version": PREDICT_VERSION}, inputs=inputs)
    if not force and stamp.is_current():
        up_to_date("predict ensembles")
        return
    lacking = [m for m in members if m not in runs]
    if lacking:
        raise PipelineError(f"{source}'s ensembles use run(s) {lacking} that have no trained model; re-run `ensemble` there")
    merge_predictions(out)
    rows = external_ensemble_rows(record, load_predictions(out), lambda g: src.stacking_model(g) if g in stacked else None,
                         lambda m: dst.run(m).features)
    write_parquet(pd.concat(rows, ignore_index=True), dst.ensemble_predictions)
    write_json({**record, "external": {"source_experiment": str(source.resolve()), "refitted": False}}, dst.ensembles)
    stamp.record([dst.ensemble_predictions, dst.ensembles])
    print(f"predict: {len({r['run_id'].iloc[0] for r in rows})} ensembles recomputed with {source.name}'s fitted parameters")


def external_ensemble_rows(record: dict, preds: pd.DataFrame, stacking_model, features_file) -> list[pd.DataFrame]:
    """The rows of every ensemble recorded in ``record`` on the ``external`` images of ``preds``: the ensemble stage's
    own function (:func:`pipeline.artifacts.predictions.ensemble_rows`) with the source's saved meta-models."""

    def stacking_prob(group: str, names: list[str], meta: pd.DataFrame):
        model_path = stacking_model(group)
        if model_path is None:
            return None
        return stacking_probabilities(model_path, [features_file(n) for n in names], meta["image_id"].tolist())

    return ensemble_rows(record, preds, EXTERNAL_SPLIT, stacking_prob)


def stacking_probabilities(model_path: Path, feature_files: list[Path], image_ids: list[str]) -> np.ndarray:
    """P(malignant) of a saved stacking meta-model on the members' pooled features (concatenated in member order)."""
    from pipeline.ml.runtime import quiet_tensorflow

    quiet_tensorflow()
    import keras

    from pipeline.ml.stacking import load_features

    rerun = "re-run `python -m pipeline predict EXP --data DIR --out OUT --force` (predict wrote it)"
    x = np.concatenate([load_features(f, image_ids, rerun) for f in feature_files], axis=1)
    model = keras.models.load_model(model_path, safe_mode=True)
    return model.predict(x, verbose=0)[:, 1]


def image_scores(source: Path | str, files: list[Path | str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions, rejects) of a few single files, scored in a throwaway experiment: the same code as ``run_predict``."""
    import tempfile

    files = [Path(f) for f in files]
    for f in files:
        if not f.is_file():
            raise PipelineError(f"--image {f} is not a file")
    problems = {f: check_png(f) for f in files}
    if all(isinstance(p, str) for p in problems.values()):  # name the user's file, not the throwaway folder
        f, why = next(iter(problems.items()))
        raise PipelineError(f"--image {f}: {why}{'' if len(files) == 1 else f' (and {len(files) - 1} more, none readable)'}")
    with tempfile.TemporaryDirectory(prefix="histocompare-predict-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for n, f in enumerate(files):  # one sub-folder per file: two files of the same name stay apart (and are reported)
            (folder / f"{n:04d}").mkdir()  # copied, not linked: train and the dashboard refuse links leading out of a root
            shutil.copyfile(f, folder / f"{n:04d}" / f.name)
        preds = run_predict(source, folder, Path(tmp) / "exp", evaluate=False)
        rejects = read_parquet(Catalog(Path(tmp) / "exp").rejects)
    return preds, rejects


def print_image_scores(source: Path | str, files: list[Path | str]) -> pd.DataFrame:
    """Print each model's P(malignant) and each ensemble's decision per image (``predict EXP --image FILE ...``)."""
    preds, rejects = image_scores(source, files)
    for _, row in rejects.iterrows():
        print(f"skipped {Path(row['path']).name}: {row['reason']}")
    for image_id, rows in preds.groupby("image_id", sort=True):
        print(f"{image_id}:")
        for _, r in rows.iterrows():
            decision = "malignant" if r["pred"] == 1 else "benign"
            if r["kind"] == "single":
                print(f"  {r['run_id']:<40} P(malignant) {r['prob_malignant']:.4f}  {decision}")
            else:
                print(f"  {r['run_id']:<40} score {r['prob_malignant']:.4f}  {decision}")
    return preds
