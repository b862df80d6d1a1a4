"""The embedding map's decimation and selection (issue 26): above the point budget a seeded sample that always holds
the kept (selected) points; a box or lasso resolves against every point, drawn or not."""

import numpy as np

from pipeline.core.sampling import decimate, in_box, in_polygon


def test_decimation_keeps_every_selected_point_and_is_seeded():
    keep = np.array([0, 5, 99_999, 123_456, 5])
    rows = decimate(200_000, 1_000, keep=keep, seed=3)
    assert set(keep) <= set(rows.tolist())
    assert 1_000 <= len(rows) <= 1_004 and len(np.unique(rows)) == len(rows) and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, decimate(200_000, 1_000, keep=keep, seed=3))  # reruns draw the same points
    assert np.array_equal(decimate(50, 1_000, keep=keep), np.arange(50))  # under the budget: everything


def test_box_and_lasso_select_by_hand():
    x = np.array([-0.1, 1.0, 2.0, 3.0, 1.5, 0.5])
    y = np.array([-0.1, 1.0, 2.0, 3.0, 0.2, 1.8])
    assert in_box(x, y, (2.5, 0.5), (0.5, 2.5)).tolist() == [1, 2, 5]  # reversed ranges are sorted; x = 0.5 is on the edge
    # triangle (0,0) (3,0) (0,3): inside strictly below x + y = 3
    assert in_polygon(x, y, [0, 3, 0], [0, 0, 3]).tolist() == [1, 4, 5]
    assert in_polygon(x, y, [0, 3, 0, 0], [0, 0, 3, 0]).tolist() == [1, 4, 5]  # a closed ring: the same
