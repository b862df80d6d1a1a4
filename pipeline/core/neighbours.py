"""Nearest training images in a model's feature space, and the same-patient neighbour rate.

Why: under an image-level split a model can recognise the *patient* rather than the disease. If the nearest
training image of a test image (cosine similarity of the pooled backbone features) usually comes from the
same patient, the split leaks, and that share measures the leak directly. Under a patient-level split it is
0 by construction, since no test patient has training images.

Exact search is a blocked float32 matrix product with a running top-k that costs a small fraction of the product:
per block of 1,024 queries, the maximum of every 64-column chunk is one vectorised pass, the k-th largest chunk
maximum bounds the k-th largest similarity from below, and only the k chunks (more on ties) at or above it are
sorted. At ten times BreakHis (24,000 queries x 55,000 training images) a whole-row ``np.argpartition`` cost more
than the product it selected from (issue 26); FAISS's exact ``IndexFlatIP`` was measured 3.7x slower than numpy's
product here (its bundled BLAS), so it is used only for the approximate index above ``approximate_above`` training
images (IVF, whose recall against exact search is measured on a sample of queries and reported).
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import PipelineError

CHUNK_WIDTH = 64  # columns per chunk of the running top-k: its maxima are one pass; k chunks of 64 are sorted
RECALL_SAMPLE = 1000  # queries searched exactly to measure an approximate index's recall


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _check(query: np.ndarray, reference: np.ndarray) -> None:
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise PipelineError(f"feature matrices do not match: query {query.shape}, reference {reference.shape}")
    if len(reference) == 0:
        raise PipelineError("no reference (training) features to search")


def cosine_neighbours(query: np.ndarray, reference: np.ndarray, k: int = 5, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n_query x k) of the ``k`` most cosine-similar reference rows, most similar first, and their
    similarities. Exact; ties are broken by the lower reference index, so results are deterministic."""
    query, reference = np.asarray(query), np.asarray(reference)
    _check(query, reference)
    k = min(k, len(reference))
    return inner_product_top_k(_unit_rows(query), _unit_rows(reference), k, chunk)


def inner_product_top_k(q: np.ndarray, r: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``q @ r.T`` per row (value descending, then column ascending), block by block."""
    idx = np.empty((len(q), k), dtype=np.int64)
    sim = np.empty((len(q), k), dtype=np.float32)
    for start in range(0, len(q), chunk):
        s = q[start : start + chunk] @ r.T
        idx[start : start + chunk], sim[start : start + chunk] = _top_k(s, k)
    return idx, sim


def _top_k(s: np.ndarray, k: int, width: int = CHUNK_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest values of ``s`` and their columns, by value descending then column ascending.

    The columns are cut into chunks of ``width``; τ, the k-th largest chunk maximum of a row, is at most its k-th
    largest value (k chunks each hold a value >= τ), so every value of the top k, and every value tied with the k-th,
    lies in a chunk whose maximum is >= τ. Only those chunks are gathered and sorted: exact, ties included."""
    n, m = s.shape
    width = min(width, m // (16 * k))  # fewer candidates per row when rows are short: sorting them dominates there
    if width < 2:
        width = 1
    full = m // width
    maxima = s[:, : full * width].reshape(n, full, width).max(axis=2)
    if full * width < m:
        maxima = np.concatenate([maxima, s[:, full * width :].max(axis=1, keepdims=True)], axis=1)
    n_chunks = maxima.shape[1]
    tau = np.partition(maxima, n_chunks - k, axis=1)[:, n_chunks - k]
    hit = maxima >= tau[:, None]
    if (hit.sum(axis=1) == k).all():  # the usual case: exactly k chunks per row, one dense sort
        chunks = np.nonzero(hit)[1].reshape(n, k)
        cols = (chunks[:, :, None] * width + np.arange(width)).reshape(n, k * width)  # ascending within each row
        vals = np.take_along_axis(s, np.minimum(cols, m - 1), axis=1)
        vals[cols >= m] = -np.inf  # past the last column (a short last chunk): never among a row's k, which has k valid
        order = np.argsort(-vals, axis=1, kind="stable")[:, :k]  # stable: a tie goes to the lower column
        return np.take_along_axis(cols, order, axis=1), np.take_along_axis(vals, order, axis=1)
    rows, chunks = np.nonzero(hit)
    cols = (chunks[:, None] * width + np.arange(width)).ravel()
    rows = np.repeat(rows, width)
    keep = cols < m
    rows, cols = rows[keep], cols[keep]
    vals = s[rows, cols]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    take = (np.searchsorted(rows, np.arange(n))[:, None] + np.arange(k)).ravel()
    return cols[take].reshape(n, k), vals[take].reshape(n, k)


def approximate_neighbours(query: np.ndarray, reference: np.ndarray, k: int = 5, seed: int = 0,
                           nprobe: int = 32) -> tuple[np.ndarray, np.ndarray, float]:
    """Cosine top-k through a FAISS IVF index (inverted lists over k-means cells, ``nprobe`` cells searched), and its
    recall@k against exact search on a seeded sample of up to ``RECALL_SAMPLE`` queries.

    For training sets where the exact product costs too much (hundreds of thousands of images): the index is built
    in about one pass over the reference and searches a few percent of it. Returned rows are ordered by similarity
    then index, like the exact search."""
    import faiss

    query, reference = np.asarray(query), np.asarray(reference)
    _check(query, reference)
    k = min(k, len(reference))
    q, r = _unit_rows(query), _unit_rows(reference)
    n_cells = max(1, min(int(4 * np.sqrt(len(r))), len(r) // 39))
    quantizer = faiss.IndexFlatIP(r.shape[1])
    index = faiss.IndexIVFFlat(quantizer, r.shape[1], n_cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    index.cp.niter = 10  # k-means iterations (FAISS default 25): the cells only need to be good enough for nprobe to cover
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(r), size=min(len(r), 64 * n_cells), replace=False))
    index.train(r[sample])
    index.add(r)
    index.nprobe = min(nprobe, n_cells)
    sim, idx = index.search(q, k)
    if (idx < 0).any():  # fewer than k images in the cells searched: search those rows exactly
        bad = np.flatnonzero((idx < 0).any(axis=1))
        idx[bad], sim[bad] = inner_product_top_k(q[bad], r, k)
    order = np.lexsort((idx, -sim), axis=1)
    idx, sim = np.take_along_axis(idx, order, axis=1).astype(np.int64), np.take_along_axis(sim, order, axis=1)
    probe = np.sort(rng.choice(len(q), size=min(len(q), RECALL_SAMPLE), replace=False))
    exact, _ = inner_product_top_k(q[probe], r, k)
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(idx[probe], exact))
    recall = hits / (len(probe) * k) if len(probe) else float("nan")
    return idx, sim, float(recall)


def same_patient_rate(query_patients: np.ndarray, reference_patients: np.ndarray, neighbour_idx: np.ndarray) -> float:
    """Share of query images whose nearest reference image (column 0 of ``neighbour_idx``) is of the same patient."""
    if len(query_patients) == 0:
        return float("nan")
    nearest = np.asarray(reference_patients)[np.asarray(neighbour_idx)[:, 0]]
    return float(np.mean(nearest == np.asarray(query_patients)))


def neighbour_table(run_id: str, frame, features: np.ndarray, k: int = 5, approximate_above: int | None = None,
                    seed: int = 0):
    """The k nearest training images of every val/test image of one run, and its same-patient rate per split.

    ``frame`` has one row per row of ``features`` with ``image_id``, ``split``, ``label`` and ``patient_id``.
    Exact search unless the run has more than ``approximate_above`` training images (then a FAISS IVF index).
    Returns ``(rows, summary)``: rows (run_id, image_id, split, label, patient_id, rank, neighbour_id,
    neighbour_label, neighbour_patient, similarity), rank 1 the nearest; summary (run_id, split, images,
    same_patient_neighbour_rate, search: "exact" or "ivf", recall_at_k: 1.0 for exact search, else measured on a
    sample of queries against exact search).
    """
    import pandas as pd

    split = frame["split"].to_numpy()
    train, query = np.flatnonzero(split == "train"), np.flatnonzero(split != "train")
    if len(train) == 0:
        raise PipelineError(f"{run_id}: no training images among its features; re-run `train --force` for it")
    if approximate_above is not None and len(train) > approximate_above:
        idx, sim, recall = approximate_neighbours(features[query], features[train], k, seed=seed)
        search = "ivf"
    else:
        idx, sim = cosine_neighbours(features[query], features[train], k)
        search, recall = "exact", 1.0
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
                                                                         ref["patient_id"].to_numpy(), idx[part]),
                        "search": search, "recall_at_k": recall})
    return rows, pd.DataFrame(summary)


def with_neighbour_rate(metrics, summary):
    """``metrics`` with ``same_patient_neighbour_rate`` filled on the ``group_type == "all"`` rows of the runs in
    ``summary`` (NaN elsewhere: ensembles have no feature space of their own, breakdown rows have no rate)."""
    metrics = metrics.drop(columns=["same_patient_neighbour_rate"], errors="ignore")
    if summary is None or summary.empty:
        return metrics.assign(same_patient_neighbour_rate=np.nan)
    rates = summary[["run_id", "split", "same_patient_neighbour_rate"]].assign(group_type="all")
    return metrics.merge(rates, on=["run_id", "split", "group_type"], how="left")
