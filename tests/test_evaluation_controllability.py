"""Weight grids, Spearman (against scipy) and monotonicity violations."""

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats

from pslider_core.evaluation import (
    average_ranks,
    controllability,
    monotonicity_violations,
    spearman,
    sweep_sorted,
    weight_grid,
)


@pytest.mark.parametrize(("num_rewards", "n", "size"), [(2, 11, 11), (2, 2, 2), (3, 11, 66), (3, 3, 6), (4, 5, 35)])
def test_weight_grid_sizes_sums_and_order(num_rewards, n, size):
    grid = weight_grid(num_rewards, n)
    assert len(grid) == size == math.comb(n + num_rewards - 2, num_rewards - 1)
    assert len(set(grid)) == size
    assert grid == sweep_sorted(grid)
    for weights in grid:
        assert len(weights) == num_rewards
        assert math.fsum(weights) == pytest.approx(1.0, abs=1e-15)
        for value in weights:  # every component is the correctly rounded k / (n - 1)
            k = round(value * (n - 1))
            assert value == float(Fraction(k, n - 1))
    assert grid[0] == (1.0,) + (0.0,) * (num_rewards - 1)
    assert grid[-1] == (0.0,) * (num_rewards - 1) + (1.0,)


def test_two_reward_grid_is_the_sweep_from_first_to_second_reward():
    grid = weight_grid(2, 11)
    assert [w[1] for w in grid] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert all(w0 + w1 == 1.0 for w0, w1 in grid)
    assert weight_grid(3, 3) == [(1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 1.0, 0.0),
                                 (0.0, 0.5, 0.5), (0.0, 0.0, 1.0)]


@pytest.mark.parametrize(("num_rewards", "n"), [(1, 5), (2, 1), (2, 0), (True, 3), (2, 2.5)])
def test_weight_grid_rejects_bad_sizes(num_rewards, n):
    with pytest.raises(ValueError, match="must be an int"):
        weight_grid(num_rewards, n)


def test_ranks_and_spearman_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        size = int(rng.integers(2, 30))
        x = rng.integers(0, 4, size=size).astype(float)  # many ties
        y = rng.integers(0, 6, size=size) + 0.5 * rng.integers(0, 2, size=size)
        np.testing.assert_allclose(average_ranks(x), scipy.stats.rankdata(x))
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([0, 0.5, 1], [1, 5, 9]) == 1.0
    assert spearman([0, 0.5, 1], [9, 5, 1]) == -1.0


def test_spearman_of_constant_input_is_nan_like_scipy():
    assert math.isnan(spearman([0.0, 0.5, 1.0], [2.0, 2.0, 2.0]))
    assert math.isnan(spearman([1.0, 1.0], [0.0, 3.0]))
    with pytest.warns(scipy.stats.ConstantInputWarning):
        assert math.isnan(scipy.stats.spearmanr([0.0, 0.5, 1.0], [2.0, 2.0, 2.0]).statistic)
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2 points"):
        spearman([1], [1])


def test_two_reward_violations_follow_the_sweep():
    grid = weight_grid(2, 5)  # w0 = 1, .75, .5, .25, 0
    reward0 = [5.0, 4.0, 4.5, 2.0, 1.0]  # along rising w0: 1, 2, 4.5, 4, 5 -> one drop of 0.5
    assert monotonicity_violations(grid, reward0, component=0) == (1, 4)
    assert monotonicity_violations(grid, reward0, component=0, tol=0.6) == (0, 4)
    assert monotonicity_violations(grid, [2.0, 2.0, 1.0, 1.0, 1.0], component=0) == (0, 4)  # flat is no violation
    reward1 = [1.0, 2.0, 3.0, 2.0, 1.0]  # along rising w1: 1, 2, 3, 2, 1 -> two drops
    result = controllability(grid, reward1, component=1)
    assert (result.violations, result.comparisons) == (2, 4)
    assert result.spearman == pytest.approx(scipy.stats.spearmanr([0, .25, .5, .75, 1], reward1).statistic)


def test_three_reward_violations_count_moves_of_weight_onto_the_reward():
    grid = np.array(weight_grid(3, 3))
    # Reward 0 that rises with w0: no violations over the 6 moves onto w0 (3 from w1, 3 from w2).
    assert monotonicity_violations(grid, grid[:, 0], component=0) == (0, 6)
    assert monotonicity_violations(grid, -grid[:, 0], component=0) == (6, 6)
    # Reward 0 = w0 + 2 w2: moving weight from w2 to w0 lowers it (3 moves), from w1 raises it.
    assert monotonicity_violations(grid, grid[:, 0] + 2 * grid[:, 2], component=0) == (3, 6)
    result = controllability(grid, grid[:, 1] ** 2, component=1)
    assert (result.spearman, result.violations, result.comparisons) == (1.0, 0, 6)


def test_violation_input_checks():
    grid = weight_grid(2, 3)
    with pytest.raises(ValueError, match="duplicate vectors"):
        monotonicity_violations(grid + grid[:1], [1, 2, 3, 4], component=0)
    with pytest.raises(ValueError, match="one entry per weight vector"):
        monotonicity_violations(grid, [1, 2], component=0)
    with pytest.raises(ValueError, match="component must be in"):
        controllability(grid, [1, 2, 3], component=2)
