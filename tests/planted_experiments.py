"""Planted experiments for the compare-experiments page, shared by its AppTest and real-browser tests: an
image-level twin of the dashboard fixture whose accuracy is the fixture's + 0.05 (v2_s planted below its majority
baseline) and whose split shares three patients between train and test, three fold experiments of one protocol
with planted v1_b0 accuracies, and an experiment without metrics."""

import shutil
from pathlib import Path

import pandas as pd

from pipeline.artifacts.io import write_json

FILES = ("manifest.parquet", "dataset.json", "split.parquet", "metrics.parquet")
FOLD_ACC = (0.60, 0.70, 0.80)  # v1_b0's planted test accuracy on folds 0, 1, 2: mean 0.70, sd 0.10


def _copy(src, dst, files=FILES):
    dst.mkdir(parents=True)
    for f in files:
        shutil.copy(src / f, dst / f)
    return dst


def fold_config(name, fold, folds=3):
    return {"config": {"experiment": {"name": name, "out_dir": "", "seed": 0}, "split": {"mode": "patient", "folds": folds,
                                                                                         "fold": fold},
                       "train": {"epochs": 3}}}


def build_compare_artifacts(src: Path, root: Path) -> Path:
    """Under ``root``: patient (a copy of ``src``), imagelevel, pfold0-2 and empty (no metrics)."""
    _copy(src, root / "patient")
    image = _copy(src, root / "imagelevel")
    metrics = pd.read_parquet(image / "metrics.parquet")
    metrics["accuracy"] = metrics["accuracy"] + 0.05
    below = (metrics.run_id == "v2_s") & (metrics.group_type == "all")
    metrics.loc[below, "accuracy"] = metrics.loc[below, "majority_accuracy"] - 0.01  # planted: does not beat the baseline
    metrics.to_parquet(image / "metrics.parquet")
    manifest = pd.read_parquet(image / "manifest.parquet")
    split = pd.read_parquet(image / "split.parquet")
    for num in sorted(manifest.patient_num.unique())[:3]:  # three patients get one image moved to train
        first = manifest[manifest.patient_num == num].image_id.iloc[0]
        split.loc[split.image_id == first, "split"] = "train"
        split.loc[split.image_id.isin(manifest[manifest.patient_num == num].image_id) & (split.image_id != first), "split"] = "test"
    split.to_parquet(image / "split.parquet")
    for fold, acc in enumerate(FOLD_ACC):
        d = _copy(src, root / f"pfold{fold}")
        m = pd.read_parquet(d / "metrics.parquet")
        m.loc[m.run_id == "v1_b0", "accuracy"] = acc
        m.to_parquet(d / "metrics.parquet")
        write_json(fold_config(f"pfold{fold}", fold), d / "pipeline_run.json")
    _copy(src, root / "empty", FILES[:3])
    return root


LEAK_DROPPED_PATIENTS = 2  # the image-level twin does not test the first two test patients: different test sets


def build_leak_pair(src: Path, root: Path) -> Path:
    """Under ``root``: ``patient`` (a copy of the fixture experiment ``src``) and ``imagelevel``, its leaky twin that
    predicts every test image right (P(malignant) 0.95 or 0.05), has no predictions for the first two test patients'
    images (so the test sets differ and the headline must use the common subset), and shares three patients between
    train and test. Run ids are the same, except that the twin names its validation-best soft ensemble as plain soft
    voting of the same members (``soft-best`` -> ``soft``): it must still pair."""
    shutil.copytree(src, root / "patient")
    image = root / "imagelevel"
    shutil.copytree(src, image)
    preds = pd.read_parquet(image / "predictions.parquet")
    test = preds["split"] == "test"
    preds.loc[test, "pred"] = preds.loc[test, "label"]
    preds.loc[test, "prob_malignant"] = preds.loc[test, "label"].map({0: 0.05, 1: 0.95}).astype(preds["prob_malignant"].dtype)
    dropped = sorted(preds.loc[test, "patient_num"].unique())[:LEAK_DROPPED_PATIENTS]
    preds = preds[~(test & preds["patient_num"].isin(dropped))]
    best = preds["run_id"].str.startswith("ensemble:soft-best:")
    preds.loc[best, "run_id"] = preds.loc[best, "run_id"].str.replace("soft-best", "soft", regex=False)
    preds.to_parquet(image / "predictions.parquet")
    manifest = pd.read_parquet(image / "manifest.parquet")
    split = pd.read_parquet(image / "split.parquet")
    for num in sorted(manifest.patient_num.unique())[:3]:
        ids = manifest[manifest.patient_num == num].image_id
        split.loc[split.image_id.isin(ids), "split"] = "test"
        split.loc[split.image_id == ids.iloc[0], "split"] = "train"
    split.to_parquet(image / "split.parquet")
    return root
