"""Catalog entries with ``load()`` and ``save()``, and the inputs of one experiment, each read once.

Why: every stage used to take the experiment folder and read the manifest, the split and the stain target itself
(``load_split_frame(exp_dir)``): one ``run`` of a small preset read and re-validated the same files dozens of
times, each reader with its own error handling. Here each artifact the stages pass along is one
:class:`CatalogEntry` (its catalog path, format, the checks of :mod:`pipeline.artifacts.experiment` and
:mod:`pipeline.artifacts.schemas`, the command that re-creates it): ``load()`` goes through the single-handle
readers, ``save()`` validates and then writes atomically. :class:`Inputs` is what the runner builds once per
experiment and hands to every stage: each entry is loaded the first time a stage asks for it and kept while the
file is unchanged (same inode, size and mtime: a stage that rewrites it, or anyone else, is noticed by a
``stat``, never a read), and the runner drops what a stage declares it writes
(:mod:`pipeline.stages.declarations`) after that stage. A stage called on its own (a CLI subcommand) builds its
own :class:`Inputs`: the same load -> body -> save path, just not shared.

The dashboard reads through the same entries (:func:`entry_at` -> :meth:`CatalogEntry.read`, inside its own
``opened_inside`` and Streamlit caches): one reader and one schema per file, whoever reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from pipeline.artifacts import experiment
from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import opened_inside, parse_json, read_parquet_file, write_json, write_parquet
from pipeline.artifacts.predictions import load_predictions
from pipeline.artifacts.schemas import check_frame, entry_for
from pipeline.core.errors import PipelineError


@dataclass(frozen=True)
class CatalogEntry:
    """One artifact: where it lives (``Catalog.<name>``, or ``Catalog.<name>(key)`` for keyed entries such as a
    stain method's target; ``locate`` when the catalog names it otherwise), how one opened file of it is read and
    checked (:meth:`read`: the pipeline's stages and the dashboard's cached loaders both go through it), and how
    it is written (:meth:`save`)."""

    name: str
    format: str  # "parquet" | "json"
    # (experiment folder, key) -> the checked value: the experiment module's loaders, which add the stages' own
    # checks (a manifest path never leaves the data root, a split value is known, ...). None: :meth:`read` it.
    reader: Callable[[Path, Any], Any] | None = None
    keyed: bool = False
    schema: str | None = None  # pipeline.artifacts.schemas entry checked by read() and before save()
    locate: Callable[[Catalog, Any], Path] | None = None

    def path(self, catalog: Catalog, key: Any = None) -> Path:
        if self.locate is not None:
            return self.locate(catalog, key)
        where = getattr(catalog, self.name)
        return where(key) if self.keyed else where

    def read(self, opened: str | Path, path: Path | str | None = None, exp_dir: Path | str | None = None) -> Any:
        """The value of one file, read through the handle ``opened`` (``opened_inside``'s name of the checked file,
        or the path itself); ``path`` is how messages name it.

        Parquet: the single-handle reader, then the entry's schema (:func:`~pipeline.artifacts.schemas.check_frame`):
        an unreadable file is :class:`~pipeline.artifacts.io.UnreadableArtifact`, a readable one that breaks the
        contract :class:`~pipeline.artifacts.schemas.InvalidArtifact`. JSON: the artifact parser
        (:func:`~pipeline.artifacts.io.parse_json`: finite numbers, bounded nesting); its ``OSError``/``ValueError``
        is left to the caller, which words it (the dashboard names the file and the command that rewrites it).
        """
        named = Path(path if path is not None else opened)
        if self.format == "parquet":
            frame = read_parquet_file(opened)
            return check_frame(self.schema, frame, named, exp_dir) if self.schema else frame
        with open(opened, "rb") as fh:
            return parse_json(fh.read().decode("utf-8"))

    def read_columns(self, opened: str | Path, columns: list[str]) -> pd.DataFrame:
        """Only ``columns`` of a table the caller has already :meth:`read` whole (validated then): a projection, read
        through the same single-handle reader and not re-checked (the embedding map reads 5 of the manifest's columns)."""
        return read_parquet_file(opened, columns=columns)

    def load_from(self, exp_dir: Path | str, key: Any = None) -> Any:
        """The checked value of the experiment at ``exp_dir`` (as the user named it: messages repeat it): the
        entry's stage loader, else its file opened once inside the folder and :meth:`read`."""
        if self.reader is not None:
            return self.reader(Path(exp_dir), key)
        catalog = Catalog(Path(exp_dir))
        path = self.path(catalog, key)
        with opened_inside(catalog.root, path) as name:  # a file that is a link leading out is not read
            return self.read(name, path, exp_dir)

    def load(self, catalog: Catalog, key: Any = None) -> Any:
        """The checked value; a missing or foreign file is a one-line PipelineError."""
        return self.load_from(catalog.root, key)

    def check(self, catalog: Catalog, value: Any, key: Any = None) -> None:
        """Raise :class:`~pipeline.artifacts.schemas.InvalidArtifact` when ``value`` breaks the entry's schema."""
        if self.format == "parquet" and self.schema:
            check_frame(self.schema, value, self.path(catalog, key), catalog.root)

    def save(self, catalog: Catalog, value: Any, key: Any = None) -> Path:
        """Validate ``value`` against the entry's schema, then write it atomically (nothing is replaced on a bad value)."""
        self.check(catalog, value, key)
        return self.write_checked(catalog, value, key)

    def write_checked(self, catalog: Catalog, value: Any, key: Any = None) -> Path:
        """Write a value the caller has already :meth:`check`-ed, atomically (``Inputs.save_all`` checks a stage's
        outputs together first, then writes each without checking it again)."""
        path = self.path(catalog, key)
        return write_parquet(value, path) if self.format == "parquet" else write_json(value, path)


def _table(name: str, schema: str | None = None, **kw: Any) -> CatalogEntry:
    return CatalogEntry(name, "parquet", schema=schema or name, **kw)


ENTRIES: dict[str, CatalogEntry] = {e.name: e for e in (
    CatalogEntry("manifest", "parquet", lambda d, _: experiment.load_manifest(d), schema="manifest"),
    CatalogEntry("split", "parquet", lambda d, _: experiment.load_split(d), schema="split"),
    CatalogEntry("dataset", "json", lambda d, _: experiment.data_root_of(d)),  # loads as the checked data root
    CatalogEntry("stain_target", "json", lambda d, method: experiment.read_stain_target(d, method), keyed=True),
    # the tables the ensemble, evaluate, neighbours and Grad-CAM stages write and the dashboard shows
    # predictions: the merged table; a missing one is the empty table (nothing trained yet), as the stages expect
    _table("predictions", reader=lambda d, _: load_predictions(d)),
    _table("ensemble_predictions", "predictions"),
    _table("adopted_predictions", "predictions"),
    _table("metrics"),
    _table("subsets"),
    _table("embedding"),
    _table("neighbours"),
    _table("history", keyed=True, locate=lambda c, run_id: c.run(run_id).history),
    _table("gradcam_scores", keyed=True),
    # records
    CatalogEntry("ensembles", "json"),
    CatalogEntry("pipeline_run", "json"),
    CatalogEntry("run_info", "json", keyed=True, locate=lambda c, run_id: c.run(run_id).info),
)}

# Files with no entry of their own (a parquet or JSON the dashboard is pointed at outside the table): read as files,
# with no schema.
PARQUET_FILE = CatalogEntry("parquet file", "parquet")
JSON_FILE = CatalogEntry("JSON file", "json")


def entry_at(path: Path | str) -> CatalogEntry:
    """The entry of a catalog file, by its name (the dashboard's caches are keyed by path): its schema is the one
    :func:`pipeline.artifacts.schemas.entry_for` names, so a file is checked the same way whoever reads it."""
    schema = entry_for(path)
    if schema is not None:
        return ENTRIES[schema]
    if Path(path).suffix != ".json":
        return PARQUET_FILE
    return ENTRIES.get(_RECORDS.get(Path(path).name, ""), JSON_FILE)


_RECORDS = {"dataset.json": "dataset", "ensembles.json": "ensembles", "pipeline_run.json": "pipeline_run",
            "run.json": "run_info", "target.json": "stain_target"}


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class Inputs:
    """The loaded inputs of one experiment (see the module docstring): what stage bodies get instead of a folder.

    Values are shared between the stages that ask for them: frames come back as copies, so a stage that adds a
    column changes only its own. Pickled (a training job sent to a spawned worker), only the folder travels: the
    worker loads what it needs itself.
    """

    def __init__(self, exp_dir: Path | str):
        self.exp_dir = Path(exp_dir)
        self.catalog = Catalog(self.exp_dir)
        self._memo: dict[tuple[str, Any], tuple[tuple[int, int, int], Any]] = {}

    def __eq__(self, other: object) -> bool:
        """Two Inputs are the same inputs when they are of the same experiment folder (what each holds is a cache)."""
        return isinstance(other, Inputs) and self.exp_dir.resolve() == other.exp_dir.resolve()

    def __hash__(self) -> int:
        return hash(self.exp_dir.resolve())

    def __getstate__(self) -> dict:
        return {"exp_dir": self.exp_dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["exp_dir"])

    def load(self, name: str, key: Any = None) -> Any:
        """Entry ``name`` (``key``: e.g. the stain method), read from disk only when it is not held or has changed."""
        entry = ENTRIES[name]
        path = entry.path(self.catalog, key)
        stat = _stat(path)
        held = self._memo.get((name, key))
        if held is not None and stat is not None and held[0] == stat:
            value = held[1]
        else:
            value = entry.load_from(self.exp_dir, key)  # the folder as given: error messages name it as the user did
            if stat is not None and _stat(path) == stat:  # unchanged while it was read: safe to keep
                self._memo[(name, key)] = (stat, value)
            else:
                self._memo.pop((name, key), None)
        return value.copy() if isinstance(value, pd.DataFrame) else value

    def save(self, name: str, value: Any, key: Any = None) -> Path:
        """Write entry ``name`` through its :class:`CatalogEntry` (validated, atomic) and forget the held value."""
        self.forget([name])
        return ENTRIES[name].save(self.catalog, value, key)

    def save_all(self, values: dict[str, Any]) -> list[Path]:
        """Write several entries of one stage (name -> value): every value is checked against its schema before the
        first file is replaced, so a stage whose second output is bad leaves all of its old outputs as they were."""
        for name, value in values.items():
            ENTRIES[name].check(self.catalog, value)
        self.forget(list(values))
        return [ENTRIES[name].write_checked(self.catalog, value) for name, value in values.items()]

    def forget(self, names: list[str] | tuple[str, ...]) -> None:
        """Drop the held values of these entries (the runner calls it with what a stage declares it writes)."""
        for held in [k for k in self._memo if k[0] in names]:
            del self._memo[held]

    # -- the frames and records the stages work on -------------------------------------------------------------
    def manifest(self) -> pd.DataFrame:
        return self.load("manifest")

    def split(self) -> pd.DataFrame:
        return self.load("split")

    def split_frame(self, fold: int = 0) -> pd.DataFrame:
        """Manifest rows joined with their split of ``fold`` (see :func:`pipeline.artifacts.experiment.join_split`)."""
        return experiment.join_split(self.manifest(), self.split(), fold)

    def data_root(self) -> Path:
        return self.load("dataset")

    def stain_target(self, method: str) -> dict | None:
        """The validated ``target.json`` of ``method``, None when there is none yet."""
        return self.load("stain_target", method)

    def require_stain_target(self, method: str) -> dict:
        target = self.stain_target(method)
        if target is None:
            raise PipelineError(f"run `python -m pipeline stain {self.exp_dir} --method {method}` before training a {method} run")
        return target

    def stain_root(self, method: str) -> Path:
        """Folder of the ``method``-normalized images for the current target (one-line error when there are none)."""
        return experiment.stain_root_for(self.exp_dir, method, self.stain_target(method))
