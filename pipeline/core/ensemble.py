"""Ensemble rules as pure, vectorised numpy functions, shared by the pipeline and the dashboard.

Conventions: ``probs`` is a (members x images) matrix of P(malignant); a prediction is malignant when
the score is >= ``threshold``. Everything here is deterministic and free of TensorFlow and Streamlit,
so the dashboard's live member toggle re-scores in well under a millisecond per subset.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from pipeline.core.errors import PipelineError

METHODS = ("soft", "hard", "weighted")
VOTE_SHARE_METHODS = ("hard", "hard-best")  # ensembles whose score is the share of malignant member votes


def takes_validation_threshold(method: str) -> bool:
    """Whether a threshold chosen on validation may replace an ensemble's decision rule.

    The one rule, shared by ``evaluate`` (both threshold modes) and the builder: a hard vote's decision is the
    majority of its members' votes with its tie rule; its score is a vote share (a few levels), and thresholding
    that share would silently drop the tie rule, so a hard vote always keeps its own decision. Every other
    ensemble (soft, weighted, stacking) and every single model scores a probability, which a threshold decides.
    """
    return method not in VOTE_SHARE_METHODS


@dataclass(frozen=True)
class EnsembleResult:
    score: np.ndarray  # soft/weighted: mean probability; hard: fraction of malignant votes
    pred: np.ndarray  # 0/1


def _check(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise PipelineError(f"ensemble needs a (members x images) matrix with at least one member, got shape {probs.shape}")
    if np.isnan(probs).any():
        raise PipelineError("ensemble input has missing probabilities (a member lacks some images)")
    return probs


def soft_vote(probs: np.ndarray, threshold: float = 0.5) -> EnsembleResult:
    """Mean of members' probabilities, then threshold."""
    mean = _check(probs).mean(axis=0)
    return EnsembleResult(mean, (mean >= threshold).astype(np.int8))


def hard_vote(probs: np.ndarray, threshold: float = 0.5, tie_break: str = "mean_prob") -> EnsembleResult:
    """Majority of member predictions.

    Ties (possible with an even member count) go to the mean probability by default. ``tie_break="benign"``
    reproduces the study, which took ``scipy.stats.mode`` of the votes: on a tie mode returns the smallest
    value, i.e. benign (0).
    """
    probs = _check(probs)
    votes = (probs >= threshold).sum(axis=0)
    m = probs.shape[0]
    pred = (2 * votes > m).astype(np.int8)
    tie = 2 * votes == m
    if tie.any():
        if tie_break == "mean_prob":
            pred[tie] = (probs[:, tie].mean(axis=0) >= threshold).astype(np.int8)
        elif tie_break == "benign":
            pred[tie] = 0
        else:
            raise PipelineError(f"unknown tie_break {tie_break!r} (mean_prob or benign)")
    return EnsembleResult(votes / m, pred)


def weighted_vote(probs: np.ndarray, weights: np.ndarray, threshold: float = 0.5) -> EnsembleResult:
    """Weighted mean of probabilities (weights fitted on validation only, see :func:`fit_weights`)."""
    probs = _check(probs)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (probs.shape[0],) or (w < 0).any() or w.sum() <= 0:
        raise PipelineError(f"weights must be {probs.shape[0]} non-negative numbers with a positive sum")
    score = (w / w.sum()) @ probs
    return EnsembleResult(score, (score >= threshold).astype(np.int8))


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_weights(val_probs: np.ndarray, val_labels: np.ndarray) -> np.ndarray:
    """Simplex weights minimising validation log-loss (softmax parametrisation, L-BFGS). Never fit on test."""
    probs = _check(val_probs)
    y = np.asarray(val_labels, dtype=np.float64)
    m = probs.shape[0]
    if m == 1:
        return np.ones(1)

    def loss(theta):
        w = np.exp(theta - theta.max())
        return log_loss(y, (w / w.sum()) @ probs)

    result = minimize(loss, np.zeros(m), method="L-BFGS-B")
    w = np.exp(result.x - result.x.max())
    return w / w.sum()


def combine(probs: np.ndarray, method: str, threshold: float = 0.5, tie_break: str = "mean_prob",
            weights: np.ndarray | None = None) -> EnsembleResult:
    """Dispatch by method name (the dashboard's toggle calls this)."""
    if method == "soft":
        return soft_vote(probs, threshold)
    if method == "hard":
        return hard_vote(probs, threshold, tie_break)
    if method == "weighted":
        if weights is None:
            raise PipelineError("weighted voting needs weights fitted on the validation split")
        return weighted_vote(probs, weights, threshold)
    raise PipelineError(f"unknown ensemble method {method!r} (soft, hard, weighted)")


def all_subsets(n_members: int, min_size: int = 1) -> np.ndarray:
    """Boolean (subsets x members) membership matrix of every subset with at least ``min_size`` members."""
    rows = [mask for k in range(min_size, n_members + 1) for mask in itertools.combinations(range(n_members), k)]
    out = np.zeros((len(rows), n_members), dtype=bool)
    for i, idx in enumerate(rows):
        out[i, list(idx)] = True
    return out


def subset_accuracies(probs: np.ndarray, labels: np.ndarray, masks: np.ndarray, method: str,
                      threshold: float = 0.5, tie_break: str = "mean_prob") -> np.ndarray:
    """Accuracy of every subset in ``masks`` at once (matrix products; ~1k subsets x 8k images in ms)."""
    probs = _check(probs)
    y = np.asarray(labels).astype(bool)
    sizes = masks.sum(axis=1, keepdims=True).astype(np.float64)
    m = masks.astype(np.float64)
    if method == "soft":
        pred = (m @ probs) / sizes >= threshold
    elif method == "hard":
        votes = m @ (probs >= threshold).astype(np.float64)
        pred = 2 * votes > sizes
        tie = 2 * votes == sizes
        if tie_break == "mean_prob":
            pred = np.where(tie, (m @ probs) / sizes >= threshold, pred)
    else:
        raise PipelineError(f"subset search supports soft and hard voting, not {method!r}")
    return (pred == y[None, :]).mean(axis=1)


def subset_search(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray, test_labels: np.ndarray,
                  members: list[str], methods=("soft", "hard"), threshold: float = 0.5,
                  tie_break: str = "mean_prob") -> pd.DataFrame:
    """Every subset x method scored on val and test; ranked on validation only (test shown alongside).

    Ranking: val accuracy, then val log-loss of the soft mean (a tie-breaker that rewards confident,
    correct ensembles), then fewer members.
    """
    masks = all_subsets(len(members))
    sizes = masks.sum(axis=1)
    soft_val = (masks.astype(float) @ _check(val_probs)) / sizes[:, None]
    eps = 1e-7
    yv = np.asarray(val_labels, dtype=float)
    val_ll = -np.mean(yv * np.log(np.clip(soft_val, eps, 1)) + (1 - yv) * np.log(np.clip(1 - soft_val, eps, 1)), axis=1)
    frames = []
    for method in methods:
        frames.append(pd.DataFrame({
            "method": method, "members": ["+".join(np.asarray(members)[mk]) for mk in masks], "n_members": sizes,
            "val_accuracy": subset_accuracies(val_probs, val_labels, masks, method, threshold, tie_break),
            "test_accuracy": subset_accuracies(test_probs, test_labels, masks, method, threshold, tie_break),
            "val_log_loss": val_ll,
        }))
    out = pd.concat(frames, ignore_index=True)
    out = out.sort_values(["method", "val_accuracy", "val_log_loss", "n_members"], ascending=[True, False, True, True])
    out["val_rank"] = out.groupby("method").cumcount() + 1
    return out.reset_index(drop=True)


def agreement_matrix(preds: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Fraction of images on which each pair of members predicts the same class."""
    p = np.asarray(preds)
    agree = (p[:, None, :] == p[None, :, :]).mean(axis=2)
    return pd.DataFrame(agree, index=names, columns=names)
