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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from pipeline.artifacts import experiment
from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import write_json, write_parquet
from pipeline.artifacts.schemas import check_frame
from pipeline.core.errors import PipelineError


@dataclass(frozen=True)
class CatalogEntry:
    """One artifact: where it lives (``Catalog.<name>``, or ``Catalog.<name>(key)`` for keyed entries such as a
    stain method's target), how it is read and checked, and how it is written."""

    name: str
    format: str  # "parquet" | "json"
    reader: Callable[[Path, Any], Any]  # (experiment folder, key) -> the checked value (the experiment module's loaders)
    keyed: bool = False
    schema: str | None = None  # pipeline.artifacts.schemas entry checked before save()

    def path(self, catalog: Catalog, key: Any = None) -> Path:
        where = getattr(catalog, self.name)
        return where(key) if self.keyed else where

    def load(self, catalog: Catalog, key: Any = None) -> Any:
        """The checked value; a missing or foreign file is the reader's one-line PipelineError."""
        return self.reader(catalog.root, key)

    def save(self, catalog: Catalog, value: Any, key: Any = None) -> Path:
        """Validate ``value`` against the entry's schema, then write it atomically (nothing is replaced on a bad value)."""
        path = self.path(catalog, key)
        if self.format == "parquet":
            if self.schema:
                check_frame(self.schema, value, path, catalog.root)
            return write_parquet(value, path)
        return write_json(value, path)


ENTRIES: dict[str, CatalogEntry] = {e.name: e for e in (
    CatalogEntry("manifest", "parquet", lambda d, _: experiment.load_manifest(d), schema="manifest"),
    CatalogEntry("split", "parquet", lambda d, _: experiment.load_split(d), schema="split"),
    CatalogEntry("dataset", "json", lambda d, _: experiment.data_root_of(d)),  # loads as the checked data root
    CatalogEntry("stain_target", "json", lambda d, method: experiment.read_stain_target(d, method), keyed=True),
)}


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
            value = entry.reader(self.exp_dir, key)  # the folder as given: error messages name it as the user did
            if stat is not None and _stat(path) == stat:  # unchanged while it was read: safe to keep
                self._memo[(name, key)] = (stat, value)
            else:
                self._memo.pop((name, key), None)
        return value.copy() if isinstance(value, pd.DataFrame) else value

    def save(self, name: str, value: Any, key: Any = None) -> Path:
        """Write entry ``name`` through its :class:`CatalogEntry` (validated, atomic) and forget the held value."""
        self.forget([name])
        return ENTRIES[name].save(self.catalog, value, key)

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
