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
    cols = np.arange(len(r))
    for start in range(0, len(q), chunk):
        s = q[start : start + chunk] @ r.T
        # sort by similarity descending, then reference index ascending
        order = np.lexsort((np.broadcast_to(cols, s.shape), -s), axis=1)[:, :k]
        idx[start : start + chunk] = order
        sim[start : start + chunk] = np.take_along_axis(s, order, axis=1)
    return idx, sim


def same_patient_rate(query_patients: np.ndarray, reference_patients: np.ndarray, neighbour_idx: np.ndarray) -> float:
    """Share of query images whose nearest reference image (column 0 of ``neighbour_idx``) is of the same patient."""
    if len(query_patients) == 0:
        return float("nan")
    nearest = np.asarray(reference_patients)[np.asarray(neighbour_idx)[:, 0]]
    return float(np.mean(nearest == np.asarray(query_patients)))
