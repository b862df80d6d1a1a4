"""Stage ``ensemble``: soft, hard, weighted and stacking ensembles of the trained runs + subset search.

Members are the single-model runs without stain normalization (as in the study). Groups: the V1
family, the V2 family, and all members. Every ensemble's predictions are rows of predictions.parquet
(``run_id`` like ``ensemble:soft:v1_b0+v1_b1``), so evaluation and the dashboard treat them like runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import Catalog, ensemble_run_id
from pipeline.artifacts.io import write_json, write_parquet
from pipeline.artifacts.predictions import load_predictions, make_rows, member_groups, member_runs, probability_matrix, replace_rows
from pipeline.config import EnsembleConfig
from pipeline.core.ensemble import combine, fit_weights, subset_search
from pipeline.core.errors import PipelineError


def run_ensembles(exp_dir: Path | str, cfg: EnsembleConfig = EnsembleConfig(), seed: int = 0) -> pd.DataFrame:
    exp_dir = Path(exp_dir)
    catalog = Catalog(exp_dir)
    start = time.perf_counter()
    preds = load_predictions(exp_dir)
    members = member_runs(preds)
    if len(members) < 2:
        raise PipelineError(f"ensembles need at least 2 trained single-model runs, found {members}; run `train` first")
    old = preds.loc[preds["kind"] == "ensemble", "run_id"].unique().tolist()
    rows, record = [], {"members": members, "groups": {}, "weights": {}, "stacking": {}}
    val_p, val_meta = probability_matrix(preds, members, "val")
    test_p, test_meta = probability_matrix(preds, members, "test")
    for group, names in member_groups(members).items():
        idx = [members.index(n) for n in names]
        record["groups"][group] = names
        weights = fit_weights(val_p[idx], val_meta["label"].to_numpy())
        record["weights"][group] = dict(zip(names, np.round(weights, 4).tolist()))
        for method in ("soft", "hard", "weighted"):
            run_id = ensemble_run_id(method, names)
            for p, meta in ((val_p, val_meta), (test_p, test_meta)):
                res = combine(p[idx], method, cfg.threshold, cfg.hard_tie_break, weights)
                rows.append(make_rows(run_id, "ensemble", method, group, "none", meta, res.score, pred=res.pred))
        if cfg.stacking:
            rows.extend(_stacking_rows(exp_dir, names, group, val_meta, test_meta, cfg, seed, record))
    if cfg.subset_search:
        subsets = subset_search(val_p, val_meta["label"].to_numpy(), test_p, test_meta["label"].to_numpy(), members,
                                threshold=cfg.threshold, tie_break=cfg.hard_tie_break)
        write_parquet(subsets, catalog.subsets)
        for method in ("soft", "hard"):
            best = subsets[(subsets["method"] == method) & (subsets["n_members"] >= 2)].iloc[0]
            names = best["members"].split("+")
            run_id = ensemble_run_id(f"{method}-best", names)
            idx = [members.index(n) for n in names]
            record[f"best_{method}_subset"] = {"members": names, "val_accuracy": float(best["val_accuracy"]),
                                               "test_accuracy": float(best["test_accuracy"])}
            for p, meta in ((val_p, val_meta), (test_p, test_meta)):
                res = combine(p[idx], method, cfg.threshold, cfg.hard_tie_break)
                rows.append(make_rows(run_id, "ensemble", f"{method}-best", "subset", "none", meta, res.score, pred=res.pred))
    new = pd.concat(rows, ignore_index=True)
    replace_rows(exp_dir, new, sorted(set(old) | set(new["run_id"])))
    record["seconds"] = round(time.perf_counter() - start, 2)
    record["config"] = cfg.__dict__
    write_json(record, catalog.ensembles)
    summary = new.assign(ok=new["pred"] == new["label"]).groupby(["run_id", "split"])["ok"].mean().unstack()
    print(summary.round(3).to_string())
    return new


def _stacking_rows(exp_dir, names, group, val_meta, test_meta, cfg, seed, record) -> list[pd.DataFrame]:
    from pipeline.ml.stacking import fit_stacking, load_features

    catalog = Catalog(exp_dir)
    val_x = np.concatenate([load_features(catalog.run(n).features, val_meta["image_id"].tolist()) for n in names], axis=1)
    test_x = np.concatenate([load_features(catalog.run(n).features, test_meta["image_id"].tolist()) for n in names], axis=1)
    try:
        out = fit_stacking(val_x, val_meta["label"].to_numpy(), test_x, cfg.stacking_epochs, seed, cfg.stacking_batch_size,
                           cfg.stacking_reduce_lr, cfg.stacking_patience)
    except PipelineError as exc:
        print(f"stacking ({group}) skipped: {exc}")
        record["stacking"][group] = {"skipped": str(exc)}
        return []
    run_id = ensemble_run_id("stacking", names)
    record["stacking"][group] = {"best_epoch": out["best_epoch"], "epochs_trained": out["epochs_trained"], "val_used_for_fit": True,
                                 "holdout_images": int(len(out["holdout_index"]))}
    hold_meta = val_meta.iloc[out["holdout_index"]].reset_index(drop=True)
    # Only the inner hold-out of val is out-of-sample for the meta-model: those are its "val" rows.
    return [make_rows(run_id, "ensemble", "stacking", group, "none", hold_meta, out["holdout_prob"]),
            make_rows(run_id, "ensemble", "stacking", group, "none", test_meta, out["test_prob"])]
