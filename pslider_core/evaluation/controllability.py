"""Does each reward follow its own weight? Spearman correlation and monotonicity violations.

A slider is controllable when raising w_m raises reward m. Spearman's rho over the sweep measures the
overall trend (1 = perfectly increasing); the violation count says how often a single step of the
slider went the wrong way.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .pareto import as_points


def _as_series(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sweep point), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; drop or fix those scores first")
    return array


def average_ranks(values: ArrayLike) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span (as scipy's rankdata)."""
    array = _as_series(values, "values")
    order = np.argsort(array, kind="mergesort")
    ordered = array[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    ends = np.append(starts[1:], len(array))
    ranks = np.empty(len(array))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation with ties averaged.

    Returns NaN when x or y is constant: with no change on one side there is no ordering to agree
    with, so controllability is undefined (not zero). Callers report it as "undefined".
    """
    xs, ys = _as_series(x, "x"), _as_series(y, "y")
    if len(xs) != len(ys):
        raise ValueError(f"x and y must have the same length, got {len(xs)} and {len(ys)}")
    if len(xs) < 2:
        raise ValueError(f"spearman needs at least 2 points, got {len(xs)}")
    rank_x = average_ranks(xs) - (len(xs) + 1) / 2.0
    rank_y = average_ranks(ys) - (len(ys) + 1) / 2.0
    denominator = math.sqrt(float(np.sum(rank_x**2) * np.sum(rank_y**2)))
    if denominator == 0.0:
        return math.nan
    return float(np.clip(np.sum(rank_x * rank_y) / denominator, -1.0, 1.0))


def monotonicity_violations(
    weights: ArrayLike, values: ArrayLike, component: int, tol: float = 0.0
) -> tuple[int, int]:
    """Count slider steps where moving weight onto `component` lowered its reward.

    Definition (any number of rewards): for every other component j, group the sweep points whose
    remaining weights (all but `component` and j) are equal; each group is a line on which weight
    moves from j to `component`. Sort it by w[component]; each consecutive pair is one comparison,
    and a violation when the reward drops by more than `tol`. With 2 rewards this is the sweep
    order itself: n points give n-1 comparisons. Returns (violations, comparisons).
    """
    grid = as_points(weights, "weights")
    series = _as_series(values, "values")
    num_points, num_weights = grid.shape
    if len(series) != num_points:
        raise ValueError(f"values must have one entry per weight vector ({num_points}), got {len(series)}")
    if not 0 <= component < num_weights:
        raise ValueError(f"component must be in [0, {num_weights}), got {component}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    rounded = np.round(grid, 12)  # group keys must not split on float noise
    if len({tuple(row) for row in rounded}) != num_points:
        raise ValueError("weights contain duplicate vectors; average their scores into one point first")
    violations = comparisons = 0
    for other in range(num_weights):
        if other == component:
            continue
        keep = [axis for axis in range(num_weights) if axis not in (component, other)]
        lines: dict[tuple[float, ...], list[int]] = defaultdict(list)
        for index, row in enumerate(rounded):
            lines[tuple(row[keep])].append(index)
        for members in lines.values():
            ordered = sorted(members, key=lambda index: grid[index, component])
            for before, after in zip(ordered, ordered[1:]):
                comparisons += 1
                violations += int(series[after] < series[before] - tol)
    return violations, comparisons


@dataclass(frozen=True)
class Controllability:
    """How well one reward follows its weight across a sweep."""

    spearman: float  # NaN when the weight or the reward never changes (undefined)
    violations: int
    comparisons: int


def controllability(weights: ArrayLike, values: ArrayLike, component: int, tol: float = 0.0) -> Controllability:
    """Spearman of the reward with w[component] plus the monotonicity violation count."""
    grid = as_points(weights, "weights")
    if not 0 <= component < grid.shape[1]:
        raise ValueError(f"component must be in [0, {grid.shape[1]}), got {component}")
    violations, comparisons = monotonicity_violations(grid, values, component, tol)
    return Controllability(spearman(grid[:, component], values), violations, comparisons)
