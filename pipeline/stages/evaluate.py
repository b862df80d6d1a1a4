"""Stage ``evaluate``: ``metrics.parquet`` for every run and ensemble, per split, with breakdowns.

Rows: one per (run_id, split, group_type, group). ``group_type`` is ``all`` (with patient-bootstrap 95%
CIs in ``<metric>_lo``/``<metric>_hi`` and the patient recognition rate), ``magnification`` or ``subtype``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.experiment import load_manifest
from pipeline.artifacts.io import read_json, read_parquet, write_json, write_parquet
from pipeline.artifacts.predictions import load_predictions, merge_predictions
from pipeline.artifacts.stamps import Stamp, up_to_date
from pipeline.config import EvaluateConfig
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import CI_METRICS, METRIC_NAMES, binary_metrics, bootstrap_ci, fold_summary, patient_recognition_rate
from pipeline.core.neighbours import with_neighbour_rate

EVALUATE_VERSION = 1


def evaluate_predictions(preds: pd.DataFrame, cfg: EvaluateConfig = EvaluateConfig(), seed: int = 0) -> pd.DataFrame:
    """Metrics of every (run, split), from each row's own ``pred`` (the threshold was applied when it was written)."""
    rows = []
    for (run_id, split), part in preds.groupby(["run_id", "split"], sort=True):
        y, prob, pred = part["label"].to_numpy(), part["prob_malignant"].to_numpy(), part["pred"].to_numpy()
        head = {"run_id": run_id, "split": split, "kind": part["kind"].iloc[0], "model": part["model"].iloc[0],
                "family": part["family"].iloc[0], "stain": part["stain"].iloc[0]}
        overall = {**head, "group_type": "all", "group": "all", **binary_metrics(y, prob, pred, ece_bins=cfg.ece_bins)}
        overall["patient_recognition_rate"] = patient_recognition_rate(part["patient_id"], pred == y)
        overall["patients"] = int(part["patient_id"].nunique())
        ci = bootstrap_ci(y, prob, pred, part["patient_num"].to_numpy(), cfg.bootstrap, seed, cfg.ci)
        for metric in CI_METRICS:
            overall[f"{metric}_lo"], overall[f"{metric}_hi"] = ci[metric]
        rows.append(overall)
        for group_type in ("magnification", "subtype"):
            for group, sub in part.groupby(group_type, sort=True):
                m = binary_metrics(sub["label"].to_numpy(), sub["prob_malignant"].to_numpy(), sub["pred"].to_numpy(),
                                   ece_bins=cfg.ece_bins)
                rows.append({**head, "group_type": group_type, "group": str(group), **m})
    return pd.DataFrame(rows)


def run_evaluate(exp_dir: Path | str, cfg: EvaluateConfig = EvaluateConfig(), seed: int = 0, force: bool = False) -> pd.DataFrame:
    """metrics.parquet of every run and ensemble; skipped when the predictions and settings are unchanged."""
    exp_dir = Path(exp_dir)
    catalog = Catalog(exp_dir)
    start = time.perf_counter()
    merge_predictions(exp_dir)
    stamp = Stamp(catalog, "evaluate", {"version": EVALUATE_VERSION, "settings": dataclasses.asdict(cfg), "seed": seed},
                  inputs=[catalog.predictions, catalog.manifest, catalog.neighbour_summary])
    if not force and stamp.is_current():
        metrics = read_parquet(catalog.metrics)
        up_to_date("evaluate", f"{metrics['run_id'].nunique()} runs and ensembles")
        return metrics
    preds = load_predictions(exp_dir)
    if preds.empty:
        raise PipelineError(f"no predictions in {exp_dir}; run `python -m pipeline train {exp_dir} --model ...` first")
    if "patient_id" not in preds:
        preds = preds.merge(load_manifest(exp_dir)[["image_id", "patient_id", "patient_num", "magnification", "subtype"]],
                            on="image_id", how="left")
    metrics = evaluate_predictions(preds, cfg, seed)
    summary = read_parquet(catalog.neighbour_summary) if catalog.neighbour_summary.exists() else None  # the neighbours stage
    metrics = with_neighbour_rate(metrics, summary)
    write_parquet(metrics, catalog.metrics)
    write_json({"bootstrap": cfg.bootstrap, "ci": cfg.ci, "ece_bins": cfg.ece_bins, "seed": seed,
                "seconds": round(time.perf_counter() - start, 2)}, catalog.metrics_info)
    stamp.record([catalog.metrics, catalog.metrics_info])
    table = metrics[(metrics["group_type"] == "all") & (metrics["split"] == "test")]
    cols = ["run_id", "accuracy", "accuracy_lo", "accuracy_hi", "f1", "roc_auc", "patient_recognition_rate"]
    print(table[cols].round(3).to_string(index=False))
    return metrics


def summarize_folds(exp_dirs: list[Path | str], out: Path | str) -> pd.DataFrame:
    """Mean +- sd of every metric across experiments that differ only in the fold they trained on.

    The BreakHis protocol repeats a patient split (``split.folds``); train one experiment per fold (set
    ``split.fold`` in a copy of the preset), then summarise them here.
    """
    frames = []
    for i, d in enumerate(exp_dirs):
        catalog = Catalog(d)
        if not catalog.metrics.exists():
            raise PipelineError(f"{catalog.metrics} is missing; run `python -m pipeline evaluate {d}` first")
        run = read_json(catalog.pipeline_run) if catalog.pipeline_run.exists() else {}
        fold = run.get("config", {}).get("split", {}).get("fold", i)
        m = read_parquet(catalog.metrics)
        frames.append(m[m["group_type"] == "all"].assign(fold=fold, experiment=catalog.name))
    allm = pd.concat(frames, ignore_index=True)
    if allm["fold"].nunique() < len(exp_dirs):
        raise PipelineError("two experiments trained on the same fold; give one experiment per fold")
    summary = fold_summary(allm, value_cols=[c for c in METRIC_NAMES if c in allm])
    write_parquet(summary, out)
    return summary
