"""Stage ``neighbours``: what each model sees. For every single-model run with pooled features (``features.npz``
of train, val and test, written by ``train``):

* the ``k`` nearest training images of every val/test image (cosine), with label, patient and similarity
  (``neighbours.parquet``);
* per run and split, the **same-patient neighbour rate**: the share of val/test images whose nearest training
  image is of the same patient (``neighbour_summary.parquet``; ``evaluate`` joins it into ``metrics.parquet``).
  Under the study's image-level split it measures the patient leak directly; under a patient split it is 0;
* how each run was searched: exact (blocked product + running top-k), or a FAISS IVF index above
  ``[neighbours] approximate_above`` training images, with its recall@k against exact search on a sample of queries;
* 2-D maps of every image (PCA, and t-SNE when ``[neighbours] tsne``), seeded from the experiment's seed
  (``embedding.parquet``).

Validate, then act: every run's features file is read and checked against the split before anything is written.
Skipped (one line) when the features, the split and the settings are unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.entries import Inputs
from pipeline.artifacts.features import MissingFeatures, read_features
from pipeline.artifacts.io import read_parquet, write_parquet
from pipeline.artifacts.stamps import Stamp, up_to_date
from pipeline.config import NeighboursConfig
from pipeline.core.errors import PipelineError
from pipeline.core.neighbours import neighbour_table
from pipeline.core.projection import project_2d
from pipeline.stages.declarations import declared_inputs

NEIGHBOURS_VERSION = 2  # 2: the summary says how it searched (exact / ivf) and its recall


def runs_with_features(catalog: Catalog) -> list[str]:
    """Single-model runs whose folder holds ``features.npz`` (ensembles have no feature space of their own)."""
    return [r for r in catalog.run_ids_on_disk() if catalog.run(r).features.is_file()]


def read_run_features(path: Path, frame: pd.DataFrame, load: bool = True) -> np.ndarray | None:
    """The features of ``frame``'s images (in its order) from one run's ``features.npz``
    (:func:`~pipeline.artifacts.features.read_features`: a clear error when the file is unreadable); None, with a
    one-line notice, when it lacks images: a run trained before ``train`` wrote the training split's features, or
    for another split. Such a run is left out rather than stopping every other one. ``load=False`` checks without
    reading the features (see ``read_features``)."""
    try:
        return read_features(path, frame["image_id"].astype(str).to_numpy(), load)
    except MissingFeatures as exc:
        splits = set(frame.set_index("image_id").loc[exc.missing, "split"])
        which = "training" if "train" in splits else "val/test"
        print(f"neighbours: {path.parent.name} left out: its features.npz lacks {len(exc.missing)} {which} images (written by an "
              f"older `train`, or for another split); re-run `python -m pipeline train DIR --model {path.parent.name} --force`",
              flush=True)
        return None


def run_neighbours(exp_dir: Path | str, cfg: NeighboursConfig = NeighboursConfig(), seed: int = 0, fold: int = 0,
                   force: bool = False, inputs: Inputs | None = None) -> pd.DataFrame:
    """Write neighbours, their summary and the 2-D maps of every run with features; returns the summary.

    ``inputs``: the experiment's loaded inputs (the runner's); a fresh one by default."""
    exp_dir = Path(exp_dir)
    catalog = Catalog(exp_dir)
    start = time.perf_counter()
    runs = runs_with_features(catalog)
    if not runs:
        raise PipelineError(f"no run in {exp_dir} has features.npz; run `python -m pipeline train {exp_dir} --model MODEL` first")
    stamp = Stamp(catalog, "neighbours", {"version": NEIGHBOURS_VERSION, "k": cfg.k, "tsne": cfg.tsne, "seed": seed, "fold": fold,
                                          "approximate_above": cfg.approximate_above},
                  inputs=declared_inputs("neighbours", catalog) + [catalog.run(r).features for r in runs])
    outputs = [catalog.neighbours, catalog.neighbour_summary, catalog.embedding]
    if not force and stamp.is_current():
        summary = read_parquet(catalog.neighbour_summary)
        up_to_date("neighbours", f"{len(runs)} runs")
        return summary
    inputs = inputs or Inputs(exp_dir)
    frame = inputs.split_frame(fold)[["image_id", "split", "label", "patient_id"]]
    checked = {r: read_run_features(catalog.run(r).features, frame, load=False) for r in runs}  # validate every run first
    runs = [r for r in runs if checked[r] is not None]
    if not runs:
        raise PipelineError(f"no run in {exp_dir} has features of its training images; re-run `train --force` "
                            "(or `run --force train`) to write them")
    tables, summaries, maps = [], [], []
    for run_id in runs:  # one run's features in memory at a time
        features = read_run_features(catalog.run(run_id).features, frame)
        rows, summary = neighbour_table(run_id, frame, features, cfg.k, cfg.approximate_above, seed)
        tables.append(rows)
        summaries.append(summary)
        for method in ("pca", "tsne") if cfg.tsne else ("pca",):
            xy = project_2d(features, method, seed)
            maps.append(pd.DataFrame({"run_id": run_id, "method": method, "image_id": frame["image_id"].to_numpy(),
                                      "split": frame["split"].to_numpy(), "x": xy[:, 0], "y": xy[:, 1]}))
    summary = pd.concat(summaries, ignore_index=True)
    # through their catalog entries: both checked against their schemas before either replaces the old one
    inputs.save_all({"neighbours": pd.concat(tables, ignore_index=True), "embedding": pd.concat(maps, ignore_index=True)})
    write_parquet(summary, catalog.neighbour_summary)
    stamp.record(outputs, seconds=round(time.perf_counter() - start, 2))
    print(summary.round(3).to_string(index=False))
    return summary
