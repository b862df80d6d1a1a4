""""Is the best ensemble better than the best single model?": the Overview's answer, by the paired test the A/B
comparison already uses (patient-bootstrap CI of the accuracy difference and McNemar's test on the same images).

Ties for "best" are broken by a declared rule (higher ROC AUC, then lower Brier score, then the display order), and
the tied runs are named; every single run counts, stain-normalized ones included (their stain is in the name).
The study's number is labelled with its protocol and data, and marked as not comparable when this experiment differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

TIE_RULE = "ties broken by higher ROC AUC, then lower Brier score"
STUDY_PROTOCOL = "image-level split, real BreakHis, ImageNet weights"


def pick_best(table: pd.DataFrame, ids: list[str], order: list[str]) -> tuple[str | None, list[str]]:
    """(winner, every run tied with it on accuracy) among ``ids`` in the ``group_type == all`` rows ``table``;
    the tie is broken by :data:`TIE_RULE`, then by the position in ``order``."""
    part = table[table["run_id"].isin(ids)].dropna(subset=["accuracy"])
    if part.empty:
        return None, []
    top = part[np.isclose(part["accuracy"], part["accuracy"].max(), rtol=0, atol=1e-12)].copy()
    rank = {r: i for i, r in enumerate(order)}
    top["_auc"] = top["roc_auc"].fillna(-1) if "roc_auc" in top else -1
    top["_brier"] = top["brier"].fillna(np.inf) if "brier" in top else 0
    top["_order"] = top["run_id"].map(lambda r: rank.get(r, len(rank)))
    top = top.sort_values(["_auc", "_brier", "_order"], ascending=[False, True, True])
    return str(top["run_id"].iloc[0]), top["run_id"].astype(str).tolist()


@dataclass
class Verdict:
    word: str  # "better", "no clear difference", "worse" or "not estimable"
    delta: float
    ci: tuple[float, float]
    p_value: float
    images: int


def paired_verdict(stats: dict, images: int) -> Verdict:
    """The accuracy verdict of B (the ensemble) against A (the single model) from ``dashboard.compare.ab_stats``."""
    delta = stats["b"]["accuracy"] - stats["a"]["accuracy"]
    ci = stats["ci"].get("accuracy", (float("nan"), float("nan")))
    if any(map(math.isnan, ci)) or math.isnan(delta):
        word = "not estimable"
    elif ci[0] > 0:
        word = "better"
    elif ci[1] < 0:
        word = "worse"
    else:
        word = "no clear difference"
    return Verdict(word, float(delta), (float(ci[0]), float(ci[1])), float(stats["mcnemar"]["p_value"]), images)


def study_comparable(synthetic: bool, shared_patients: int | None, config: dict | None) -> list[str]:
    """Why this experiment cannot be compared with the study's number (empty when it can)."""
    reasons = []
    if synthetic:
        reasons.append("SYNTHETIC data")
    if not shared_patients:
        reasons.append("a patient-level split")
    weights = ((config or {}).get("train") or {}).get("weights")
    if weights is not None and str(weights).lower() != "imagenet":
        reasons.append("no ImageNet weights")
    return reasons
