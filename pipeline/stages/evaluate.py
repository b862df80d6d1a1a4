"""Stage ``evaluate``: ``metrics.parquet`` for every run and ensemble, per split, with breakdowns.

Rows: one per (run_id, split, group_type, group). ``group_type`` is ``all`` (with patient-bootstrap 95%
CIs in ``<metric>_lo``/``<metric>_hi`` and the patient recognition rate), ``magnification`` or ``subtype``.

Every ``all`` row also carries what an accuracy must be read against (issue 13): the ``majority_accuracy`` of
that split, the decision ``threshold`` (0.5, or chosen on validation and applied to test), patient-level
diagnosis (``patient_*`` with CIs: a patient's score is the mean of its images' scores) and the area under the
risk-coverage curve (``aurc``). Hard-vote ensembles score a *vote share*, not a probability: their
``score_type`` says so and their Brier score and ECE are NaN (n/a) rather than a calibration number that
means nothing.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import Catalog, is_run_id, parse_run_id
from pipeline.artifacts.entries import Inputs
from pipeline.artifacts.io import read_json, read_parquet, write_json, write_parquet
from pipeline.artifacts.predictions import load_predictions, merge_predictions
from pipeline.artifacts.schemas import check_frame
from pipeline.artifacts.stamps import Stamp, up_to_date
from pipeline.config import EvaluateConfig
from pipeline.core.decision import aurc, certainty_from_members, certainty_from_score, majority_accuracy, threshold_from_validation
from pipeline.core.errors import PipelineError
from pipeline.core.ensemble import takes_validation_threshold
from pipeline.core.metrics import CI_METRICS, METRIC_NAMES, binary_metrics, bootstrap_ci, fold_summary, patient_recognition_rate
from pipeline.core.patients import PATIENT_METRICS, patient_metrics, patient_table
from pipeline.core.neighbours import with_neighbour_rate
from pipeline.stages.declarations import declared_inputs

EVALUATE_VERSION = 2
NOT_CALIBRATION = ("brier", "ece", "brier_lo", "brier_hi")  # n/a for a vote share
MEMBER_THRESHOLD = 0.5  # each member's own vote, as the ensemble stage casts it


def score_type(kind: str, model: str) -> str:
    """``vote_share`` for hard-vote ensembles (their score is a share of votes), else ``probability``."""
    return "vote_share" if kind == "ensemble" and not takes_validation_threshold(model) else "probability"


def choose_thresholds(preds: pd.DataFrame, threshold: float | str) -> dict[str, tuple[float, str]]:
    """{run_id: (threshold, source)}: the configured number, or the one maximising Youden's J on that run's val rows.

    Test never informs the choice. A run whose validation rows hold one class (or none) keeps 0.5, and says so.
    """
    runs = [str(r) for r in pd.unique(preds["run_id"])]
    if threshold != "validation":
        return {r: (float(threshold), "config") for r in runs}
    out = {}
    val = preds[preds["split"] == "val"]
    for run in runs:
        part = val[val["run_id"] == run]
        try:
            out[run] = (threshold_from_validation(part["label"].to_numpy(), part["prob_malignant"].to_numpy()), "validation")
        except PipelineError:
            out[run] = (0.5, "0.5: validation lacks a class")
    return out


def _member_probs(preds: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{split: images x single runs} probability table, to find an ensemble's members' own votes."""
    singles = preds[preds["kind"] == "single"].drop_duplicates(["run_id", "split", "image_id"])
    return {split: part.pivot(index="image_id", columns="run_id", values="prob_malignant")
            for split, part in singles.groupby("split")}


def _certainty(run_id: str, part: pd.DataFrame, score: np.ndarray, pred: np.ndarray, threshold: float,
               members: dict[str, pd.DataFrame]) -> tuple[np.ndarray, str]:
    """Member agreement for an ensemble whose members' rows are all present, else distance from the threshold."""
    table = members.get(str(part["split"].iloc[0]))
    if part["kind"].iloc[0] == "ensemble" and table is not None and is_run_id(run_id):
        names = list(parse_run_id(run_id).members)
        if names and set(names) <= set(table.columns) and set(part["image_id"]) <= set(table.index):
            probs = table.loc[part["image_id"].to_numpy(), names].to_numpy(dtype=float).T
            if not np.isnan(probs).any():
                return certainty_from_members(probs, pred, MEMBER_THRESHOLD), "member_agreement"
    return certainty_from_score(score, threshold), "distance_from_threshold"


def evaluate_predictions(preds: pd.DataFrame, cfg: EvaluateConfig = EvaluateConfig(), seed: int = 0) -> pd.DataFrame:
    """Metrics of every (run, split).

    Decisions: with a numeric ``cfg.threshold`` a probability row is malignant when its score is >= it, and a
    hard-vote row keeps the decision the ensemble stage wrote (majority of votes, its tie rule; recorded as 0.5).
    With ``"validation"`` every probability run's threshold is chosen on its val rows and applied to val and test
    alike; a hard vote still keeps its own decision (source ``majority vote``), the builder's rule too.
    """
    thresholds = choose_thresholds(preds, cfg.threshold)
    members = _member_probs(preds)
    rows = []
    for (run_id, split), part in preds.groupby(["run_id", "split"], sort=True):
        y, prob = part["label"].to_numpy(), part["prob_malignant"].to_numpy(dtype=float)
        kind, model = part["kind"].iloc[0], part["model"].iloc[0]
        stype = score_type(kind, model)
        threshold, source = thresholds[str(run_id)]
        if stype == "vote_share":  # the one rule (core.ensemble.takes_validation_threshold): a hard vote keeps its majority
            pred, threshold = part["pred"].to_numpy().astype(int), 0.5  # decision and tie rule, in both threshold modes
            source = "majority vote" if cfg.threshold == "validation" else source
        else:
            pred = (prob >= threshold).astype(int)
        part = part.assign(pred=pred)
        head = {"run_id": run_id, "split": split, "kind": kind, "model": model,
                "family": part["family"].iloc[0], "stain": part["stain"].iloc[0], "score_type": stype}
        overall = {**head, "group_type": "all", "group": "all", **binary_metrics(y, prob, pred, ece_bins=cfg.ece_bins)}
        overall["patient_recognition_rate"] = patient_recognition_rate(part["patient_id"], pred == y)
        overall["patients"] = int(part["patient_id"].nunique())
        ci = bootstrap_ci(y, prob, pred, part["patient_num"].to_numpy(), cfg.bootstrap, seed, cfg.ci)
        for metric in CI_METRICS:
            overall[f"{metric}_lo"], overall[f"{metric}_hi"] = ci[metric]
        overall.update({"majority_accuracy": majority_accuracy(y), "threshold": float(threshold), "threshold_source": source})
        table = patient_table(part["patient_id"].to_numpy(), y, prob, pred, threshold)
        overall["patient_majority_accuracy"] = majority_accuracy(table["label"].to_numpy())
        patients = patient_metrics(table, "mean", cfg.bootstrap, seed, cfg.ci)
        for metric in PATIENT_METRICS:
            for suffix in ("", "_lo", "_hi"):
                overall[f"patient_{metric}{suffix}"] = patients[f"{metric}{suffix}"]
        certainty, rule = _certainty(str(run_id), part, prob, pred, threshold, members)
        overall["aurc"], overall["certainty"] = aurc(pred == y, certainty), rule
        rows.append(_not_calibration(overall, stype))
        for group_type in ("magnification", "subtype"):
            for group, sub in part.groupby(group_type, sort=True):
                m = binary_metrics(sub["label"].to_numpy(), sub["prob_malignant"].to_numpy(), sub["pred"].to_numpy(),
                                   ece_bins=cfg.ece_bins)
                rows.append(_not_calibration({**head, "group_type": group_type, "group": str(group), **m}, stype))
    return pd.DataFrame(rows)


def _not_calibration(row: dict, stype: str) -> dict:
    """A vote share is not a probability: its Brier score and ECE are n/a (NaN), not numbers to compare."""
    if stype == "vote_share":
        row.update({k: float("nan") for k in NOT_CALIBRATION if k in row})
    return row


def evaluate_body(preds: pd.DataFrame, manifest: pd.DataFrame | None, neighbour_summary: pd.DataFrame | None,
                  cfg: EvaluateConfig = EvaluateConfig(), seed: int = 0) -> pd.DataFrame:
    """The stage on loaded data: metrics of the prediction rows (patients and groups from ``manifest`` when the rows
    lack them), with the neighbour recognition rate of ``neighbour_summary`` when there is one."""
    if "patient_id" not in preds:
        if manifest is None:
            raise PipelineError("the prediction rows carry no patient_id and no manifest was given")
        preds = preds.merge(manifest[["image_id", "patient_id", "patient_num", "magnification", "subtype"]],
                            on="image_id", how="left")
    return with_neighbour_rate(evaluate_predictions(preds, cfg, seed), neighbour_summary)


def run_evaluate(exp_dir: Path | str, cfg: EvaluateConfig = EvaluateConfig(), seed: int = 0, force: bool = False,
                 inputs: Inputs | None = None) -> pd.DataFrame:
    """metrics.parquet of every run and ensemble; skipped when the predictions and settings are unchanged.

    ``inputs``: the experiment's loaded inputs (the runner's); a fresh one by default."""
    exp_dir = Path(exp_dir)
    catalog = Catalog(exp_dir)
    start = time.perf_counter()
    merge_predictions(exp_dir)
    stamp = Stamp(catalog, "evaluate", {"version": EVALUATE_VERSION, "settings": dataclasses.asdict(cfg), "seed": seed},
                  inputs=declared_inputs("evaluate", catalog))
    if not force and stamp.is_current():
        metrics = read_parquet(catalog.metrics)
        up_to_date("evaluate", f"{metrics['run_id'].nunique()} runs and ensembles")
        return metrics
    preds = load_predictions(exp_dir)
    if preds.empty:
        raise PipelineError(f"no predictions in {exp_dir}; run `python -m pipeline train {exp_dir} --model ...` first")
    inputs = inputs or Inputs(exp_dir)
    manifest = None if "patient_id" in preds else inputs.manifest()
    summary = read_parquet(catalog.neighbour_summary) if catalog.neighbour_summary.exists() else None  # the neighbours stage
    metrics = evaluate_body(preds, manifest, summary, cfg, seed)
    inputs.save("metrics", metrics)  # checked against its schema before it replaces the old one
    write_json({"bootstrap": cfg.bootstrap, "ci": cfg.ci, "ece_bins": cfg.ece_bins, "threshold": cfg.threshold, "seed": seed,
                "seconds": round(time.perf_counter() - start, 2)}, catalog.metrics_info)
    stamp.record([catalog.metrics, catalog.metrics_info])
    table = metrics[(metrics["group_type"] == "all") & (metrics["split"] == "test")]
    cols = ["run_id", "accuracy", "accuracy_lo", "accuracy_hi", "majority_accuracy", "roc_auc", "patient_accuracy", "aurc"]
    print(table[cols].round(3).to_string(index=False))
    return metrics


def _recorded_fold(record: object, path: Path, default: int) -> int:
    """The fold a ``pipeline_run.json`` says its experiment trained on (``default`` when it says nothing)."""
    if not isinstance(record, dict):
        raise PipelineError(f"{path} is not a record that `run` writes; delete it or re-run the experiment")
    split = (record.get("config") or {}).get("split") if isinstance(record.get("config"), dict) else None
    fold = split.get("fold", default) if isinstance(split, dict) else default
    if not isinstance(fold, int) or isinstance(fold, bool):
        raise PipelineError(f"{path} records fold {fold!r}, not a fold number; delete it or re-run the experiment")
    return fold


def summarize_folds(exp_dirs: list[Path | str], out: Path | str) -> pd.DataFrame:
    """Mean +- sd of every metric across experiments that differ only in the fold they trained on.

    The BreakHis protocol repeats a patient split (``split.folds``): ``run`` with ``split.fold = "all"`` trains one
    experiment per fold and calls this (or set ``split.fold`` in copies of the preset and summarise them here).
    """
    frames = []
    target = Path(out).resolve()
    for d in exp_dirs:  # validate, then act: the summary must never replace one of its own inputs
        if Path(d).resolve() == target or Path(d).resolve() in target.parents:
            raise PipelineError(f"--out {out} is inside the input experiment {d}; write the summary next to the experiments")
    for i, d in enumerate(exp_dirs):
        catalog = Catalog(d)
        if not catalog.metrics.exists():
            raise PipelineError(f"{catalog.metrics} is missing; run `python -m pipeline evaluate {d}` first")
        run = read_json(catalog.pipeline_run) if catalog.pipeline_run.exists() else {}
        fold = _recorded_fold(run, catalog.pipeline_run, i)
        m = check_frame("metrics", read_parquet(catalog.metrics), catalog.metrics, d)
        frames.append(m[m["group_type"] == "all"].assign(fold=fold, experiment=catalog.name))
    allm = pd.concat(frames, ignore_index=True)
    if allm["fold"].nunique() < len(exp_dirs):
        raise PipelineError("two experiments trained on the same fold; give one experiment per fold")
    extra = ["majority_accuracy", "patient_accuracy", "patient_roc_auc", "aurc", "threshold"]
    summary = fold_summary(allm, value_cols=[c for c in METRIC_NAMES + extra if c in allm])
    write_parquet(summary, out)
    return summary
