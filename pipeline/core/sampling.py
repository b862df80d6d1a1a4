"""Which points a scatter draws when there are too many, and which points a box or lasso holds.

Why: at ten times BreakHis an embedding map has 80,000 points per run; sending and drawing all of them on every
rerun costs seconds (issue 26). Above a point budget the map draws a seeded uniform sample, always including the
points the user selected, and a selection (box or lasso, in data coordinates) is resolved against the full set,
so the listed images are every image in the region, not only the drawn ones.
"""

from __future__ import annotations

import numpy as np


def decimate(n: int, budget: int, keep: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Sorted row numbers to draw out of ``n``: all when ``n <= budget``; else ``budget`` rows drawn uniformly
    without replacement (seeded, so reruns draw the same points) plus every row in ``keep``."""
    keep = np.unique(np.asarray(keep if keep is not None else [], dtype=np.int64))
    if n <= budget:
        return np.arange(n)
    sample = np.random.default_rng(seed).choice(n, size=budget, replace=False)
    return np.union1d(sample, keep[(keep >= 0) & (keep < n)])


def in_box(x: np.ndarray, y: np.ndarray, x_range: tuple[float, float], y_range: tuple[float, float]) -> np.ndarray:
    """Row numbers of the points inside the axis-aligned box (edges included)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    (x0, x1), (y0, y1) = sorted(x_range), sorted(y_range)
    return np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))


def in_polygon(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Row numbers of the points inside the polygon (px, py) by the even-odd rule (ray casting), vectorised."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    px, py = np.asarray(px, dtype=float), np.asarray(py, dtype=float)
    inside = np.zeros(len(x), dtype=bool)
    for i in range(len(px)):
        j = i - 1
        xi, yi, xj, yj = px[i], py[i], px[j], py[j]
        crosses = (yi > y) != (yj > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = (xj - xi) * (y - yi) / (yj - yi) + xi
        inside ^= crosses & (x < at)
    return np.flatnonzero(inside)
