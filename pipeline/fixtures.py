"""A small, fully synthetic artifact folder for the dashboard's tests and benchmark: a few tiny images, predictions of four
members (two per family) plus an ensemble and a stained twin, metrics, subsets, histories and Grad-CAM maps.
Everything is written through the pipeline's own functions, so the fixture follows the real contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import write_json, write_parquet
from pipeline.artifacts.predictions import make_rows, probability_matrix
from pipeline.config import EvaluateConfig
from pipeline.core.breakhis import ParsedName
from pipeline.core.ensemble import combine, subset_search
from pipeline.stages.evaluate import evaluate_predictions
from pipeline.stages.index import run_index

MEMBERS = {"v1_b0": 0.80, "v1_b1": 0.70, "v2_b0": 0.75, "v2_b1": 0.60}  # target accuracy of each synthetic member


def build(root: Path, seed: int = 0) -> Path:
    """Create ``root/data`` (24 tiny BreakHis-shaped PNGs) and ``root/artifacts/fixture`` (the experiment)."""
    rng = np.random.default_rng(seed)
    data, exp = root / "data", root / "artifacts" / "fixture"
    breast = data / "BreaKHis_v1" / "histology_slides" / "breast"
    subtypes = [("A", 0), ("F", 0), ("DC", 1), ("PC", 1), ("LC", 1), ("TA", 0)]
    for p, (subtype, label) in enumerate(subtypes):
        for k in range(4):
            name = ParsedName(label=label, subtype=subtype, year="14", patient_id=f"{1000 + p}", patient_num=1000 + p,
                              magnification=(40, 100, 200, 400)[k], seq=1)
            folder = breast / name.relative_dir()
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.full((46, 70, 3), (200, 120, 190) if label == 0 else (120, 60, 160), np.uint8)
            pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name.file_name())
    (data / "SYNTHETIC").write_text("dashboard fixture\n")
    catalog = Catalog(exp)
    manifest, _ = run_index(data, exp, synthetic=True)
    ids = manifest.sort_values("image_id").image_id.tolist()
    split = pd.DataFrame({"image_id": ids, "split": ["val" if i % 2 else "test" for i in range(len(ids))], "fold": 0})
    write_parquet(split, catalog.split)
    frame = manifest.merge(split, on="image_id").sort_values("image_id").reset_index(drop=True)
    y = frame.label.to_numpy()
    rows = []
    for run, acc in MEMBERS.items():
        correct = rng.random(len(y)) < acc
        prob = np.where(correct == (y == 1), rng.uniform(0.55, 0.95, len(y)), rng.uniform(0.05, 0.45, len(y)))
        rows.append(make_rows(run, "single", run, run[:2], "none", frame, prob))
        hist = pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.7, 0.5, 0.4], "accuracy": [0.6, 0.7, 0.8], "val_loss": [0.7, 0.6, 0.65],
                             "val_accuracy": [0.55, 0.7, 0.68], "lr_backbone": 1e-3, "lr_head": 1e-3, "seconds": [20.0, 2.0, 2.0],
                             "images_per_s": [5.0, 50.0, 50.0]})
        write_parquet(hist, catalog.run(run).history)
        write_json({"run_id": run, "best_epoch": 2, "best_val_accuracy": 0.7, "status": "complete"}, catalog.run(run).info)
    stained_prob = np.clip(rows[0].prob_malignant.to_numpy() + rng.normal(0, 0.3, len(y)), 0, 1)
    rows.append(make_rows("v1_b0-vahadane", "single", "efficientnet_b0", "v1", "vahadane", frame, stained_prob))
    preds = pd.concat(rows, ignore_index=True)
    members = list(MEMBERS)
    for split_name in ("val", "test"):
        p, meta = probability_matrix(preds, members, split_name)
        res = combine(p, "soft")
        preds = pd.concat([preds, make_rows("ensemble:soft:" + "+".join(members), "ensemble", "soft", "all", "none", meta,
                                            res.score, pred=res.pred)], ignore_index=True)
    write_parquet(preds, catalog.predictions)
    write_parquet(evaluate_predictions(preds, EvaluateConfig(bootstrap=50)), catalog.metrics)
    vp, vm = probability_matrix(preds, members, "val")
    tp, tm = probability_matrix(preds, members, "test")
    write_parquet(subset_search(vp, vm.label.to_numpy(), tp, tm.label.to_numpy(), members), catalog.subsets)
    # Grad-CAM cache for the test images of every member
    test_ids = frame.loc[frame.split == "test", "image_id"].to_numpy().astype(str)
    catalog.gradcam_dir("gradcam").mkdir(parents=True, exist_ok=True)
    score_rows = []
    for run in members:
        maps = (rng.random((len(test_ids), 8, 8)) * 255).astype(np.uint8)
        np.savez_compressed(catalog.gradcam_maps("gradcam", run), image_id=test_ids, maps=maps)
        score_rows.append(pd.DataFrame({"method": "gradcam", "run_id": run, "image_id": test_ids, "target_class": 1,
                                        "prob_target": 0.6, "deletion_auc": 0.4, "mean_iou": 0.3}))
    write_parquet(pd.concat(score_rows, ignore_index=True), catalog.gradcam_scores("gradcam"))
    return exp
