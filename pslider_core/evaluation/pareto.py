"""Pareto dominance and exact hypervolume for reward vectors (maximisation: higher is better).

The hypervolume of a point set is the volume of the region that is dominated by at least one point
and dominates the reference point. It is computed exactly by slicing along the last reward and
recursing down to an exact 2-D sweep, so 2-D costs O(n log n), 3-D O(n^2 log n) and d-D
O(n^(d-1) log n): exact in every dimension, meant for the tens to hundreds of points an evaluation
sweep produces.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike


def as_points(points: ArrayLike, name: str = "points") -> np.ndarray:
    """Validate and return an (n_points, n_rewards) float array of finite reward vectors."""
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be numbers shaped (n_points, n_rewards), got {points!r}: {error}"
        ) from None
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D, shaped (n_points, n_rewards), got shape {array.shape}; "
            "wrap a single reward vector as [[r1, r2, ...]]"
        )
    if array.shape[1] == 0:
        raise ValueError(f"{name} has no reward columns (shape {array.shape}); pass at least one reward")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; drop or fix those scores first")
    return array


def _as_vector(vector: ArrayLike, size: int, name: str) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (size,):
        raise ValueError(f"{name} must have one value per reward ({size}), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values: {array.tolist()}")
    return array


def non_dominated(points: ArrayLike) -> np.ndarray:
    """Boolean mask of the points no other point dominates.

    q dominates p when q >= p in every reward and q > p in at least one. Equal points do not dominate
    each other, so duplicates of a front point are all kept. Use np.flatnonzero(mask) for indices.
    """
    array = as_points(points)
    mask = np.ones(len(array), dtype=bool)
    for index, point in enumerate(array):
        no_worse = np.all(array >= point, axis=1)
        better = np.any(array > point, axis=1)
        mask[index] = not np.any(no_worse & better)
    return mask


def hypervolume(points: ArrayLike, ref: ArrayLike) -> float:
    """Exact hypervolume dominated by ``points`` and bounded below by ``ref``.

    Points that are not strictly better than ``ref`` in every reward add nothing (their box is
    empty), and dominated points never change the value. An empty (0, n_rewards) set gives 0.
    """
    array = as_points(points)
    reference = _as_vector(ref, array.shape[1], "ref")
    inside = array[np.all(array > reference, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(_hypervolume(inside, reference))


def _hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of points that are all strictly better than ref (recursive slicing)."""
    dims = points.shape[1]
    if dims == 1:
        return float(points[:, 0].max() - ref[0])
    if dims == 2:
        order = np.lexsort((-points[:, 1], -points[:, 0]))  # x descending, ties: y descending
        xs, ys = points[order, 0], points[order, 1]
        best_before = np.maximum.accumulate(np.concatenate(([ref[1]], ys)))[:-1]
        return float(np.sum((xs - ref[0]) * np.clip(ys - best_before, 0.0, None)))
    front = points[non_dominated(points)]
    front = front[np.argsort(-front[:, -1], kind="stable")]
    tops = front[:, -1]
    bottoms = np.append(tops[1:], ref[-1])
    volume = 0.0
    for count, (top, bottom) in enumerate(zip(tops, bottoms), start=1):
        if top > bottom:  # the slab (bottom, top] is covered by the first `count` points
            volume += (top - bottom) * _hypervolume(front[:count, :-1], ref[:-1])
    return volume


def minmax_normalise(points: ArrayLike, lo: ArrayLike, hi: ArrayLike) -> np.ndarray:
    """Map each reward to (x - lo) / (hi - lo) so rewards on different scales weigh the same.

    Works on any array whose last axis is the reward axis (a point set or a single reference point).
    A reward with hi == lo carries no trade-off information and maps to 0.
    """
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 0:
        raise ValueError("points must have a reward axis, got a scalar")
    size = array.shape[-1]
    low = _as_vector(lo, size, "lo")
    high = _as_vector(hi, size, "hi")
    if np.any(high < low):
        raise ValueError(f"hi must be >= lo for every reward, got lo={low.tolist()} hi={high.tolist()}")
    span = high - low
    safe_span = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (array - low) / safe_span, 0.0)


def default_reference(point_sets: Iterable[ArrayLike]) -> np.ndarray:
    """Per-reward minimum over every point of every set: the usual reference when none is given."""
    arrays = [as_points(points, f"point set {index}") for index, points in enumerate(point_sets)]
    widths = {array.shape[1] for array in arrays}
    if len(widths) > 1:
        raise ValueError(f"all point sets must have the same number of rewards, got {sorted(widths)}")
    non_empty = [array for array in arrays if len(array)]
    if not non_empty:
        raise ValueError("default_reference needs at least one point; every point set is empty")
    return np.min(np.concatenate(non_empty), axis=0)
