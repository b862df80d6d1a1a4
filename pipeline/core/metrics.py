"""Classification metrics, patient-level bootstrap CIs and McNemar's test: pure numpy/scipy/sklearn.

Malignant is the positive class (as in the study). Point estimates use scikit-learn; the bootstrap uses
equivalent vectorised numpy versions because it evaluates thousands of resamples. Confidence intervals
resample *patients*, not images: images of one patient are strongly correlated, and resampling images
would make the intervals far too narrow.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

METRIC_NAMES = ["accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "roc_auc", "pr_auc",
                "brier", "ece"]
CI_METRICS = ["accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "roc_auc", "brier"]


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def confusion_counts(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    return {"tp": int((y & pred).sum()), "fn": int((y & ~pred).sum()), "fp": int((~y & pred).sum()), "tn": int((~y & ~pred).sum())}


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> float:
    """Binary ECE: |observed malignant rate - mean predicted probability|, weighted over equal-width bins."""
    y, prob = np.asarray(y, dtype=float), np.asarray(prob, dtype=float)
    if len(y) == 0:
        return float("nan")
    idx = np.minimum((prob * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(y[sel].mean() - prob[sel].mean())
    return float(total)


def binary_metrics(y: np.ndarray, prob: np.ndarray, pred: np.ndarray | None = None, threshold: float = 0.5,
                   ece_bins: int = 10) -> dict[str, float]:
    """Every metric of the study plus calibration, for one set of predictions."""
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=float)
    pred = (prob >= threshold).astype(int) if pred is None else np.asarray(pred).astype(int)
    c = confusion_counts(y, pred)
    precision = _safe_div(c["tp"], c["tp"] + c["fp"])
    recall = _safe_div(c["tp"], c["tp"] + c["fn"])
    specificity = _safe_div(c["tn"], c["tn"] + c["fp"])
    both = len(np.unique(y)) == 2
    out = {
        "n": int(len(y)),
        "accuracy": _safe_div(c["tp"] + c["tn"], len(y)),
        "precision": precision, "recall": recall, "specificity": specificity,
        "f1": _safe_div(2 * precision * recall, precision + recall) if not math.isnan(precision + recall) else float("nan"),
        "balanced_accuracy": (recall + specificity) / 2,
        "roc_auc": float(roc_auc_score(y, prob)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, prob)) if both else float("nan"),
        "brier": float(np.mean((prob - y) ** 2)) if len(y) else float("nan"),
        "ece": expected_calibration_error(y, prob, ece_bins),
    }
    out.update(c)
    return out


def patient_recognition_rate(patient: np.ndarray, correct: np.ndarray) -> float:
    """BreakHis's patient-level score: mean over patients of each patient's image accuracy."""
    frame = pd.DataFrame({"patient": np.asarray(patient), "correct": np.asarray(correct, dtype=float)})
    return float(frame.groupby("patient")["correct"].mean().mean()) if len(frame) else float("nan")


def _fast_metrics(y: np.ndarray, prob: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """CI_METRICS for a batch of resamples: y/prob/pred are (B, n) arrays (numpy only, rank-based AUC)."""
    y = y.astype(bool)
    pred = pred.astype(bool)
    tp = (y & pred).sum(1).astype(float)
    fn = (y & ~pred).sum(1).astype(float)
    fp = (~y & pred).sum(1).astype(float)
    tn = (~y & ~pred).sum(1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ranks = stats.rankdata(prob, axis=1)
        n_pos, n_neg = y.sum(1), (~y).sum(1)
        auc = ((ranks * y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return _from_counts(tp, fn, fp, tn, auc, ((prob - y) ** 2).sum(1))


def _from_counts(tp: np.ndarray, fn: np.ndarray, fp: np.ndarray, tn: np.ndarray, auc: np.ndarray,
                 squared: np.ndarray) -> np.ndarray:
    """CI_METRICS from each resample's confusion counts, ROC AUC and sum of squared errors: the one place where the
    three bootstrap paths (gathered resamples, image weights, per-patient sums) turn their sums into the metrics,
    so they cannot drift apart (a count with no denominator gives NaN, as the reported metrics do)."""
    total = tp + fn + fp + tn
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = tp / (tp + fp)
        rec = tp / (tp + fn)
        spec = tn / (tn + fp)
        f1 = 2 * prec * rec / (prec + rec)
        return np.stack([(tp + tn) / total, prec, rec, spec, f1, (rec + spec) / 2, auc, squared / total], axis=1)


def resampled_metrics(y: np.ndarray, prob: np.ndarray, pred: np.ndarray, samples: np.ndarray) -> dict[str, np.ndarray]:
    """Every CI_METRICS entry on each resample: ``samples`` is an (B, n) array of image indices (e.g. from
    :func:`patient_resamples`), so two runs scored on the same ``samples`` are paired. Returns metric -> (B,) array."""
    values = _fast_metrics(np.asarray(y)[samples], np.asarray(prob, dtype=float)[samples], np.asarray(pred)[samples])
    return {m: values[:, i] for i, m in enumerate(CI_METRICS)}


def patient_resamples(groups: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) image indices drawn by whole patients (see :func:`bootstrap_ci`)."""
    return _patient_resamples(np.asarray(groups), n_boot, seed)


def bootstrap_ci(y: np.ndarray, prob: np.ndarray, pred: np.ndarray, groups: np.ndarray, n_boot: int = 1000,
                 seed: int = 0, ci: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile CIs for CI_METRICS by resampling ``groups`` (patients) with replacement.

    Resamples are re-weighted to the original image count by drawing images through their patients,
    so every resample is a plausible test set. Deterministic for a given seed.
    """
    y, prob, pred, groups = map(np.asarray, (y, prob, pred, groups))
    if len(y) == 0 or n_boot <= 0:
        return {m: (float("nan"), float("nan")) for m in CI_METRICS}
    return _quantile_ci(_patient_metrics(_patient_draws(groups, n_boot, seed), y, prob, pred), ci)


class _Draws(NamedTuple):
    """A patient bootstrap's draws (see ``_patient_draws``)."""

    codes: np.ndarray  # patient code of every image
    order: np.ndarray  # images sorted by patient (stable: in image order within a patient)
    start: np.ndarray  # where each patient's images start in ``order``
    whole: np.ndarray  # (n_boot, patients): times each resample takes the patient whole
    part_group: np.ndarray  # (n_boot,): the patient a resample takes only the first images of
    part_take: np.ndarray  # (n_boot,): how many of them


def _patient_resamples(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) image indices: whole patients drawn with replacement until n images, then trimmed."""
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(groups)
    members = [np.flatnonzero(codes == g) for g in range(len(uniques))]
    n = len(groups)
    samples = np.empty((n_boot, n), dtype=np.int64)
    for b in range(n_boot):  # concatenate whole patients until n images, then trim (keeps sizes equal)
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])
        while len(idx) < n:
            idx = np.concatenate([idx, members[rng.integers(0, len(members))]])
        samples[b] = idx[:n]
    return samples


def _patient_draws(groups: np.ndarray, n_boot: int, seed: int) -> _Draws:
    """The draws of ``_patient_resamples`` (the same random stream), kept per patient: how many times each resample
    takes each patient whole, and the one patient it takes only the first images of (to reach n images exactly)."""
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(groups)
    n, n_groups = len(groups), len(uniques)
    sizes = np.bincount(codes, minlength=n_groups)
    order = np.argsort(codes, kind="stable")  # images of patient g: order[start[g]:start[g] + sizes[g]], in image order
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    whole = np.zeros((n_boot, n_groups))
    part_group = np.zeros(n_boot, dtype=np.int64)
    part_take = np.zeros(n_boot, dtype=np.int64)
    for b in range(n_boot):  # the same calls, so the same stream, as _patient_resamples
        draws = rng.integers(0, n_groups, size=n_groups)
        total = int(sizes[draws].sum())
        if total < n:
            extra = []
            while total < n:
                extra.append(int(rng.integers(0, n_groups)))
                total += int(sizes[extra[-1]])
            draws = np.concatenate([draws, extra])
        cum = np.cumsum(sizes[draws])
        last = int(np.searchsorted(cum, n))  # the draw in which the n-th image falls
        whole[b] = np.bincount(draws[:last], minlength=n_groups)
        part_group[b], part_take[b] = draws[last], n - (int(cum[last - 1]) if last else 0)
    return _Draws(codes, order, start, whole, part_group, part_take)


def _resample_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) float: how many times each image is in each resample of ``_patient_resamples`` (the same draws)."""
    d = _patient_draws(np.asarray(groups), n_boot, seed)
    w = d.whole[:, d.codes]
    for b, (g, take) in enumerate(zip(d.part_group, d.part_take)):
        w[b, d.order[d.start[g] : d.start[g] + take]] += 1.0
    return w


def _patient_metrics(d: _Draws, y: np.ndarray, prob: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """CI_METRICS of every resample of ``d``: the same numbers as ``_weighted_metrics(_resample_weights(...))`` and as
    ``_fast_metrics`` of the gathered resamples, from per-patient sums and one integer pass over the scores.

    Why: at ten times BreakHis the dashboard's A/B comparison (1,000 resamples of ~12,000 test images) spent seconds
    on n_boot x n weight matrices (issue 26). A resample is ``whole`` patients plus a prefix of one patient's images,
    so every count is a per-patient count times ``whole`` plus a prefix sum (O(n_boot x patients)); the AUC's
    Mann-Whitney numerator needs each image's weight in score order (one integer n_boot x n gather and cumulative
    sum, no float gathers of resampled arrays, no per-resample sort). Counts and the AUC numerator are integers (or
    halves), so they are exact; only the Brier sum may differ from the weighted sum in the last bits."""
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    prob = np.asarray(prob, dtype=float)
    n, n_groups = len(y), d.whole.shape[1]
    u, lo = d.whole, d.start[d.part_group]
    hi = lo + d.part_take

    def total(values: np.ndarray) -> np.ndarray:  # sum of ``values`` over each resample's images
        prefix = np.concatenate([[0.0], np.cumsum(values[d.order])])
        return u @ np.bincount(d.codes, weights=values, minlength=n_groups) + (prefix[hi] - prefix[lo])

    tp, fn = total((y & pred).astype(float)), total((y & ~pred).astype(float))
    fp, tn = total((~y & pred).astype(float)), total((~y & ~pred).astype(float))
    n_pos, n_neg = total(y.astype(float)), total((~y).astype(float))
    squared = total((prob - y) ** 2)
    # AUC: the weights of the positives and of the negatives in score order (whole patients gathered, the prefix
    # added), one cumulative sum of the negatives' weights; a positive earns the negatives below its score plus half of
    # those tied with it. Integer weights and doubled credit: exact, like the rank-based AUC of the gathered arrays.
    by_score = np.argsort(prob, kind="stable")
    sorted_prob, sorted_y = prob[by_score], y[by_score]
    pos_cols, neg_cols = by_score[sorted_y], by_score[~sorted_y]  # images, in score order
    weights = np.ascontiguousarray(u.T, dtype=np.int32)  # patients x resamples: gathers and sums take whole rows
    w_pos, w_neg = weights[d.codes[pos_cols]], weights[d.codes[neg_cols]]  # images x resamples
    slot = np.empty(n, dtype=np.int64)  # each image's column in w_pos or w_neg
    slot[pos_cols], slot[neg_cols] = np.arange(len(pos_cols)), np.arange(len(neg_cols))
    rows = np.repeat(np.arange(len(lo)), hi - lo)  # every (resample, prefix image) pair, each image once per resample
    images = d.order[np.repeat(lo - np.concatenate([[0], np.cumsum(hi - lo)[:-1]]), hi - lo) + np.arange(len(rows))]
    positive = y[images]
    w_pos[slot[images[positive]], rows[positive]] += 1
    w_neg[slot[images[~positive]], rows[~positive]] += 1
    below_neg = np.zeros((len(neg_cols) + 1, len(lo)), dtype=np.int32)  # row k: weight of the first k negatives
    for k, row in enumerate(w_neg):  # row by row: numpy's cumsum along axis 0 is ~10x slower here
        np.add(below_neg[k], row, out=below_neg[k + 1])
    neg_prob = sorted_prob[~sorted_y]
    pos_prob = sorted_prob[sorted_y]
    strictly = np.searchsorted(neg_prob, pos_prob, side="left")  # negatives scored below each positive
    up_to = np.searchsorted(neg_prob, pos_prob, side="right")  # ... or tied with it
    credit = below_neg[strictly]
    if not np.array_equal(strictly, up_to):  # ties: 2 x (below + half the tied) = below + (below + tied)
        credit += below_neg[up_to]
    else:
        credit *= 2
    np.multiply(credit, w_pos, out=credit)
    auc_sum = credit.sum(axis=0, dtype=np.float64) / 2  # exact below 2**53
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = auc_sum / (n_pos * n_neg)
    return _from_counts(tp, fn, fp, tn, auc, squared)


def _weighted_metrics(w: np.ndarray, y: np.ndarray, prob: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """CI_METRICS of every resample given as image multiplicities ``w`` (n_boot x n); equals ``_fast_metrics`` of the
    resampled arrays (the AUC is the Mann-Whitney statistic with half credit for ties, as average ranks give)."""
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    prob = np.asarray(prob, dtype=float)
    tp, fn = w @ (y & pred).astype(float), w @ (y & ~pred).astype(float)
    fp, tn = w @ (~y & pred).astype(float), w @ (~y & ~pred).astype(float)
    order = np.argsort(prob, kind="stable")
    sorted_prob = prob[order]
    ties = np.diff(sorted_prob) == 0
    ws = w[:, order]
    pos, neg = ws * y[order], ws * ~y[order]
    if ties.any():  # one group per distinct score: a tied pair counts one half
        starts = np.concatenate([[0], np.flatnonzero(~ties) + 1])
        pos, neg = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(neg, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))
    return _from_counts(tp, fn, fp, tn, auc, w @ (prob - y) ** 2)


def _quantile_ci(values: np.ndarray, ci: float) -> dict[str, tuple[float, float]]:
    alpha = (1 - ci) / 2
    with warnings.catch_warnings():  # a metric undefined in every resample (e.g. AUC with one class) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanquantile(values, alpha, axis=0)
        hi = np.nanquantile(values, 1 - alpha, axis=0)
    return {m: (float(lo[i]), float(hi[i])) for i, m in enumerate(CI_METRICS)}


def paired_bootstrap_deltas(y: np.ndarray, prob_a: np.ndarray, pred_a: np.ndarray, prob_b: np.ndarray, pred_b: np.ndarray,
                            groups: np.ndarray, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, tuple[float, float]]:
    """CIs of metric(B) - metric(A) for every CI_METRICS entry, both runs scored on the same patient resamples.

    Pairing matters: the two runs saw the same images, so their errors are correlated and the CI of the
    difference is much narrower than the two separate CIs suggest. Used to judge accuracy, AUC and
    calibration (Brier) together when comparing two runs.
    """
    y, prob_a, pred_a, prob_b, pred_b, groups = map(np.asarray, (y, prob_a, pred_a, prob_b, pred_b, groups))
    if len(y) == 0 or n_boot <= 0:
        return {m: (float("nan"), float("nan")) for m in CI_METRICS}
    d = _patient_draws(groups, n_boot, seed)
    return _quantile_ci(_patient_metrics(d, y, prob_b, pred_b) - _patient_metrics(d, y, prob_a, pred_a), ci)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's test on paired correctness: exact binomial when discordant pairs < 25, else chi2 with continuity."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("McNemar needs the same images for both runs")
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return {"only_a": 0, "only_b": 0, "statistic": 0.0, "p_value": 1.0, "method": "exact"}
    if n < 25:
        p = stats.binomtest(min(only_a, only_b), n, 0.5).pvalue
        return {"only_a": only_a, "only_b": only_b, "statistic": float(min(only_a, only_b)), "p_value": float(min(p, 1.0)),
                "method": "exact"}
    stat = (abs(only_a - only_b) - 1) ** 2 / n
    return {"only_a": only_a, "only_b": only_b, "statistic": float(stat), "p_value": float(stats.chi2.sf(stat, 1)),
            "method": "chi2"}


def fold_summary(metrics: pd.DataFrame, by=("run_id", "split"), value_cols=None) -> pd.DataFrame:
    """Mean and sd across folds/repeats (rows with a ``fold`` column) of the patient protocol."""
    value_cols = value_cols or [c for c in METRIC_NAMES if c in metrics]
    grouped = metrics.groupby(list(by))[value_cols]
    mean, sd = grouped.mean().add_suffix("_mean"), grouped.std(ddof=1).add_suffix("_sd")
    return mean.join(sd).join(grouped.size().rename("folds")).reset_index()


def reliability_curve(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """The reliability diagram behind :func:`expected_calibration_error`: per equal-width bin of predicted
    P(malignant), the mean prediction, the observed malignant rate and the image count (empty bins omitted).

    Only for probabilities: a hard vote's vote share is not a calibrated probability, so callers say "n/a"
    for hard-vote rows instead of drawing this.
    """
    y, prob = np.asarray(y, dtype=float), np.asarray(prob, dtype=float)
    idx = np.minimum((prob * bins).astype(int), bins - 1)
    frame = pd.DataFrame({"bin": idx, "y": y, "prob": prob})
    out = frame.groupby("bin").agg(mean_prob=("prob", "mean"), observed=("y", "mean"), images=("y", "size")).reset_index()
    out["bin_lo"], out["bin_hi"] = out["bin"] / bins, (out["bin"] + 1) / bins
    return out[["bin_lo", "bin_hi", "mean_prob", "observed", "images"]]
