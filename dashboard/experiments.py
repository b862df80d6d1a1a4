"""Experiments side by side (the compare page's numbers), as pure pandas so they are tested without Streamlit.

The question this answers: how much of an image-level split's accuracy survives when no patient is on both sides?
Each *column* of the comparison is a protocol: one experiment, or the folds of one protocol (experiments whose
recorded configs differ only in ``split.fold``), which collapse to mean ± sd across folds with every fold's value
kept for the chart. A single experiment keeps its patient-bootstrap 95% CI from ``metrics.parquet``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

COMPARED = ("accuracy", "balanced_accuracy", "roc_auc", "patient_accuracy", "patient_roc_auc")
BASELINE = {"accuracy": "majority_accuracy", "balanced_accuracy": 0.5, "roc_auc": 0.5,
            "patient_accuracy": "patient_majority_accuracy", "patient_roc_auc": 0.5}


@dataclass
class Protocol:
    """One column of the comparison: an experiment, or the fold experiments of one protocol."""

    label: str
    experiments: list[str]
    folds: list[int] = field(default_factory=list)

    @property
    def is_folds(self) -> bool:
        return len(self.experiments) > 1


def experiment_fold(config: dict | None) -> int:
    """The fold an experiment trained on, from its recorded ``pipeline_run.json`` config (0 when not recorded)."""
    try:
        return int((config or {}).get("split", {}).get("fold", 0))
    except (TypeError, ValueError, AttributeError):
        return 0


def _protocol_key(config: dict | None) -> str | None:
    """What fold experiments of one protocol share: the whole config but the experiment's name, folder and fold."""
    if not isinstance(config, dict) or not isinstance(config.get("split"), dict) or config["split"].get("folds", 1) in (None, 1):
        return None
    rest = {k: v for k, v in config.items() if k not in ("experiment", "split")}
    experiment = {k: v for k, v in (config.get("experiment") or {}).items() if k not in ("name", "out_dir")}
    split = {k: v for k, v in config["split"].items() if k != "fold"}
    return json.dumps({"experiment": experiment, "split": split, **rest}, sort_keys=True, default=str)


def protocols(chosen: list[str], configs: dict[str, dict | None]) -> list[Protocol]:
    """Group the chosen experiments: fold experiments of one protocol (same config, different folds) form one column.

    Order follows the first chosen experiment of each group. Two experiments of one protocol on the *same* fold are
    not folds of each other (a rerun, or a copy): they stay separate columns.
    """
    groups: dict[str, list[str]] = {}
    order: list[str] = []
    for name in chosen:
        key = _protocol_key(configs.get(name))
        key = name if key is None else key
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(name)
    out = []
    for key in order:
        names = groups[key]
        folds = [experiment_fold(configs.get(n)) for n in names]
        if len(names) > 1 and len(set(folds)) == len(folds):
            ranked = sorted(zip(folds, names))
            out.append(Protocol(f"{ranked[0][1]} … ({len(names)} folds)", [n for _, n in ranked], [f for f, _ in ranked]))
        else:
            out.extend(Protocol(n, [n], [f]) for n, f in zip(names, folds))
    return out


def overall_rows(metrics: pd.DataFrame, split: str) -> pd.DataFrame:
    """The ``group_type == "all"`` rows of one split, one per run, with the majority baselines filled in.

    Older metrics files lack ``majority_accuracy``: it follows from the confusion counts (larger class / images).
    """
    part = metrics[(metrics["group_type"] == "all") & (metrics["split"] == split)].drop_duplicates("run_id").copy()
    if "majority_accuracy" not in part:
        positives = part["tp"] + part["fn"]
        part["majority_accuracy"] = np.maximum(positives, part["n"] - positives) / part["n"].clip(lower=1)
    return part.set_index("run_id")


def collapse(protocol: Protocol, tables: dict[str, pd.DataFrame], metric: str) -> pd.DataFrame:
    """Per run of ``protocol``: ``value`` (the experiment's, or the mean over folds), ``lo``/``hi`` (95% CI of a
    single experiment), ``sd`` and ``folds`` (fold protocols; sd with ddof=1) and ``points`` (every fold's value)."""
    frames = [tables[n][[metric]].rename(columns={metric: n}) for n in protocol.experiments if n in tables and metric in tables[n]]
    if not frames:
        return pd.DataFrame(columns=["value", "lo", "hi", "sd", "folds", "points"])
    wide = pd.concat(frames, axis=1)
    out = pd.DataFrame(index=wide.index)
    out["value"] = wide.mean(axis=1, skipna=True)
    out["folds"] = wide.notna().sum(axis=1)
    out["sd"] = wide.std(axis=1, ddof=1) if protocol.is_folds else np.nan
    out["points"] = [[float(v) for v in row if not math.isnan(v)] for row in wide.to_numpy(dtype=float)]
    if not protocol.is_folds:
        table = tables[protocol.experiments[0]]
        out["lo"] = table[f"{metric}_lo"] if f"{metric}_lo" in table else np.nan
        out["hi"] = table[f"{metric}_hi"] if f"{metric}_hi" in table else np.nan
    else:
        out["lo"], out["hi"] = np.nan, np.nan
    return out


def value_text(row: pd.Series) -> str:
    """'0.912 (0.850–0.951)' for one experiment, '0.905 ± 0.021 (5 folds)' for a fold protocol, '' when absent."""
    if row is None or pd.isna(row.get("value")):
        return ""
    if not pd.isna(row.get("sd")) or row.get("folds", 1) > 1:
        sd = row.get("sd")
        return f"{row['value']:.3f} ± {sd:.3f} ({int(row['folds'])} folds)" if not pd.isna(sd) else f"{row['value']:.3f} (1 fold)"
    if pd.isna(row.get("lo")):
        return f"{row['value']:.3f}"
    return f"{row['value']:.3f} ({row['lo']:.3f}–{row['hi']:.3f})"


def baseline_of(protocol: Protocol, tables: dict[str, pd.DataFrame], metric: str) -> float:
    """The number ``metric`` must beat in ``protocol``: 0.5 for AUC and balanced accuracy, else the majority-class
    accuracy of the split (mean over folds); patient accuracy's baseline is the larger class's share of patients."""
    rule = BASELINE.get(metric, 0.5)
    if isinstance(rule, float):
        return rule
    values = [float(tables[n][rule].iloc[0]) for n in protocol.experiments
              if n in tables and not tables[n].empty and rule in tables[n]]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def comparison_table(protos: list[Protocol], tables: dict[str, pd.DataFrame], metric: str,
                     runs: list[str]) -> pd.DataFrame:
    """One row per run: each protocol's text, its value, Δ (each later protocol minus the first) and whether it
    fails to beat that protocol's baseline."""
    rows = {r: {"run_id": r} for r in runs}
    for i, proto in enumerate(protos):
        summary = collapse(proto, tables, metric)
        base = baseline_of(proto, tables, metric)
        for r in runs:
            row = summary.loc[r] if r in summary.index else None
            value = float(row["value"]) if row is not None and not pd.isna(row["value"]) else float("nan")
            rows[r][proto.label] = value_text(row) if row is not None else "not in this experiment"
            rows[r][f"value::{proto.label}"] = value
            rows[r][f"below::{proto.label}"] = bool(not math.isnan(value) and not math.isnan(base) and value <= base)
            if i == 0:
                continue
            ref = rows[r][f"value::{protos[0].label}"]
            rows[r][f"Δ {proto.label} − {protos[0].label}"] = value - ref
    return pd.DataFrame(list(rows.values()))


def shared_train_test_patients(manifest: pd.DataFrame, split: pd.DataFrame, fold: int = 0) -> int | None:
    """Patients (numeric id) with images in both train and test of ``fold``: the leakage the split lets through."""
    if manifest is None or split is None or "fold" not in split:
        return None
    part = split[split["fold"] == fold].merge(manifest[["image_id", "patient_num"]], on="image_id")
    if part.empty:
        return None
    train = set(part.loc[part["split"] == "train", "patient_num"])
    test = set(part.loc[part["split"] == "test", "patient_num"])
    return len(train & test)
