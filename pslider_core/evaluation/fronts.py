"""Comparing two fronts in ways that corner points cannot inflate (maximisation: higher is better).

A hypervolume ratio against runs that collapsed to the corners is large for any curve through the interior, because
corner points span thin boxes. These metrics ask the questions that matter instead: does one front cover every point
of the other (weak domination, with a tolerance for evaluation noise), and does it reach as far along each reward
(extent)? The hypervolume ratio is kept, against the same reference point, for fronts whose interiors compete.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from .pareto import as_points, hypervolume

DOMINANCE_TOLERANCE = 0.01  # reward units: about the noise of a 50-sample mean of a [0, 1] reward


def weakly_dominated(points: ArrayLike, by: ArrayLike, tol: float = DOMINANCE_TOLERANCE) -> np.ndarray:
    """Mask over `points`: True where some point q of `by` has q >= p - tol in every reward."""
    array, cover = as_points(points), as_points(by, "by")
    if array.shape[1] != cover.shape[1]:
        raise ValueError(f"points have {array.shape[1]} rewards but `by` has {cover.shape[1]}; compare one reward set")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol}")
    if not len(cover):
        return np.zeros(len(array), dtype=bool)
    return np.all(cover[None, :, :] >= array[:, None, :] - tol, axis=2).any(axis=1)


def dominated_share(points: ArrayLike, by: ArrayLike, tol: float = DOMINANCE_TOLERANCE) -> float:
    """Share of `points` that `by` weakly dominates (see `weakly_dominated`); NaN for no points."""
    mask = weakly_dominated(points, by, tol)
    return float(mask.mean()) if len(mask) else math.nan


def end_extent(points: ArrayLike, reference: ArrayLike) -> np.ndarray:
    """Per reward: the best value of `points` divided by the best of `reference`, how far each end reaches.

    A ratio of best values reads right for rewards >= 0 (all the toy's); where the reference's best is <= 0 it is
    NaN, since the ratio then says nothing.
    """
    array, other = as_points(points), as_points(reference, "reference")
    if array.shape[1] != other.shape[1] or not len(array) or not len(other):
        raise ValueError(f"end_extent needs two non-empty point sets of one reward set, got shapes {array.shape} and "
                         f"{other.shape}")
    best, best_other = array.max(axis=0), other.max(axis=0)
    safe = np.where(best_other > 0, best_other, 1.0)
    return np.where(best_other > 0, best / safe, math.nan)


def hv_ratio(points: ArrayLike, other: ArrayLike, ref: ArrayLike) -> float:
    """hypervolume(points) / hypervolume(other), one reference point for both; NaN when `other`'s is 0."""
    below = hypervolume(other, ref)
    return hypervolume(points, ref) / below if below > 0 else math.nan


def compare_fronts(points: ArrayLike, other: ArrayLike, ref: ArrayLike, rewards: tuple[str, ...],
                   tol: float = DOMINANCE_TOLERANCE) -> dict[str, float | dict[str, float]]:
    """The three comparisons of `points` against `other`: hv_ratio, the share of `other`'s points that `points`
    weakly dominate, and the extent of each reward (NaN where undefined; summary.json writes null)."""
    return {
        "hv_ratio": hv_ratio(points, other, ref),
        "dominated_share": dominated_share(other, points, tol),
        "extent": dict(zip(rewards, map(float, end_extent(points, other)))),
    }
