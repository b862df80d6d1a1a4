"""The README's protocol wall-time estimates: the arithmetic checked by hand."""

import pytest

from tools.estimate import GFLOPS, makespan, protocol_hours, run_seconds


def test_run_seconds_by_hand():
    # B0 at 500 img/s, one epoch, no start-up: 5545/500 train + 1182/1500 val + 7909/1500 final prediction
    assert run_seconds("v1_b0", 500, epochs=1, start_s=0) == pytest.approx(11.09 + 0.788 + 5.272666, rel=1e-6)
    # four times the FLOPs of B0 (at the same anchor) takes four times as long
    GFLOPS["_x4"] = 4 * GFLOPS["v1_b0"]
    try:
        assert run_seconds("_x4", 500, epochs=1, start_s=0) == pytest.approx(4 * run_seconds("v1_b0", 500, epochs=1, start_s=0))
    finally:
        del GFLOPS["_x4"]


def test_longest_first_packing_by_hand():
    assert makespan([3, 3, 2, 2, 2], 2) == 7  # 3|3, 5|3, 5|5, 7|5
    assert makespan([5, 1, 1, 1], 4) == 5 and makespan([5, 1, 1, 1], 1) == 8


def test_protocol_on_one_gpu_is_the_sum_of_its_runs():
    total = sum(run_seconds(m, 500) for m in GFLOPS) * 6
    assert protocol_hours(1, 500) == pytest.approx(total / 3600)
    assert protocol_hours(8, 500) >= run_seconds("v2_s", 500) / 3600  # never shorter than the longest run
