"""The patient leak as one number: how much an image-level split inflates a metric, paired run by run.

Why: comparing two experiments model by model gives a table of differences that point different ways; the question a
researcher asks ("how much does the image-level split inflate accuracy?") wants one number with an interval. The
number here is the mean, over every run both experiments share, of (metric under the image-level split − metric
under the patient-level split). Runs pair by their *canonical identity* (the rule and the member set for an
ensemble; ``soft-best`` of members X is ``soft`` of X), never by a display name, which depends on what else an
experiment trained.

Two splits of one dataset test on different images. A difference measured on different test sets mixes the leak
with the test sets' difficulty, so the headline is computed on the images both experiments tested (the common
subset), with a patient-bootstrap CI (one resample of patients scores every run of both experiments: paired).
When the common subset is too small, the difference is still given for the full test sets but marked not comparable.
Pure numpy/pandas: the dashboard and the tests compute it with the same code.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.core.metrics import binary_metrics, patient_resamples, resampled_metrics

LEAK_METRICS = ("accuracy", "balanced_accuracy", "roc_auc")
BEST_SUFFIX = "-best"


def canonical_identity(run_id: str) -> str:
    """What a run computes, independent of how it is named: a single run is its id; an ensemble is its rule
    (``soft-best`` -> ``soft``: the validation-best subset is soft voting of those members) and its sorted members."""
    text = str(run_id)
    if not text.startswith("ensemble:"):
        return text
    _, method, members = text.split(":", 2)
    if method.endswith(BEST_SUFFIX):
        method = method[: -len(BEST_SUFFIX)]
    return f"ensemble:{method}:{'+'.join(sorted(members.split('+')))}"


def shared_runs(image_level: list[str], patient_level: list[str]) -> list[tuple[str, str]]:
    """(image-level run, patient-level run) pairs with the same canonical identity, in the image-level order."""
    by_identity = {canonical_identity(r): r for r in patient_level}
    return [(r, by_identity[canonical_identity(r)]) for r in image_level if canonical_identity(r) in by_identity]


@dataclass
class LeakDifference:
    """The headline: per metric the mean paired difference (image-level − patient-level) and its 95% CI."""

    pairs: list[tuple[str, str]]
    comparable: bool
    common_images: int
    common_patients: int
    images: tuple[int, int]  # test images of the image-level and the patient-level experiment
    estimate: dict[str, float] = field(default_factory=dict)  # on the common subset (NaN when not comparable)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    full_estimate: dict[str, float] = field(default_factory=dict)  # on each experiment's full test set (no CI)
    per_run: pd.DataFrame | None = None  # one row per pair: the common-subset difference of every metric


def _frame_of(preds: pd.DataFrame, run: str) -> pd.DataFrame:
    return preds[preds["run_id"] == run].drop_duplicates("image_id").set_index("image_id")


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def leak_difference(image_level: pd.DataFrame, patient_level: pd.DataFrame, metrics: tuple[str, ...] = LEAK_METRICS,
                    n_boot: int = 1000, seed: int = 0, min_images: int = 10, min_patients: int = 2,
                    ci: float = 0.95) -> LeakDifference:
    """The mean paired difference of ``metrics`` between two experiments' predictions of one split.

    Each frame: ``run_id``, ``image_id``, ``label``, ``prob_malignant``, ``pred``, ``patient_num``. The common subset is
    the images that every shared run predicted in both experiments; it is comparable when it has at least
    ``min_images`` images from ``min_patients`` patients. The CI resamples the common subset's patients once per
    bootstrap draw and scores every run of both experiments on that draw.
    """
    pairs = shared_runs([str(r) for r in pd.unique(image_level["run_id"])], [str(r) for r in pd.unique(patient_level["run_id"])])
    n_img = image_level["image_id"].nunique()
    n_pat = patient_level["image_id"].nunique()
    out = LeakDifference(pairs, False, 0, 0, (int(n_img), int(n_pat)))
    if not pairs:
        out.estimate = {m: float("nan") for m in metrics}
        out.full_estimate = dict(out.estimate)
        out.ci = {m: (float("nan"), float("nan")) for m in metrics}
        return out
    frames = [(_frame_of(image_level, a), _frame_of(patient_level, b)) for a, b in pairs]
    full = {m: [] for m in metrics}
    for fa, fb in frames:
        ma = binary_metrics(fa["label"], fa["prob_malignant"], fa["pred"])
        mb = binary_metrics(fb["label"], fb["prob_malignant"], fb["pred"])
        for m in metrics:
            full[m].append(ma[m] - mb[m])
    out.full_estimate = {m: _mean(v) for m, v in full.items()}
    common = None
    for fa, fb in frames:
        both = fa.index.intersection(fb.index)
        common = both if common is None else common.intersection(both)
    common = common.sort_values()
    first = frames[0][0].loc[common]
    out.common_images = int(len(common))
    out.common_patients = int(first["patient_num"].nunique()) if len(common) else 0
    out.comparable = out.common_images >= min_images and out.common_patients >= min_patients
    if not out.comparable:
        out.estimate = {m: float("nan") for m in metrics}
        out.ci = {m: (float("nan"), float("nan")) for m in metrics}
        return out
    y = first["label"].to_numpy().astype(int)
    samples = patient_resamples(first["patient_num"].to_numpy(), n_boot, seed)
    point = {m: [] for m in metrics}
    draws = {m: [] for m in metrics}
    rows = []
    for (a, b), (fa, fb) in zip(pairs, frames):
        sa, sb = fa.loc[common], fb.loc[common]
        ma = binary_metrics(y, sa["prob_malignant"], sa["pred"])
        mb = binary_metrics(y, sb["prob_malignant"], sb["pred"])
        ra = resampled_metrics(y, sa["prob_malignant"].to_numpy(), sa["pred"].to_numpy(), samples)
        rb = resampled_metrics(y, sb["prob_malignant"].to_numpy(), sb["pred"].to_numpy(), samples)
        row = {"image_level_run": a, "patient_level_run": b}
        for m in metrics:
            point[m].append(ma[m] - mb[m])
            draws[m].append(ra[m] - rb[m])
            row[m] = ma[m] - mb[m]
        rows.append(row)
    out.per_run = pd.DataFrame(rows)
    alpha = (1 - ci) / 2
    for m in metrics:
        out.estimate[m] = _mean(point[m])
        with warnings.catch_warnings():  # a metric undefined in every draw (AUC with one class) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_draws = np.nanmean(np.vstack(draws[m]), axis=0)  # mean over runs, per draw
            lo, hi = np.nanquantile(mean_draws, alpha), np.nanquantile(mean_draws, 1 - alpha)
        out.ci[m] = (float(lo), float(hi))
    return out


def neighbour_rate(metrics: pd.DataFrame, split: str, runs: list[str] | None = None) -> float:
    """The experiment's same-patient-neighbour rate on ``split``: the mean, over its single runs (optionally only
    ``runs``), of the share of images whose nearest training image is of the same patient (the leak, measured
    directly; 0 under a patient-level split). NaN when the neighbours stage has not run."""
    if metrics is None or "same_patient_neighbour_rate" not in metrics:
        return float("nan")
    part = metrics[(metrics["group_type"] == "all") & (metrics["split"] == split)]
    if runs is not None:
        part = part[part["run_id"].isin(runs)]
    values = part["same_patient_neighbour_rate"].dropna()
    return float(values.mean()) if len(values) else float("nan")
