"""Stage ``ensemble``: soft, hard, weighted and stacking ensembles of the trained runs + subset search.

Members are the single-model runs without stain normalization (as in the study). Groups: the V1
family, the V2 family, and all members. Every ensemble's predictions are rows of ``ensemble_predictions.parquet``,
merged into predictions.parquet (``run_id`` like ``ensemble:soft:v1_b0+v1_b1``), so evaluation and the dashboard
treat them like runs.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.entries import Inputs
from pipeline.artifacts.io import atomic_path
from pipeline.artifacts.predictions import (ensemble_rows, member_groups, member_runs, merge_predictions,
                                            probability_matrix, stacking_rows)
from pipeline.artifacts.stamps import Stamp, up_to_date
from pipeline.config import EnsembleConfig
from pipeline.core.ensemble import fit_weights, subset_search
from pipeline.core.errors import PipelineError

ENSEMBLE_VERSION = 3  # 2: exact weights and stacking meta-models saved (``predict`` re-applies them); 3: inner hold-out by patient


def run_ensembles(exp_dir: Path | str, cfg: EnsembleConfig = EnsembleConfig(), seed: int = 0, force: bool = False,
                  inputs: Inputs | None = None) -> pd.DataFrame:
    """Every ensemble of the trained members; skipped when the members' predictions, features and settings are unchanged.

    ``inputs``: the experiment's loaded inputs (the runner's; a CLI call builds its own): the merged predictions
    and, when up to date, the ensembles' own rows are loaded through their catalog entries.

    Validate, then act: every member's predictions and (for stacking) features are read and checked, and every
    ensemble is computed in memory, before ``ensemble_predictions.parquet``, ``subsets.parquet`` and
    ``ensembles.json`` are replaced; a failing command leaves the previous ensembles in place.
    """
    exp_dir = Path(exp_dir)
    catalog = Catalog(exp_dir)
    inputs = inputs if inputs is not None else Inputs(exp_dir)
    start = time.perf_counter()
    merge_predictions(exp_dir)
    preds = inputs.load("predictions")  # the merge above rewrote it, or not: Inputs notices either way
    members = member_runs(preds)
    if len(members) < 2:
        raise PipelineError(f"ensembles need at least 2 trained single-model runs, found {members}; run `train` first")
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "enabled"}
    stamp_inputs = [catalog.run(m).predictions for m in members] + ([catalog.run(m).features for m in members] if cfg.stacking else [])
    stamp = Stamp(catalog, "ensemble", {"version": ENSEMBLE_VERSION, "settings": settings, "seed": seed, "members": members},
                  inputs=stamp_inputs)
    if not force and stamp.is_current() and catalog.ensemble_predictions.exists():
        done = inputs.load("ensemble_predictions")
        up_to_date("ensemble", f"{done['run_id'].nunique()} ensembles of {len(members)} members")
        return done
    # -- validate and compute everything in memory ------------------------------------------------------
    val_p, val_meta = probability_matrix(preds, members, "val")
    test_p, test_meta = probability_matrix(preds, members, "test")
    groups = member_groups(members)
    features = _member_features(catalog, members, val_meta, test_meta) if cfg.stacking and groups else {}
    # The record first (groups, exact weights, rule, best subsets), then every voting row from it by the one
    # function `predict` and the dashboard's fixture call too (pipeline.artifacts.predictions.ensemble_rows).
    record: dict = {"members": members, "groups": {}, "weights": {}, "stacking": {}, "config": settings}
    rows: list[pd.DataFrame] = []
    meta_models: dict = {}  # group -> fitted stacking model, saved with the other outputs
    for group, names in groups.items():
        idx = [members.index(n) for n in names]
        record["groups"][group] = names
        weights = fit_weights(val_p[idx], val_meta["label"].to_numpy())
        record["weights"][group] = dict(zip(names, weights.tolist()))  # exact: `predict` recomputes the rows from them
        if cfg.stacking:
            rows.extend(_stacking_rows(features, names, group, val_meta, test_meta, cfg, seed, record, meta_models))
    subsets = None
    if cfg.subset_search:
        subsets = subset_search(val_p, val_meta["label"].to_numpy(), test_p, test_meta["label"].to_numpy(), members,
                                threshold=cfg.threshold, tie_break=cfg.hard_tie_break)
        for method in ("soft", "hard"):
            best = subsets[(subsets["method"] == method) & (subsets["n_members"] >= 2)].iloc[0]
            record[f"best_{method}_subset"] = {"members": best["members"].split("+"), "val_accuracy": float(best["val_accuracy"]),
                                               "test_accuracy": float(best["test_accuracy"])}
    rows = ensemble_rows(record, preds, "val") + ensemble_rows(record, preds, "test") + rows
    new = pd.concat(rows, ignore_index=True)
    record["seconds"] = round(time.perf_counter() - start, 2)
    # -- act --------------------------------------------------------------------------------------------
    # the tables through their catalog entries: all checked against their schemas before the first is replaced
    inputs.save_all({"ensemble_predictions": new, **({"subsets": subsets} if subsets is not None else {})})
    outputs = [catalog.ensemble_predictions, catalog.ensembles]
    if subsets is not None:
        outputs.append(catalog.subsets)
    for group, model in meta_models.items():
        with atomic_path(catalog.stacking_model(group), ".keras") as tmp:
            model.save(tmp)
        outputs.append(catalog.stacking_model(group))
    inputs.save("ensembles", record)
    stamp.record(outputs)
    merge_predictions(exp_dir)
    summary = new.assign(ok=new["pred"] == new["label"]).groupby(["run_id", "split"])["ok"].mean().unstack()
    print(summary.round(3).to_string())
    return new


def _member_features(catalog: Catalog, members: list[str], val_meta: pd.DataFrame, test_meta: pd.DataFrame) -> dict:
    """{member: (val features, test features)}, every file read once and checked before any ensemble is written
    (:func:`pipeline.artifacts.features.read_features`: a missing, truncated or foreign file is one line)."""
    from pipeline.ml.stacking import load_features

    ids, n_val = val_meta["image_id"].tolist() + test_meta["image_id"].tolist(), len(val_meta)
    out = {}
    for name in members:
        both = load_features(catalog.run(name).features, ids)
        out[name] = (both[:n_val], both[n_val:])
    return out


def _patients(meta: pd.DataFrame) -> np.ndarray | None:
    """Each image's patient (the strict numeric id, else the folder id), or None when the rows carry none."""
    for col in ("patient_num", "patient_id"):
        if col in meta and meta[col].notna().all():
            return meta[col].astype(str).to_numpy()
    return None


def _stacking_rows(features, names, group, val_meta, test_meta, cfg, seed, record, meta_models: dict) -> list[pd.DataFrame]:
    from pipeline.ml.runtime import quiet_tensorflow
    from pipeline.ml.stacking import fit_stacking

    quiet_tensorflow()
    val_x = np.concatenate([features[n][0] for n in names], axis=1)
    test_x = np.concatenate([features[n][1] for n in names], axis=1)
    try:
        out = fit_stacking(val_x, val_meta["label"].to_numpy(), test_x, cfg.stacking_epochs, seed, cfg.stacking_batch_size,
                           cfg.stacking_reduce_lr, cfg.stacking_patience, val_patients=_patients(val_meta))
    except PipelineError as exc:
        print(f"stacking ({group}) skipped: {exc}")
        record["stacking"][group] = {"skipped": str(exc)}
        return []
    hold_patients = sorted({str(p) for p in _patients(val_meta)[out["holdout_index"]]}) if _patients(val_meta) is not None else []
    record["stacking"][group] = {"best_epoch": out["best_epoch"], "epochs_trained": out["epochs_trained"], "val_used_for_fit": True,
                                 "holdout_images": int(len(out["holdout_index"])), "members": names, "model_saved": True,
                                 "inner_split": out["inner_split"], "holdout_patients": hold_patients}
    if out["inner_split"] != "patient":
        print(f"stacking ({group}): inner hold-out split by image (fewer than 2 validation patients of a class): "
              "its epoch choice may reward memorised patients")
    meta_models[group] = out["model"]
    hold_meta = val_meta.iloc[out["holdout_index"]].reset_index(drop=True)
    # Only the inner hold-out of val is out-of-sample for the meta-model: those are its "val" rows. Decided at the
    # recorded threshold, as `predict` decides an external folder's stacking rows.
    return [stacking_rows(names, group, hold_meta, out["holdout_prob"], record),
            stacking_rows(names, group, test_meta, out["test_prob"], record)]
