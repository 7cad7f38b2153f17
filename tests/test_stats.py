"""Paired statistics of the comparison report, against values worked out by hand."""

import math

import pytest

from discomkd_geo.training.stats import mean_std, paired_difference, t_interval


def test_paired_difference_matches_the_hand_computation() -> None:
    # differences 0.10, 0.10, 0.05: mean 1/12, sd 0.05/sqrt(3), t = mean / (sd/sqrt(3)) = 5
    d = paired_difference([0.80, 0.90, 0.85], [0.70, 0.80, 0.80])
    assert d["mean"] == pytest.approx(1 / 12)
    assert d["wins"] == 3 and d["n"] == 3
    half = 4.302653 * (0.05 / math.sqrt(3)) / math.sqrt(3)  # t(0.975, df=2) from a table
    assert (d["low"], d["high"]) == pytest.approx((1 / 12 - half, 1 / 12 + half), abs=1e-6)
    # df = 2: the two-sided p-value of t has the closed form 1 - t / sqrt(2 + t^2)
    assert d["p"] == pytest.approx(1 - 5 / math.sqrt(27), abs=1e-6)
    assert d["differences"] == pytest.approx([0.10, 0.10, 0.05])


def test_paired_difference_degenerate_cases() -> None:
    one = paired_difference([0.9], [0.8])
    assert one["mean"] == pytest.approx(0.1) and one["low"] is None and one["p"] is None
    same = paired_difference([0.75, 0.5], [0.5, 0.25])  # constant difference: no test
    assert same["mean"] == 0.25 and same["p"] is None and same["wins"] == 2
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([0.9, 0.8], [0.8])


def test_mean_std_and_interval() -> None:
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)),
                                    "values": [1.0, 3.0]}
    assert mean_std([2.0])["std"] == 0.0
    low, high = t_interval([1.0, 3.0])  # df = 1: t(0.975) = 12.706205
    assert (low, high) == pytest.approx((2 - 12.706205, 2 + 12.706205), abs=1e-5)
