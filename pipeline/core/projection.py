"""2-D maps of a model's feature space (PCA and t-SNE), for the dashboard's embedding map.

Why both: PCA is linear and fast, so distances along its axes mean something; t-SNE shows local structure
(clusters of one patient's images) that PCA flattens. Features are L2-normalised first, so the maps agree with
the cosine neighbours. t-SNE runs on the first 50 principal components (scikit-learn's advice for speed), seeded.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import PipelineError

METHODS = ("pca", "tsne")
SMALL_MAP = 2000  # images: below this, t-SNE runs on one thread


def project_2d(features: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """An (n, 2) float32 map of ``features`` (n x d) by ``method`` (``pca`` or ``tsne``), deterministic for a seed."""
    from sklearn.decomposition import PCA

    if method not in METHODS:
        raise PipelineError(f"unknown projection {method!r} (choose one of {', '.join(METHODS)})")
    x = np.array(features, dtype=np.float32)  # our own copy: normalised and centred in place (one n x d float32 array)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    if n < 3:
        raise PipelineError(f"a 2-D map needs at least 3 images, got {n}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed, copy=False).fit_transform(x).astype(np.float32)
    from sklearn.manifold import TSNE

    from threadpoolctl import threadpool_limits

    reduced = PCA(n_components=min(50, n, x.shape[1]), random_state=seed).fit_transform(x) if x.shape[1] > 50 else x
    perplexity = float(min(30.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # Small maps gain nothing from OpenMP threads, and on a busy machine their barriers cost ~10x (measured: 60 points,
    # 6 s with 2 threads under load vs 0.7 s with one); large maps keep every core.
    with threadpool_limits(1 if n < SMALL_MAP else None):
        return tsne.fit_transform(reduced).astype(np.float32)
