"""Decision rules around a score: the majority baseline, a threshold chosen on validation, and referral.

Why these belong next to every accuracy:
* **Majority baseline**: on BreakHis about 69% of images are malignant, so a model that calls everything
  malignant scores ~0.69 accuracy. An accuracy means little until it is read against that number.
* **Threshold from validation**: a model can rank perfectly (ROC AUC 1.0) and still be wrong at 0.5. A
  threshold chosen on validation (never on test) separates "ranks badly" from "is miscalibrated". The default
  stays 0.5, the study's rule.
* **Referral (risk-coverage)**: a screening tool may refer its least certain cases to a pathologist. The
  risk-coverage curve gives the error rate on the cases it keeps, for every referral rate; its area (AURC)
  summarises it (lower is better). Certainty is the distance of the score from the threshold for a single
  model, and member agreement for an ensemble.

Conventions as in :mod:`pipeline.core.metrics`: malignant (1) is positive, a case is malignant when its score
is >= the threshold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError

THRESHOLD_RULES = ("youden",)


def majority_accuracy(y: np.ndarray) -> float:
    """Accuracy of always predicting the more frequent class of ``y`` (NaN for no images)."""
    y = np.asarray(y).astype(int)
    if len(y) == 0:
        return float("nan")
    share = y.mean()
    return float(max(share, 1 - share))


def threshold_from_validation(y: np.ndarray, score: np.ndarray, rule: str = "youden") -> float:
    """The threshold that maximises Youden's J (sensitivity + specificity - 1) on validation.

    Maximising J is the same as maximising balanced accuracy ((sens + spec) / 2 = (J + 1) / 2), so this one
    rule serves both names. Candidates are the midpoints between consecutive distinct scores (and one point
    beyond each end), so a chosen threshold sits between validation cases rather than on one; among equally
    good thresholds the one closest to 0.5 (the study's rule) wins.
    """
    if rule not in THRESHOLD_RULES:
        raise PipelineError(f"unknown threshold rule {rule!r} (choose one of {', '.join(THRESHOLD_RULES)})")
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=float)
    if len(y) != len(score):
        raise PipelineError(f"{len(y)} labels but {len(score)} scores")
    if y.all() or (~y).all():
        raise PipelineError("a validation threshold needs both classes in the validation split")
    levels = np.unique(score)
    candidates = np.concatenate([[levels[0] - 1e-6], (levels[:-1] + levels[1:]) / 2, [levels[-1] + 1e-6]])
    pred = score[None, :] >= candidates[:, None]
    sens = (pred & y).sum(1) / y.sum()
    spec = (~pred & ~y).sum(1) / (~y).sum()
    j = sens + spec - 1
    best = np.flatnonzero(np.isclose(j, j.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def certainty_from_score(score: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """A single model's certainty: the distance of its score from the decision threshold."""
    return np.abs(np.asarray(score, dtype=float) - threshold)


def certainty_from_members(member_probs: np.ndarray, decision: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """An ensemble's certainty: the share of members whose own vote agrees with the ensemble's decision.

    Ties in agreement (few members give few levels) are ordered by the members' mean distance from the
    threshold, scaled below one agreement step so it never overrides agreement.
    """
    probs = np.asarray(member_probs, dtype=float)
    if probs.ndim != 2:
        raise PipelineError(f"member probabilities must be (members x images), got shape {probs.shape}")
    votes = probs >= threshold
    agree = (votes == np.asarray(decision).astype(bool)[None, :]).mean(axis=0)
    margin = np.abs(probs.mean(axis=0) - threshold)  # in [0, 1]
    return agree + margin / (2 * probs.shape[0] + 1)


def risk_coverage(correct: np.ndarray, certainty: np.ndarray) -> pd.DataFrame:
    """The risk-coverage curve: keep the most certain cases first; one point per distinct certainty level.

    Cases of equal certainty enter together (no arbitrary order among ties). Columns: ``coverage`` (share of
    cases kept), ``risk`` (error rate among the kept cases), ``accuracy`` (1 - risk), ``kept``, ``errors``.
    """
    correct = np.asarray(correct).astype(bool)
    certainty = np.asarray(certainty, dtype=float)
    n = len(correct)
    if n == 0:
        return pd.DataFrame(columns=["coverage", "risk", "accuracy", "kept", "errors"])
    frame = pd.DataFrame({"certainty": certainty, "error": ~correct})
    levels = frame.groupby("certainty", sort=True)["error"].agg(["size", "sum"]).iloc[::-1]
    kept = levels["size"].cumsum().to_numpy()
    errors = levels["sum"].cumsum().to_numpy()
    risk = errors / kept
    return pd.DataFrame({"coverage": kept / n, "risk": risk, "accuracy": 1 - risk, "kept": kept, "errors": errors})


def aurc(correct: np.ndarray, certainty: np.ndarray) -> float:
    """Area under the risk-coverage curve: the risk at each level weighted by the coverage it adds.

    Without ties this is the mean over k of the error rate among the k most certain cases. Lower is better; a
    model whose certainty says nothing about its errors has AURC equal to its error rate.
    """
    curve = risk_coverage(correct, certainty)
    if curve.empty:
        return float("nan")
    added = np.diff(np.concatenate([[0.0], curve["coverage"].to_numpy()]))
    return float((added * curve["risk"].to_numpy()).sum())


def refer_least_certain(certainty: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ``fraction`` least certain cases (the ones referred to a pathologist).

    Exactly ``round(fraction * n)`` cases are referred; among equally certain cases the earlier index is kept.
    """
    if not 0 <= fraction <= 1:
        raise PipelineError(f"referral fraction must be between 0 and 1, got {fraction}")
    certainty = np.asarray(certainty, dtype=float)
    n_refer = int(round(fraction * len(certainty)))
    order = np.lexsort((-np.arange(len(certainty)), certainty))  # least certain first; ties: later index first
    mask = np.zeros(len(certainty), dtype=bool)
    mask[order[:n_refer]] = True
    return mask


# -- what a shown interval means ---------------------------------------------------------------------------------
CI_PATIENT = "patient-bootstrap 95% CI"
CI_IMAGE = "image-level CI (no patient ids)"
INVERTED = "ranks benign above malignant: inverted"
INVERTED_MEANING = ("An ROC AUC whose whole 95% CI lies below 0.5 is worse than chance in a consistent direction: the "
                    "model learned a feature that separated its training patients (stain, scanner, one patient's look) "
                    "rather than tissue, and that feature runs the other way on these patients. Flipping the score would "
                    "not fix it; more patients, stain normalization or pretrained weights usually do.")


def ci_label(unit: str) -> str:
    """How to name a bootstrap CI: resampling patients, or images when the images carry no patient ids (an external
    flat folder without a ``patient`` column), where "patient CI" would overstate what was resampled."""
    return CI_IMAGE if unit == "image" else CI_PATIENT


def auc_inverted(hi: float | None) -> bool:
    """True when an ROC AUC's 95% CI lies wholly below 0.5 (``hi`` its upper bound): the ranking is reliably inverted."""
    try:
        return bool(np.isfinite(hi) and hi < 0.5)
    except TypeError:
        return False
