"""Nearest training images in a model's feature space, and the same-patient neighbour rate.

Why: under an image-level split a model can recognise the *patient* rather than the disease. If the nearest
training image of a test image (cosine similarity of the pooled backbone features) usually comes from the
same patient, the split leaks, and that share measures the leak directly. Under a patient-level split it is
0 by construction, since no test patient has training images.

Exact search with numpy: at BreakHis scale (about 5,500 training x 2,400 val/test images, up to 1,536
features) a chunked matrix product takes about a second per model, so no approximate index is needed.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import PipelineError


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cosine_neighbours(query: np.ndarray, reference: np.ndarray, k: int = 5, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n_query x k) of the ``k`` most cosine-similar reference rows, most similar first, and their
    similarities. Ties are broken by the lower reference index, so results are deterministic."""
    query, reference = np.asarray(query), np.asarray(reference)
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise PipelineError(f"feature matrices do not match: query {query.shape}, reference {reference.shape}")
    if len(reference) == 0:
        raise PipelineError("no reference (training) features to search")
    k = min(k, len(reference))
    q, r = _unit_rows(query), _unit_rows(reference)
    idx = np.empty((len(q), k), dtype=np.int64)
    sim = np.empty((len(q), k), dtype=np.float32)
    for start in range(0, len(q), chunk):
        s = q[start : start + chunk] @ r.T
        order = _top_k(s, k)
        idx[start : start + chunk] = order
        sim[start : start + chunk] = np.take_along_axis(s, order, axis=1)
    return idx, sim


def _top_k(s: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest values, by value descending then index ascending.

    A partial partition finds the candidates (a full sort of every row costs ~3x more at BreakHis scale); rows with a
    tie across the k-th place are sorted in full, so the lower index always wins a tie."""
    cand = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.broadcast_to(np.arange(s.shape[1]), s.shape)
    vals = np.take_along_axis(s, cand, axis=1)
    kth = vals.min(axis=1, keepdims=True)
    order = np.lexsort((cand, -vals), axis=1)
    out = np.take_along_axis(cand, order, axis=1)
    tied = np.flatnonzero((s >= kth).sum(axis=1) > k)
    if len(tied):
        cols = np.broadcast_to(np.arange(s.shape[1]), (len(tied), s.shape[1]))
        out[tied] = np.lexsort((cols, -s[tied]), axis=1)[:, :k]
    return out


def same_patient_rate(query_patients: np.ndarray, reference_patients: np.ndarray, neighbour_idx: np.ndarray) -> float:
    """Share of query images whose nearest reference image (column 0 of ``neighbour_idx``) is of the same patient."""
    if len(query_patients) == 0:
        return float("nan")
    nearest = np.asarray(reference_patients)[np.asarray(neighbour_idx)[:, 0]]
    return float(np.mean(nearest == np.asarray(query_patients)))


def neighbour_table(run_id: str, frame, features: np.ndarray, k: int = 5):
    """The k nearest training images of every val/test image of one run, and its same-patient rate per split.

    ``frame`` has one row per row of ``features`` with ``image_id``, ``split``, ``label`` and ``patient_id``.
    Returns ``(rows, summary)``: rows (run_id, image_id, split, label, patient_id, rank, neighbour_id,
    neighbour_label, neighbour_patient, similarity), rank 1 the nearest; summary (run_id, split, images,
    same_patient_neighbour_rate).
    """
    import pandas as pd

    split = frame["split"].to_numpy()
    train, query = np.flatnonzero(split == "train"), np.flatnonzero(split != "train")
    if len(train) == 0:
        raise PipelineError(f"{run_id}: no training images among its features; re-run `train --force` for it")
    idx, sim = cosine_neighbours(features[query], features[train], k)
    k = idx.shape[1]
    ref = frame.iloc[train]
    q = frame.iloc[query]
    nearest = idx.ravel()
    rows = pd.DataFrame({
        "run_id": run_id,
        "image_id": np.repeat(q["image_id"].to_numpy(), k), "split": np.repeat(q["split"].to_numpy(), k),
        "label": np.repeat(q["label"].to_numpy(), k), "patient_id": np.repeat(q["patient_id"].to_numpy(), k),
        "rank": np.tile(np.arange(1, k + 1), len(query)),
        "neighbour_id": ref["image_id"].to_numpy()[nearest], "neighbour_label": ref["label"].to_numpy()[nearest],
        "neighbour_patient": ref["patient_id"].to_numpy()[nearest], "similarity": sim.ravel().astype(np.float32),
    })
    summary = []
    for name in sorted(set(q["split"])):
        part = np.flatnonzero(q["split"].to_numpy() == name)
        summary.append({"run_id": run_id, "split": name, "images": int(len(part)),
                        "same_patient_neighbour_rate": same_patient_rate(q["patient_id"].to_numpy()[part],
                                                                         ref["patient_id"].to_numpy(), idx[part])})
    return rows, pd.DataFrame(summary)


def with_neighbour_rate(metrics, summary):
    """``metrics`` with ``same_patient_neighbour_rate`` filled on the ``group_type == "all"`` rows of the runs in
    ``summary`` (NaN elsewhere: ensembles have no feature space of their own, breakdown rows have no rate)."""
    metrics = metrics.drop(columns=["same_patient_neighbour_rate"], errors="ignore")
    if summary is None or summary.empty:
        return metrics.assign(same_patient_neighbour_rate=np.nan)
    rates = summary[["run_id", "split", "same_patient_neighbour_rate"]].assign(group_type="all")
    return metrics.merge(rates, on=["run_id", "split", "group_type"], how="left")
