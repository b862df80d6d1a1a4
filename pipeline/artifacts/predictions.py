"""The predictions contract: ``predictions.parquet``, one row per (run, image) for val and test.

Single runs and ensembles write the same columns, so the evaluation and the dashboard treat them alike.

No lost rows: nobody edits the experiment's table in place. Every completed run writes its own
``runs/<run_id>/predictions.parquet`` and the ensemble stage its own ``ensemble_predictions.parquet``; the
experiment's ``predictions.parquet`` is only ever *rebuilt* from those parts by :func:`merge_predictions`,
under a file lock, so two runs that finish together cannot drop each other's rows (a read-edit-write of one
shared table could: the atomic rename prevents torn files, not lost updates).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import Catalog, ensemble_run_id, parse_run_id
from pipeline.artifacts.io import file_lock, read_json_object, read_parquet_file, write_parquet
from pipeline.artifacts.schemas import ENTRIES, check_frame
from pipeline.core.ensemble import combine
from pipeline.core.errors import PipelineError
from pipeline.core.model_specs import MODEL_SPECS

PREDICTION_COLUMNS = ["run_id", "kind", "model", "family", "stain", "image_id", "split", "label", "prob_malignant", "pred"]
META_COLUMNS = ["magnification", "subtype", "patient_id", "patient_num"]


def predictions_path(exp_dir: Path | str) -> Path:
    return Catalog(exp_dir).predictions


def make_rows(run_id: str, kind: str, model: str, family: str, stain: str, frame: pd.DataFrame,
              prob_malignant: np.ndarray, threshold: float = 0.5, pred: np.ndarray | None = None) -> pd.DataFrame:
    """Prediction rows for ``frame`` (image_id, split, label and metadata columns) and its probabilities."""
    prob = np.asarray(prob_malignant, dtype=np.float32)
    if len(prob) != len(frame):
        raise PipelineError(f"{run_id}: {len(prob)} probabilities for {len(frame)} images")
    bad = ~np.isfinite(prob) | (prob < 0) | (prob > 1)
    if bad.any():  # a diverged model: its rows must never reach the table, and the run must not count as complete
        raise PipelineError(f"{run_id}: {int(bad.sum())} of {len(prob)} predicted probabilities are not finite numbers in "
                            "[0, 1] (the model diverged); the run is not complete: retrain it with a lower learning rate")
    out = pd.DataFrame({
        "run_id": run_id, "kind": kind, "model": model, "family": family, "stain": stain,
        "image_id": frame["image_id"].to_numpy(), "split": frame["split"].to_numpy(),
        "label": frame["label"].to_numpy().astype("int8"), "prob_malignant": prob,
        "pred": (prob >= threshold).astype("int8") if pred is None else np.asarray(pred, dtype="int8"),
    })
    for col in META_COLUMNS:
        if col in frame:
            out[col] = frame[col].to_numpy()
    return out


def load_predictions(exp_dir: Path | str) -> pd.DataFrame:
    """The experiment's table, checked against its catalog entry (columns, labels, finite probabilities, unique keys)."""
    path = predictions_path(exp_dir)
    if not path.exists():
        return pd.DataFrame(columns=PREDICTION_COLUMNS + META_COLUMNS)
    return check_frame("predictions", read_parquet_file(path, ENTRIES["predictions"].command.format(dir=exp_dir)), path, exp_dir)


def completed_runs(exp_dir: Path | str) -> list[str]:
    """Run folders whose ``run.json`` says complete and that hold their own predictions (the merge's parts)."""
    catalog = Catalog(exp_dir)
    done = []
    for run_id in catalog.run_ids_on_disk():
        files = catalog.run(run_id)
        if files.predictions.exists() and files.info.exists():
            try:
                complete = read_json_object(files.info).get("status") == "complete"
            except PipelineError:
                complete = False
            if complete:
                done.append(run_id)
    return done


def prediction_parts(exp_dir: Path | str) -> list[Path]:
    """The files ``predictions.parquet`` is built from: each completed run's rows, the rows adopted from runs that
    have no part (see :func:`_adopt_orphans`), then the ensembles' rows."""
    catalog = Catalog(exp_dir)
    parts = [catalog.run(r).predictions for r in completed_runs(exp_dir)]
    extra = [p for p in (catalog.adopted_predictions, catalog.ensemble_predictions) if p.exists()]
    return parts + extra


def _read_part(path: Path, exp_dir: Path | str) -> pd.DataFrame:
    return check_frame("predictions", read_parquet_file(path, ENTRIES["predictions"].command.format(dir=exp_dir)), path, exp_dir)


def merge_predictions(exp_dir: Path | str) -> bool:
    """Rebuild ``predictions.parquet`` from its parts, under a lock; a no-op when no part changed.

    Returns True when the table was rewritten. Every caller (a finishing run, the ensemble stage, ``run``)
    merges *all* current parts, so whichever merge comes last includes everyone's rows.

    Never fewer runs: before the table is replaced, rows of single runs that have no completed part (a copy
    shared without ``runs/``, a pruned run folder, a table written by the user's own models) become their part
    (``adopted_predictions.parquet``), and ensemble rows become the ensemble part when it is missing. A run that
    completes again supersedes its adopted rows. Every part is validated first; an unreadable or invalid table or
    part is refused in one line and nothing is written.
    """
    from pipeline.artifacts.stamps import Stamp

    catalog = Catalog(exp_dir)
    with file_lock(catalog.predictions_lock):
        _split_legacy_table(catalog)
        parts = prediction_parts(exp_dir)
        if not parts and not catalog.predictions.exists():  # nothing trained yet: nothing to write
            return False
        stamp = Stamp(catalog, "predictions", {"version": 2}, inputs=parts)
        if stamp.is_current():
            return False
        done = set(completed_runs(exp_dir))
        old_runs = _adopt_orphans(catalog, exp_dir, done)
        parts = prediction_parts(exp_dir)
        stamp = Stamp(catalog, "predictions", {"version": 2}, inputs=parts)
        frames = []
        for p in parts:
            frame = _read_part(p, exp_dir)
            if p == catalog.adopted_predictions:
                frame = frame[~frame["run_id"].isin(done)]
            frames.append(frame)
        merged = (pd.concat(frames, ignore_index=True) if frames
                  else pd.DataFrame(columns=PREDICTION_COLUMNS + META_COLUMNS))
        lost = sorted(old_runs - set(merged.loc[merged["kind"] == "single", "run_id"].astype(str)))
        if lost:  # cannot happen by construction; the promise is worth a check before the old table goes
            raise PipelineError(f"refusing to rewrite {catalog.predictions}: it would lose the rows of run(s) {lost}")
        check_frame("predictions", merged, catalog.predictions, exp_dir)  # e.g. one run id in two parts
        write_parquet(merged, catalog.predictions)
        stamp.record([catalog.predictions], parts=len(parts), rows=len(merged))
        return True


def _adopt_orphans(catalog: Catalog, exp_dir: Path | str, done: set[str]) -> set[str]:
    """Keep the current table's rows that no part holds; return the single runs it held.

    The table is read and validated first: an unreadable one is refused (it may hold the only copy of some runs'
    rows), with the way out in the message.
    """
    if not catalog.predictions.exists():
        return set()
    hint = (f"if every run still has its runs/<id>/predictions.parquet, delete {catalog.predictions} and it is rebuilt "
            "from them")
    try:
        table = check_frame("predictions", read_parquet_file(catalog.predictions), catalog.predictions, exp_dir)
    except PipelineError as exc:
        raise PipelineError(f"{str(exc).split('; re-create it')[0]}; {hint}") from None
    singles = table[table["kind"] == "single"]
    old_runs = set(singles["run_id"].astype(str))
    adopted = (_read_part(catalog.adopted_predictions, exp_dir) if catalog.adopted_predictions.exists()
               else table.iloc[:0])
    keep = adopted[~adopted["run_id"].isin(done)]
    orphans = singles[~singles["run_id"].isin(done) & ~singles["run_id"].isin(set(keep["run_id"]))]
    if len(orphans) or len(keep) != len(adopted):
        new = pd.concat([keep, orphans], ignore_index=True)
        if len(new):
            write_parquet(new, catalog.adopted_predictions)
            if len(orphans):
                print(f"kept the rows of {orphans['run_id'].nunique()} run(s) without a runs/<id>/ part in "
                      f"{catalog.adopted_predictions.name}: {', '.join(sorted(orphans['run_id'].astype(str).unique()))}")
        else:
            catalog.adopted_predictions.unlink(missing_ok=True)
    ensembles = table[table["kind"] == "ensemble"]
    if len(ensembles) and not catalog.ensemble_predictions.exists():
        write_parquet(ensembles.reset_index(drop=True), catalog.ensemble_predictions)
    return old_runs


def _split_legacy_table(catalog: Catalog) -> None:
    """Experiments written before per-run parts existed: move each run's rows into its own part, once."""
    if catalog.stamp("predictions").exists() or not catalog.predictions.exists():
        return
    try:
        table = read_parquet_file(catalog.predictions)
    except PipelineError:
        return  # refused, with the way out, by _adopt_orphans
    if "kind" not in table or "run_id" not in table:
        return
    for run_id, rows in table[table["kind"] == "single"].groupby("run_id"):
        files = catalog.run(str(run_id))
        if files.info.exists() and not files.predictions.exists():
            write_parquet(rows.reset_index(drop=True), files.predictions)
    ensembles = table[table["kind"] == "ensemble"]
    if len(ensembles) and not catalog.ensemble_predictions.exists():
        write_parquet(ensembles.reset_index(drop=True), catalog.ensemble_predictions)


def probability_matrix(preds: pd.DataFrame, run_ids: list[str], split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """(members x images) probability matrix for ``split`` plus the aligned image frame.

    A member missing any image of the split is a clear error: ensembles must compare like with like.
    """
    part = preds[(preds["split"] == split) & preds["run_id"].isin(run_ids)]
    wide = part.pivot_table(index="image_id", columns="run_id", values="prob_malignant", aggfunc="first")
    missing = [r for r in run_ids if r not in wide.columns]
    if missing:
        raise PipelineError(f"no {split} predictions for member(s) {missing}")
    wide = wide[run_ids]
    incomplete = wide.columns[wide.isna().any()].tolist()
    if incomplete:
        raise PipelineError(f"member(s) {incomplete} lack predictions for some {split} images; re-run them")
    meta_cols = ["image_id", "label", "split"] + [c for c in META_COLUMNS if c in part]
    meta = part.drop_duplicates("image_id").set_index("image_id").loc[wide.index].reset_index()[meta_cols]
    return wide.to_numpy(dtype=np.float64).T, meta


def member_runs(preds: pd.DataFrame) -> list[str]:
    """Ensemble members: single-model runs without stain normalization (as in the study), in model order."""
    singles = preds[(preds["kind"] == "single") & (preds["stain"] == "none")]
    order = {spec.short: i for i, spec in enumerate(MODEL_SPECS.values())}
    return sorted(singles["run_id"].unique().tolist(), key=lambda r: (order.get(parse_run_id(r).model, 99), r))


def member_groups(members: list[str]) -> dict[str, list[str]]:
    """The study's family ensembles (V1, V2), plus all members when both families are present."""
    v1 = [m for m in members if parse_run_id(m).family == "v1"]
    v2 = [m for m in members if parse_run_id(m).family == "v2"]
    groups = {"v1": v1, "v2": v2, "all": members if v1 and v2 else []}
    return {name: ms for name, ms in groups.items() if len(ms) >= 2}


def recorded_rule(record: dict) -> tuple[float, str]:
    """(threshold, hard-vote tie rule) an ``ensembles.json`` was written with (0.5 and ``mean_prob`` when absent)."""
    cfg = record.get("config") or {}
    return float(cfg.get("threshold", 0.5)), str(cfg.get("hard_tie_break", "mean_prob"))


def stacking_rows(names: list[str], group: str, meta: pd.DataFrame, prob: np.ndarray, record: dict) -> pd.DataFrame:
    """A stacking ensemble's rows: its meta-model's P(malignant), decided at the recorded threshold (stage and
    ``predict`` alike, so an external folder gets the source's decisions)."""
    threshold, _ = recorded_rule(record)
    return make_rows(ensemble_run_id("stacking", names), "ensemble", "stacking", group, "none", meta, prob, threshold=threshold)


def ensemble_rows(record: dict, preds: pd.DataFrame, split: str, stacking_prob=None) -> list[pd.DataFrame]:
    """Every ensemble recorded in ``record`` (an ``ensembles.json``: groups, exact weights, threshold, tie rule,
    best subsets) as rows of ``split``, from the members' rows in ``preds``.

    The one place (members' scores, recorded parameters) become ensemble rows: the ensemble stage (val and test),
    ``predict`` (external images) and the dashboard's test fixture all call it. ``stacking_prob(group, names, meta)``
    gives a group's meta-model probabilities for ``meta``'s images (None: no stacking rows for that group).
    """
    threshold, tie = recorded_rule(record)
    rows = []
    for group, names in (record.get("groups") or {}).items():
        probs, meta = probability_matrix(preds, list(names), split)
        weights = np.array([record["weights"][group][n] for n in names], dtype=np.float64)
        for method in ("soft", "hard", "weighted"):
            res = combine(probs, method, threshold, tie, weights)
            rows.append(make_rows(ensemble_run_id(method, names), "ensemble", method, group, "none", meta, res.score, pred=res.pred))
        prob = stacking_prob(group, list(names), meta) if stacking_prob is not None else None
        if prob is not None:
            rows.append(stacking_rows(list(names), group, meta, prob, record))
    for method in ("soft", "hard"):
        best = record.get(f"best_{method}_subset")
        if isinstance(best, dict):
            names = list(best["members"])
            probs, meta = probability_matrix(preds, names, split)
            res = combine(probs, method, threshold, tie)
            rows.append(make_rows(ensemble_run_id(f"{method}-best", names), "ensemble", f"{method}-best", "subset", "none", meta,
                                  res.score, pred=res.pred))
    return rows
