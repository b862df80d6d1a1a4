"""Patient-level diagnosis from image-level predictions: the unit that matters clinically.

A pathologist diagnoses a patient, not a 700x460 field of view. Each patient's images are aggregated into
one decision, by the mean of the image probabilities (``mean`` rule) or by the majority of image votes
(``vote`` rule; ties go to the mean probability), and scored with patient-level accuracy, sensitivity,
specificity and ROC AUC. Confidence intervals resample patients, which here are the independent units.
The study reported image-level numbers only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError

PATIENT_RULES = ("mean", "vote")
PATIENT_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")


def patient_table(patient: np.ndarray, label: np.ndarray, prob: np.ndarray, pred: np.ndarray,
                  threshold: float = 0.5) -> pd.DataFrame:
    """One row per patient: ``label``, ``images``, ``mean_prob``, ``vote_share`` (share of images predicted
    malignant), ``pred_mean`` (mean_prob >= threshold) and ``pred_vote`` (majority of votes; a tie goes to
    ``pred_mean``). A patient whose images carry both labels is an error: labels are per patient in BreakHis."""
    frame = pd.DataFrame({"patient": np.asarray(patient), "label": np.asarray(label).astype(int),
                          "prob": np.asarray(prob, dtype=float), "pred": np.asarray(pred).astype(int)})
    mixed = frame.groupby("patient")["label"].nunique()
    if (mixed > 1).any():
        raise PipelineError(f"patient(s) {list(mixed[mixed > 1].index)[:5]} have images of both classes")
    table = frame.groupby("patient", sort=True).agg(label=("label", "first"), images=("label", "size"),
                                                     mean_prob=("prob", "mean"), vote_share=("pred", "mean"))
    table["pred_mean"] = (table["mean_prob"] >= threshold).astype(int)
    vote = np.where(table["vote_share"] > 0.5, 1, 0)
    table["pred_vote"] = np.where(np.isclose(table["vote_share"], 0.5), table["pred_mean"], vote).astype(int)
    return table.reset_index()


def _scores(label: np.ndarray, pred: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(accuracy, sensitivity, specificity, roc_auc) for (B, n) arrays of patients (rank-based AUC)."""
    from scipy import stats

    y, p = label.astype(bool), pred.astype(bool)
    n_pos, n_neg = y.sum(1), (~y).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (y == p).mean(1)
        sens = (y & p).sum(1) / n_pos
        spec = (~y & ~p).sum(1) / n_neg
        ranks = stats.rankdata(score, axis=1)
        auc = ((ranks * y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.stack([acc, sens, spec, auc], axis=1)


def patient_metrics(table: pd.DataFrame, rule: str = "mean", n_boot: int = 1000, seed: int = 0,
                    ci: float = 0.95) -> dict[str, float]:
    """Patient-level metrics of ``table`` (from :func:`patient_table`) with percentile bootstrap CIs.

    The score ranked for AUC is the mean image probability (``mean``) or the vote share (``vote``). Keys:
    ``patients``, each of PATIENT_METRICS and ``<metric>_lo`` / ``<metric>_hi``.
    """
    if rule not in PATIENT_RULES:
        raise PipelineError(f"unknown patient rule {rule!r} (choose one of {', '.join(PATIENT_RULES)})")
    label = table["label"].to_numpy()
    pred = table["pred_mean" if rule == "mean" else "pred_vote"].to_numpy()
    score = table["mean_prob" if rule == "mean" else "vote_share"].to_numpy()
    out: dict[str, float] = {"patients": int(len(table))}
    if len(table) == 0:
        return out | {k: float("nan") for m in PATIENT_METRICS for k in (m, f"{m}_lo", f"{m}_hi")}
    point = _scores(label[None, :], pred[None, :], score[None, :])[0]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(table), size=(max(n_boot, 1), len(table)))
    boot = _scores(label[draws], pred[draws], score[draws]) if n_boot > 0 else np.full((1, 4), np.nan)
    alpha = (1 - ci) / 2
    import warnings

    with warnings.catch_warnings():  # a metric undefined in every resample (one class) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(boot, alpha, axis=0), np.nanquantile(boot, 1 - alpha, axis=0)
    for i, name in enumerate(PATIENT_METRICS):
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = float(point[i]), float(lo[i]), float(hi[i])
    return out
