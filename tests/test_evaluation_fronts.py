"""Front comparisons on hand-computed fronts (values on a 1/16 grid, exact in binary, so boundaries are exact)."""

import math

import numpy as np
import pytest

from pslider_core.evaluation import compare_fronts, dominated_share, end_extent, hv_ratio, weakly_dominated

FIXED = [(1.0, 0.0), (0.5, 0.5), (0.0, 0.9375)]
SLIDER = [(0.9375, 0.25), (0.5, 0.5), (0.25, 0.875)]


def test_weak_domination_counts_ties_and_the_tolerance():
    assert weakly_dominated(FIXED, SLIDER, tol=0).tolist() == [False, True, False]  # (0.5, 0.5) ties: weakly covered
    assert weakly_dominated(FIXED, SLIDER, tol=0.0625).tolist() == [True, True, True]  # each end 1/16 short
    assert weakly_dominated(FIXED, SLIDER, tol=0.05).tolist() == [False, True, False]
    assert dominated_share(FIXED, SLIDER, tol=0) == pytest.approx(1 / 3)
    assert weakly_dominated(FIXED, np.empty((0, 2))).tolist() == [False, False, False]
    assert math.isnan(dominated_share(np.empty((0, 2)), SLIDER))


def test_a_point_must_be_covered_by_one_point_not_by_two():
    # (0.5, 0.5) is below the hull of the two corners but no single corner covers it.
    assert weakly_dominated([(0.5, 0.5)], [(1.0, 0.0), (0.0, 1.0)], tol=0.25).tolist() == [False]


def test_end_extent_is_the_ratio_of_best_values():
    assert end_extent(SLIDER, FIXED).tolist() == pytest.approx([0.9375, 0.875 / 0.9375])
    ratio = end_extent([(2.0, -1.0)], [(1.0, -2.0)])
    assert ratio[0] == 2.0 and math.isnan(ratio[1])  # a best <= 0 says nothing as a ratio


def test_hypervolume_ratio_shares_the_reference():
    # (0.75, 0.25) and (0.25, 0.75) above (0, 0): 0.75 * 0.25 + 0.25 * 0.5 = 0.3125; (0.5, 0.5) alone: 0.25.
    assert hv_ratio([(0.75, 0.25), (0.25, 0.75)], [(0.5, 0.5)], ref=(0, 0)) == pytest.approx(1.25)
    assert math.isnan(hv_ratio(SLIDER, [(0.0, 0.0)], ref=(0, 0)))  # the other front adds nothing above the reference


def test_corners_inflate_the_ratio_but_not_the_other_metrics():
    corners = [(1.0, 0.0625), (0.0625, 1.0)]
    arc = [(0.875, 0.0625), (0.625, 0.625), (0.0625, 0.875)]  # a curve that falls short at both ends
    found = compare_fronts(arc, corners, ref=(0, 0), rewards=("a", "b"), tol=0.0625)
    assert found["hv_ratio"] == pytest.approx(0.421875 / 0.12109375)  # 3.5
    assert found["dominated_share"] == 0.0
    assert found["extent"] == {"a": 0.875, "b": 0.875}


def test_input_checks():
    with pytest.raises(ValueError, match="points have 2 rewards but `by` has 3"):
        weakly_dominated(FIXED, [(1.0, 1.0, 1.0)])
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        weakly_dominated(FIXED, SLIDER, tol=-0.1)
    with pytest.raises(ValueError, match="two non-empty point sets"):
        end_extent(np.empty((0, 2)), FIXED)
