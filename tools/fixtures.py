"""Synthetic artifact folders for the dashboard's tests, screenshots and benchmark (no training, no TensorFlow).

:func:`build` writes a complete experiment: 72 tiny BreakHis-shaped PNGs (every subtype; one patient code filed
under two subtypes, as BreakHis has), predictions of all ten backbones (two of them tied for best) plus a
Vahadane twin, every ensemble the pipeline writes (soft, hard, weighted and stacking for V1, V2 and all ten, the
validation-best subsets), metrics, subsets, ``ensembles.json``, histories, Grad-CAM maps and a stain cache.
Everything goes through the pipeline's own writers and pure functions, so the fixture follows the real contract.

:func:`build_hostile` writes an experiment whose artifacts attack the dashboard: Markdown and HTML in run ids,
image ids and metadata, a stain key and manifest paths that point outside, a data root that is not a folder,
and secret files next to it that no page may open.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import read_json, write_json, write_parquet
from pipeline.artifacts.predictions import ensemble_rows, make_rows, member_groups, member_runs, probability_matrix, stacking_rows
from pipeline.config import EvaluateConfig
from pipeline.core.breakhis import ParsedName
from pipeline.core.ensemble import fit_weights, subset_search
from pipeline.core.neighbours import neighbour_table, with_neighbour_rate
from pipeline.core.projection import project_2d
from pipeline.stages.evaluate import evaluate_predictions
from pipeline.stages.index import run_index

# Target accuracy of each synthetic member; v2_b1 copies v1_b0's predictions (a tie for the best single model).
MEMBERS = {"v1_b0": 0.85, "v1_b1": 0.70, "v1_b2": 0.66, "v1_b3": 0.75, "v1_b4": 0.62,
           "v2_b0": 0.74, "v2_b1": None, "v2_b2": 0.70, "v2_b3": 0.64, "v2_s": 0.60}
# (subtype, label, patient code): every subtype, and code 1004 filed under both DC and LC.
PATIENTS = [("A", 0, "1000"), ("F", 0, "1001"), ("PT", 0, "1002"), ("TA", 0, "1003"), ("DC", 1, "1004"), ("LC", 1, "1005"),
            ("MC", 1, "1006"), ("PC", 1, "1007"), ("LC", 1, "1004")]
STAIN_KEY = "0123456789"


def _write_images(data: Path, rng: np.random.Generator, patients=PATIENTS, per_magnification: int = 2) -> None:
    breast = data / "BreaKHis_v1" / "histology_slides" / "breast"
    for subtype, label, code in patients:
        for mag in (40, 100, 200, 400):
            for seq in range(1, per_magnification + 1):
                name = ParsedName(label=label, subtype=subtype, year="14", patient_id=code, patient_num=int(code),
                                  magnification=mag, seq=seq)
                folder = breast / name.relative_dir()
                folder.mkdir(parents=True, exist_ok=True)
                base = (205, 125, 195) if label == 0 else (125, 62, 165)
                pixels = np.clip(np.full((46, 70, 3), base) + rng.integers(-25, 25, (46, 70, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / name.file_name())
    (data / "SYNTHETIC").write_text("dashboard fixture\n")


def _member_probs(rng: np.random.Generator, y: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for run, acc in MEMBERS.items():
        if acc is None:
            continue
        correct = rng.random(len(y)) < acc
        out[run] = np.where(correct == (y == 1), rng.uniform(0.55, 0.97, len(y)), rng.uniform(0.03, 0.45, len(y)))
    out["v2_b1"] = out["v1_b0"].copy()
    return out


def build(root: Path, seed: int = 0) -> Path:
    """Create ``root/data`` (the images) and ``root/artifacts/fixture`` (the experiment); return the experiment."""
    rng = np.random.default_rng(seed)
    data, exp = root / "data", root / "artifacts" / "fixture"
    _write_images(data, rng)
    catalog = Catalog(exp)
    manifest, _ = run_index(data, exp, synthetic=True)
    ids = manifest.sort_values("image_id").image_id.tolist()
    split = pd.DataFrame({"image_id": ids, "split": ["val" if i % 2 else "test" for i in range(len(ids))], "fold": 0})
    write_parquet(split, catalog.split)
    frame = manifest.merge(split, on="image_id").sort_values("image_id").reset_index(drop=True)
    y = frame.label.to_numpy()
    probs = _member_probs(rng, y)
    rows = []
    for run, prob in probs.items():
        rows.append(make_rows(run, "single", run, run[:2], "none", frame, prob))
        hist = pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.7, 0.5, 0.4], "accuracy": [0.6, 0.7, 0.8], "val_loss": [0.7, 0.6, 0.65],
                             "val_accuracy": [0.55, 0.7, 0.68], "lr_backbone": 1e-3, "lr_head": 1e-3, "seconds": [20.0, 2.0, 2.0],
                             "images_per_s": [5.0, 50.0, 50.0]})
        write_parquet(hist, catalog.run(run).history)
        write_json({"run_id": run, "best_epoch": 2, "best_val_accuracy": 0.7, "status": "complete"}, catalog.run(run).info)
    stained = np.clip(probs["v1_b0"] + rng.normal(0, 0.35, len(y)), 0, 1)
    rows.append(make_rows("v1_b0-vahadane", "single", "efficientnet_b0", "v1", "vahadane", frame, stained))
    preds = pd.concat(rows, ignore_index=True)
    members = member_runs(preds)
    rows, record = [preds], {"members": members, "groups": {}, "weights": {}, "stacking": {},
                             "config": {"threshold": 0.5, "hard_tie_break": "mean_prob"}}
    val_p, val_meta = probability_matrix(preds, members, "val")
    test_p, test_meta = probability_matrix(preds, members, "test")
    for group, names in member_groups(members).items():
        idx = [members.index(n) for n in names]
        record["groups"][group] = names
        weights = fit_weights(val_p[idx], val_meta["label"].to_numpy())
        record["weights"][group] = dict(zip(names, np.round(weights, 4).tolist()))
        # Stacking stand-in: the pipeline's meta-model is Keras; its rows (val = an inner hold-out) are what the dashboard reads.
        hold = np.sort(rng.choice(len(val_meta), size=len(val_meta) // 5 * 2, replace=False))
        record["stacking"][group] = {"best_epoch": 7, "val_used_for_fit": True, "holdout_images": int(len(hold))}
        for p, meta in ((val_p[:, hold], val_meta.iloc[hold].reset_index(drop=True)), (test_p, test_meta)):
            score = np.clip(p[idx].mean(axis=0) + rng.normal(0, 0.08, p.shape[1]), 0, 1)
            rows.append(stacking_rows(names, group, meta, score, record))
    subsets = subset_search(val_p, val_meta["label"].to_numpy(), test_p, test_meta["label"].to_numpy(), members)
    write_parquet(subsets, catalog.subsets)
    for method in ("soft", "hard"):
        best = subsets[(subsets["method"] == method) & (subsets["n_members"] >= 2)].iloc[0]
        record[f"best_{method}_subset"] = {"members": best["members"].split("+"), "val_accuracy": float(best["val_accuracy"]),
                                           "test_accuracy": float(best["test_accuracy"])}
    # The voting ensembles' rows come from the ensemble stage's own function, so a drift there fails dashboard tests.
    rows += ensemble_rows(record, preds, "val") + ensemble_rows(record, preds, "test")
    preds = pd.concat(rows, ignore_index=True)
    write_parquet(preds, catalog.predictions)
    write_json(record, catalog.ensembles)
    summary = _write_neighbours(catalog, frame, members, rng)
    write_parquet(with_neighbour_rate(evaluate_predictions(preds, EvaluateConfig(bootstrap=50)), summary), catalog.metrics)
    _write_gradcam(catalog, frame, members, rng)
    _write_stain_cache(catalog, manifest, data, rng)
    return exp


def _write_neighbours(catalog: Catalog, frame: pd.DataFrame, runs: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """Neighbours and 2-D maps from planted features (each patient a cluster), through the stage's pure functions.

    The fixture has no training split, so its val images stand in for the training images the test images are
    searched among; PCA maps for every run, a t-SNE map for the first (t-SNE is the slow one)."""
    codes, patients = np.unique(frame["patient_id"].astype(str), return_inverse=True)
    centres = rng.normal(size=(len(codes), 16)) * 3
    reference = frame[["image_id", "split", "label", "patient_id"]].replace({"split": {"val": "train"}})
    tables, summaries, maps = [], [], []
    for k, run in enumerate(runs):
        feats = (centres[patients] + rng.normal(size=(len(frame), 16))).astype(np.float16)
        rows, summary = neighbour_table(run, reference, feats, k=3)
        tables.append(rows)
        summaries.append(summary)
        for method in ("pca", "tsne") if k == 0 else ("pca",):
            xy = project_2d(feats, method, seed=0)
            maps.append(pd.DataFrame({"run_id": run, "method": method, "image_id": frame["image_id"].to_numpy(),
                                      "split": frame["split"].to_numpy(), "x": xy[:, 0], "y": xy[:, 1]}))
    summary = pd.concat(summaries, ignore_index=True)
    write_parquet(pd.concat(tables, ignore_index=True), catalog.neighbours)
    write_parquet(summary, catalog.neighbour_summary)
    write_parquet(pd.concat(maps, ignore_index=True), catalog.embedding)
    return summary


def _write_gradcam(catalog: Catalog, frame: pd.DataFrame, runs: list[str], rng: np.random.Generator) -> None:
    """Maps for the test images of every member (a bright blob, so overlays are visibly not noise)."""
    test_ids = frame.loc[frame.split == "test", "image_id"].to_numpy().astype(str)
    catalog.gradcam_dir("gradcam").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:8, 0:8]
    score_rows = []
    for run in runs:
        centres = rng.uniform(1, 7, (len(test_ids), 2))
        maps = np.exp(-((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2) / 6)
        np.savez_compressed(catalog.gradcam_maps("gradcam", run), image_id=test_ids, maps=(maps * 255).astype(np.uint8))
        score_rows.append(pd.DataFrame({"method": "gradcam", "run_id": run, "image_id": test_ids, "target_class": 1,
                                        "prob_target": 0.6, "deletion_auc": 0.4, "mean_iou": 0.3}))
    write_parquet(pd.concat(score_rows, ignore_index=True), catalog.gradcam_scores("gradcam"))


def _write_stain_cache(catalog: Catalog, manifest: pd.DataFrame, data: Path, rng: np.random.Generator) -> None:
    """A Vahadane stain cache in the stage's layout: ``stain/vahadane/<key>/<relative path>`` plus target.json."""
    root = catalog.stain_images("vahadane", STAIN_KEY)
    for rel in manifest["path"]:
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(data / rel) as img:
            shifted = np.clip(np.asarray(img.convert("RGB")).astype(int) + (10, -15, 5), 0, 255).astype(np.uint8)
        Image.fromarray(shifted).save(out)
    train_like = manifest.sort_values("image_id")["image_id"].iloc[0]
    write_json({"key": STAIN_KEY, "target_image_id": train_like, "rule": "fixture", "method": "vahadane"},
               catalog.stain_target("vahadane"))


HOSTILE_RUN = "v1_b1![r](http://127.0.0.1:9/x.png)"
HOSTILE_IMAGE = "SOB_M_DC-14-9999-40-001<img src=x onerror=alert(1)>"
HOSTILE_PATIENT = "[click](http://127.0.0.1:9/p)"


def build_hostile(root: Path) -> Path:
    """An experiment (``root/artifacts/hostile``, a doctored copy of :func:`build`'s) that attacks the dashboard.

    Next to it lie ``root/secret/secret.png`` and ``root/outside.png``: a page that opens either has followed a
    hostile path. The data root stays ``root/data``; one manifest path climbs out of it and one is absolute; the stain
    target's key is ``../../../secret``; run ids, image ids, patient ids and subtypes carry Markdown and HTML.
    """
    source = root / "artifacts" / "fixture"
    if not source.is_dir():
        build(root)
    hostile = root / "artifacts" / "hostile"
    shutil.copytree(source, hostile)
    catalog = Catalog(hostile)
    secret = root / "secret"
    secret.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(secret / "secret.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "outside.png")
    # Manifest: one path climbs out, one is absolute, one image id and patient id carry Markdown/HTML.
    manifest = pd.read_parquet(catalog.manifest)
    manifest.loc[0, "path"] = "../secret/secret.png"
    manifest.loc[1, "path"] = str(root / "outside.png")
    old_image, old_patient = manifest.loc[2, "image_id"], manifest.loc[2, "patient_id"]
    manifest.loc[2, "image_id"] = HOSTILE_IMAGE
    manifest.loc[manifest["patient_id"] == old_patient, "patient_id"] = HOSTILE_PATIENT
    write_parquet(manifest, catalog.manifest)
    preds = pd.read_parquet(catalog.predictions)
    preds.loc[preds["image_id"] == old_image, "image_id"] = HOSTILE_IMAGE
    preds.loc[preds["patient_id"] == old_patient, "patient_id"] = HOSTILE_PATIENT
    preds.loc[preds["run_id"] == "v1_b1", "run_id"] = HOSTILE_RUN  # a run id the pipeline would never write
    preds.loc[preds["subtype"] == "PC", "subtype"] = "**PC**<b>x</b>"
    write_parquet(preds, catalog.predictions)
    metrics = pd.read_parquet(catalog.metrics)
    metrics.loc[metrics["run_id"] == "v1_b1", "run_id"] = HOSTILE_RUN
    write_parquet(metrics, catalog.metrics)
    split = pd.read_parquet(catalog.split)
    split.loc[split["image_id"] == old_image, "image_id"] = HOSTILE_IMAGE
    write_parquet(split, catalog.split)
    # The stain target's key is a path out of the experiment.
    target = catalog.stain_target("vahadane")
    write_json({"key": "../../../secret", "target_image_id": HOSTILE_IMAGE, "rule": "![t](http://127.0.0.1:9/t.png)"}, target)
    return hostile


def build_external(root: Path, labels: bool = True) -> Path:
    """What ``predict`` writes for the fixture's test images given back as new data: ``root/artifacts/fixture_external``
    (with labels) or ``fixture_external_unlabelled`` (label -1, no metrics). Every image is in split ``external``."""
    source = root / "artifacts" / "fixture"
    if not source.is_dir():
        build(root)
    exp = root / "artifacts" / ("fixture_external" if labels else "fixture_external_unlabelled")
    src, catalog = Catalog(source), Catalog(exp)
    preds = pd.read_parquet(src.predictions)
    rows = preds[preds["split"] == "test"].assign(split="external")
    manifest = pd.read_parquet(src.manifest)
    manifest = manifest[manifest["image_id"].isin(set(rows["image_id"]))].reset_index(drop=True)
    if not labels:
        manifest = manifest.assign(label=np.int8(-1), class_name="unknown")
        rows = rows.assign(label=np.int8(-1))
    write_parquet(manifest, catalog.manifest)
    write_parquet(pd.DataFrame({"path": [], "reason": []}), catalog.rejects)
    write_parquet(pd.DataFrame({"image_id": manifest["image_id"], "split": "external", "fold": 0}), catalog.split)
    write_parquet(rows.reset_index(drop=True), catalog.predictions)
    dataset = read_json(src.dataset)
    write_json({**dataset, "images": len(manifest), "rejects": 0,
                "external": {"source_experiment": str(source.resolve()), "source_name": "fixture", "layout": "breakhis",
                             "labels": labels, "labels_file": None}}, catalog.dataset)
    record = read_json(src.ensembles)
    write_json({**record, "external": {"source_experiment": str(source.resolve()), "refitted": False}}, catalog.ensembles)
    for run in src.run_ids_on_disk():
        if src.run(run).history.exists():
            write_parquet(pd.read_parquet(src.run(run).history), catalog.run(run).history)
    if labels:
        write_parquet(evaluate_predictions(rows, EvaluateConfig(bootstrap=50)), catalog.metrics)
    return exp


def tiny_preset(name: str, data: Path | str, out: Path | str, split: str = 'mode = "patient"', train: str | None = "",
                body: str = "") -> str:
    """A preset for the smallest pipeline a test or benchmark runs end to end: 12 SYNTHETIC patients x 4 images (seed 3)
    and, unless ``train`` is None, one epoch at 32 px from scratch, eager (no graph tracing: half the time of such tiny
    runs, the same pipeline). ``split`` and ``train`` are lines added to their sections; ``body`` is the rest of the
    preset (``[[runs]]``, ``[ensemble]``, ...). One place, so the five presets built on it differ only where they mean to."""
    head = f"""[experiment]
name = "{name}"
data_root = "{data}"
out_dir = "{out}"
synthetic = true
demo_patients = 12
demo_images_per_patient = 4
seed = 3

[split]
{split}
"""
    if train is None:
        return f"{head}\n{body}"
    return f"""{head}
[train]
epochs = 1
batch_size = 8
image_size = 32
weights = "none"
freeze_batchnorm = false
run_eagerly = true
{train}

{body}"""
