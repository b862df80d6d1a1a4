"""Typed entries of the catalog's tables: what a parquet artifact must hold to be used at all.

Why one place: the pipeline's readers and the dashboard's loaders used to check (or not) a few columns each, so a
readable parquet with foreign columns or out-of-contract values (label 2, NaN probabilities, a history without
``loss``) became a KeyError or an sklearn traceback wherever it was first used. Every reader now passes the frame
through :func:`check_frame` with the entry's name; a violation is one :class:`InvalidArtifact` naming the file,
the problem and the command that rewrites it. The dashboard shows that message and renders the rest of the page.

An entry states the columns (with a kind: text, integer, number), the value rules (labels in {0, 1}, or -1 for
unlabelled external images; probabilities finite and in [0, 1]) and the key that must be unique. Categorical and
null-typed columns are normalised or refused here, so no later code meets them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError


class InvalidArtifact(PipelineError):
    """A readable artifact whose content breaks its entry's contract; ``path`` and ``problem`` for the dashboard."""

    def __init__(self, path: Path | str, problem: str, command: str):
        super().__init__(f"{path} {problem}; re-create it with: {command}")
        self.path, self.problem, self.command = Path(path), problem, command


Rule = Callable[[pd.Series, pd.DataFrame], "str | None"]  # returns a problem, or None when every value is fine


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "text" | "int" | "number"
    rule: Rule | None = None
    nullable: bool = False  # numbers only: NaN allowed (a metric that is n/a)


@dataclass(frozen=True)
class Entry:
    """One table of the catalog: its columns, unique key and the command that rewrites it (``{dir}`` = experiment)."""

    name: str
    command: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    nonempty: bool = False
    any_of: tuple[tuple[str, ...], ...] = field(default=())  # at least one column of each group must be present


def _one_of(values: tuple) -> Rule:
    def rule(col: pd.Series, frame: pd.DataFrame) -> str | None:
        bad = col[~col.isin(values)]
        return None if bad.empty else f"has {col.name} {_show(bad.iloc[0])} (allowed: {', '.join(map(str, values))})"
    return rule


def _label(col: pd.Series, frame: pd.DataFrame) -> str | None:
    """0/1; -1 only on the ``external`` split (``predict`` without labels)."""
    external = frame["split"].astype(str).eq("external") if "split" in frame else pd.Series(False, index=frame.index)
    ok = col.isin((0, 1)) | (col.eq(-1) & external)
    bad = col[~ok]
    return None if bad.empty else f"has label {_show(bad.iloc[0])} (labels are 0 or 1; -1 only for unlabelled external images)"


def _probability(col: pd.Series, frame: pd.DataFrame) -> str | None:
    values = col.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    return None if not bad.any() else f"has {col.name} {_show(values[bad][0])} (must be a finite probability in [0, 1])"


def _fraction_or_nan(col: pd.Series, frame: pd.DataFrame) -> str | None:
    values = col.to_numpy(dtype=np.float64)
    bad = np.isinf(values) | (values < 0) | (values > 1)
    return None if not bad.any() else f"has {col.name} {_show(values[bad][0])} (must be in [0, 1] or n/a)"


def _not_infinite(col: pd.Series, frame: pd.DataFrame) -> str | None:
    values = col.to_numpy(dtype=np.float64)
    bad = np.isinf(values)
    return None if not bad.any() else f"has {col.name} {_show(values[bad][0])} (must be a finite number or n/a)"


def _finite(col: pd.Series, frame: pd.DataFrame) -> str | None:
    values = col.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    return None if not bad.any() else f"has {col.name} {_show(values[bad][0])} (must be a finite number)"


def _positive(col: pd.Series, frame: pd.DataFrame) -> str | None:
    values = col.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 1)
    return None if not bad.any() else f"has {col.name} {_show(values[bad][0])} (must be a whole number >= 1)"


def _not_negative(col: pd.Series, frame: pd.DataFrame) -> str | None:
    values = col.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    return None if not bad.any() else f"has {col.name} {_show(values[bad][0])} (must be >= 0)"


def _show(value: object) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


SPLITS = ("train", "val", "test", "external")
T, I, N = "text", "int", "number"

ENTRIES: dict[str, Entry] = {e.name: e for e in (
    Entry("manifest", "python -m pipeline index DATA_ROOT --out {dir}",
          (Column("image_id", T), Column("path", T), Column("label", I, _one_of((-1, 0, 1))), Column("patient_id", T),
           Column("patient_num", I), Column("magnification", I), Column("subtype", T)), key=("image_id",), nonempty=True),
    Entry("split", "python -m pipeline split {dir} --mode patient --force",
          (Column("image_id", T), Column("split", T, _one_of(SPLITS)), Column("fold", I, _not_negative)),
          key=("image_id", "fold"), nonempty=True),
    Entry("predictions", "python -m pipeline train {dir} --model MODEL --force (for each run), then python -m pipeline ensemble {dir}",
          (Column("run_id", T), Column("kind", T, _one_of(("single", "ensemble"))), Column("model", T), Column("family", T),
           Column("stain", T), Column("image_id", T), Column("split", T, _one_of(SPLITS)), Column("label", I, _label),
           Column("prob_malignant", N, _probability), Column("pred", I, _one_of((0, 1)))),
          key=("run_id", "split", "image_id")),
    Entry("metrics", "python -m pipeline evaluate {dir} --force",
          (Column("run_id", T), Column("split", T), Column("group_type", T), Column("group", T),
           Column("accuracy", N, _not_infinite, nullable=True)),
          key=("run_id", "split", "group_type", "group")),
    Entry("history", "python -m pipeline train {dir} --model MODEL --force",
          (Column("epoch", I, _positive), Column("loss", N, nullable=True), Column("val_loss", N, nullable=True)),
          key=("epoch",), nonempty=True, any_of=(("val_accuracy", "accuracy"),)),
    Entry("subsets", "python -m pipeline ensemble {dir} --force",
          (Column("method", T), Column("members", T), Column("n_members", I, _positive),
           Column("val_accuracy", N, _fraction_or_nan, nullable=True), Column("test_accuracy", N, _fraction_or_nan, nullable=True))),
    Entry("embedding", "python -m pipeline neighbours {dir} --force",
          (Column("run_id", T), Column("method", T), Column("image_id", T), Column("split", T), Column("x", N, _finite),
           Column("y", N, _finite)), key=("run_id", "method", "image_id")),
    Entry("neighbours", "python -m pipeline neighbours {dir} --force",
          (Column("run_id", T), Column("image_id", T))),
    Entry("gradcam_scores", "python -m pipeline gradcam {dir} --force",
          (Column("method", T), Column("run_id", T), Column("image_id", T), Column("prob_target", N, nullable=True),
           Column("deletion_auc", N, nullable=True), Column("mean_iou", N, nullable=True)),
          key=("method", "run_id", "image_id")),
)}


def _normalise(col: pd.Series) -> pd.Series:
    """Categorical -> its values' own dtype; so rules compare values, not category codes."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.astype(col.cat.categories.dtype if len(col.cat.categories) else object)
    return col


def _all_text(col: pd.Series) -> bool:
    """Every (non-missing) value is a ``str``: a string dtype promises it; an object column is inferred in C (a
    Python test per value cost ~0.3 s per million cells, paid by every page's first load at ten times BreakHis)."""
    dtype = col.dtype
    if isinstance(dtype, pd.StringDtype):
        return True
    if isinstance(dtype, pd.ArrowDtype):
        import pyarrow as pa

        kind = dtype.pyarrow_dtype
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or getattr(pa.types, "is_string_view", bool)(kind):
            return True
        col = col.astype(object)  # any other Arrow type: judge its values as Python objects
    return len(col) == 0 or pd.api.types.infer_dtype(col, skipna=True) == "string"


def _kind_problem(col: pd.Series, kind: str, nullable: bool, has_rule: bool = False) -> str | None:
    if kind == T:
        if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            return f"column {col.name} is {col.dtype}, not text"
        if col.isna().any():
            return f"column {col.name} has missing values"
        if not _all_text(col):
            return f"column {col.name} holds values that are not text"
        return None
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        return f"column {col.name} is {col.dtype}, not a number"
    if kind == I:
        values = col.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            return f"column {col.name} holds values that are not whole numbers"
    elif not nullable and not has_rule and col.isna().any():
        return f"column {col.name} has missing values"
    return None


def check_frame(entry: Entry | str, frame: pd.DataFrame, path: Path | str, exp_dir: Path | str | None = None) -> pd.DataFrame:
    """``frame`` with categorical columns normalised, or :class:`InvalidArtifact` naming the first broken promise."""
    entry = ENTRIES[entry] if isinstance(entry, str) else entry
    path = Path(path)
    command = entry.command.format(dir=exp_dir if exp_dir is not None else path.parent)

    def fail(problem: str) -> None:
        raise InvalidArtifact(path, problem, command)

    if not isinstance(frame, pd.DataFrame):
        fail("is not a table")
    if not frame.columns.is_unique:
        fail(f"has duplicate column(s) {sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})}")
    missing = [c.name for c in entry.columns if c.name not in frame.columns]
    missing += ["/".join(group) for group in entry.any_of if not any(g in frame.columns for g in group)]
    if missing:
        fail(f"lacks column(s) {', '.join(missing)}")
    if entry.nonempty and frame.empty:
        fail("has no rows")
    frame = frame.copy()
    for column in entry.columns:
        col = _normalise(frame[column.name])
        problem = _kind_problem(col, column.kind, column.nullable, column.rule is not None)
        if problem is None and column.rule is not None and len(col):
            problem = column.rule(col, frame)
        if problem:
            fail(problem)
        frame[column.name] = col
    if entry.key and len(frame) and frame.duplicated(list(entry.key)).any():
        dup = frame.loc[frame.duplicated(list(entry.key)), list(entry.key)].iloc[0]
        fail(f"has duplicate rows for ({', '.join(entry.key)}) = ({', '.join(_show(v) for v in dup)})")
    return frame


def entry_for(path: Path | str) -> str | None:
    """The entry of a catalog file, by its name (the dashboard's loaders ask by path)."""
    name = Path(path).name
    return {"manifest.parquet": "manifest", "split.parquet": "split", "predictions.parquet": "predictions",
            "ensemble_predictions.parquet": "predictions", "adopted_predictions.parquet": "predictions",
            "metrics.parquet": "metrics", "history.parquet": "history", "subsets.parquet": "subsets",
            "embedding.parquet": "embedding", "neighbours.parquet": "neighbours"}.get(name) or (
        "gradcam_scores" if name == "scores.parquet" and Path(path).parent.parent.name == "gradcam" else None)  # gradcam/<method>/
