"""Exact top-k by the running chunk selection equals a numpy brute force (full product, stable sort), ties included;
the FAISS IVF index above the threshold finds the planted nearest images and reports its recall honestly."""

import numpy as np
import pandas as pd
import pytest

from pipeline.core.neighbours import _top_k, approximate_neighbours, cosine_neighbours, neighbour_table


def brute_force(q: np.ndarray, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full similarity matrix, each row sorted by (-similarity, index) with a stable sort: the tie rule by definition."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    s = (qn.astype(np.float32) @ rn.astype(np.float32).T)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


@pytest.mark.parametrize("n_ref", [7, 300, 2_000, 5_123])
def test_exact_top_k_equals_numpy_brute_force_with_many_ties(n_ref):
    rng = np.random.default_rng(n_ref)
    # small integer features: many exactly equal similarities (duplicated directions), so ties straddle the k-th place
    ref = rng.integers(-2, 3, size=(n_ref, 6)).astype(np.float32)
    ref[np.all(ref == 0, axis=1)] = 1.0
    query = rng.integers(-2, 3, size=(97, 6)).astype(np.float32)
    query[np.all(query == 0, axis=1)] = 1.0
    for k in (1, 5, 7):
        got_idx, got_sim = cosine_neighbours(query, ref, k=k, chunk=40)
        want_idx, want_sim = brute_force(query, ref, min(k, n_ref))
        assert np.array_equal(got_idx, want_idx)
        assert np.allclose(got_sim, want_sim, atol=1e-6)


def test_exact_top_k_on_continuous_features_and_a_tie_planted_in_different_chunks():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(4_000, 32)).astype(np.float32)
    query = rng.normal(size=(50, 32)).astype(np.float32)
    ref[3_999] = ref[10] = ref[700] = query[0] * 2  # three copies of query 0's direction, far apart in the columns
    idx, sim = cosine_neighbours(query, ref, k=2)
    assert idx[0].tolist() == [10, 700] and np.allclose(sim[0], 1.0, atol=1e-6)
    want_idx, _ = brute_force(query, ref, 2)
    assert np.array_equal(idx[1:], want_idx[1:])


def test_chunk_selection_keeps_every_value_tied_with_the_kth():
    # row: 200 columns, width 8 -> 25 chunks; the value 5 appears in chunks 0, 12 and 24; k = 2 -> columns 3 and 100
    s = np.zeros((1, 200), dtype=np.float32)
    s[0, [3, 100, 199]] = 5.0
    idx, vals = _top_k(s, 2, width=8)
    assert idx.tolist() == [[3, 100]] and vals.tolist() == [[5.0, 5.0]]


def test_ivf_index_finds_planted_neighbours_and_reports_recall():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(3_000, 16)).astype(np.float32)
    query = ref[rng.choice(3_000, 200, replace=False)] + 0.01 * rng.normal(size=(200, 16)).astype(np.float32)
    idx, sim, recall = approximate_neighbours(query, ref, k=3, seed=0, nprobe=64)
    exact, _ = brute_force(query, ref, 3)
    measured = np.mean([len(np.intersect1d(a, b)) / 3 for a, b in zip(idx, exact)])
    assert recall == pytest.approx(measured)  # every query is in the sample here (200 < RECALL_SAMPLE)
    assert recall > 0.9 and np.array_equal(idx[:, 0], exact[:, 0])
    assert np.all(np.diff(sim, axis=1) <= 0)


def test_neighbour_table_switches_to_the_index_above_the_threshold():
    rng = np.random.default_rng(3)
    n = 600
    frame = pd.DataFrame({"image_id": [f"i{j}" for j in range(n)], "split": ["train"] * 500 + ["test"] * 100,
                          "label": rng.integers(0, 2, n), "patient_id": [f"p{j % 7}" for j in range(n)]})
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    _, exact = neighbour_table("r", frame, feats, k=3)
    _, approx = neighbour_table("r", frame, feats, k=3, approximate_above=100)
    assert exact["search"].tolist() == ["exact"] and exact["recall_at_k"].tolist() == [1.0]
    assert approx["search"].tolist() == ["ivf"] and 0 < approx["recall_at_k"].iloc[0] <= 1


@pytest.mark.parametrize("n_ref", [5_545, 6_400])  # a short last chunk, and none
def test_exact_top_k_without_ties_takes_the_dense_path_and_equals_brute_force(n_ref):
    rng = np.random.default_rng(n_ref)
    ref = rng.normal(size=(n_ref, 24)).astype(np.float32)
    query = rng.normal(size=(300, 24)).astype(np.float32)
    idx, sim = cosine_neighbours(query, ref, k=5, chunk=128)
    want_idx, want_sim = brute_force(query, ref, 5)
    assert np.array_equal(idx, want_idx) and np.allclose(sim, want_sim, atol=1e-6)
    assert (idx >= 0).all() and (idx < n_ref).all() and np.isfinite(sim).all()
