"""Preference grids to sweep at evaluation time, in one deterministic "sweep order"."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction

Weights = tuple[float, ...]


def weight_grid(num_rewards: int, n: int) -> list[Weights]:
    """Simplex lattice with step 1/(n-1), in sweep order.

    2 rewards: n points from (1, 0) to (0, 1). 3+ rewards: every w with w_m = k_m/(n-1),
    sum k_m = n-1 (C(n+num_rewards-2, num_rewards-1) points), ordered by descending
    lexicographic w, which for 2 rewards is exactly (1, 0) -> (0, 1). Each component is the
    correctly rounded float of its fraction (0.1 is the float 0.1, not an accumulated 0.30000000000000004),
    so weights print and compare cleanly; each tuple sums to 1 within one rounding error.
    """
    if isinstance(num_rewards, bool) or not isinstance(num_rewards, int) or num_rewards < 2:
        raise ValueError(f"num_rewards must be an int >= 2 (one weight per reward), got {num_rewards!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(
            f"n must be an int >= 2 (points per edge, including both ends), got {n!r}; "
            "for example n=11 gives steps of 0.1"
        )
    steps = n - 1
    return [
        tuple(float(Fraction(count, steps)) for count in counts)
        for counts in _compositions(steps, num_rewards)
    ]


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """All tuples of `parts` non-negative ints summing to `total`, descending lexicographic."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def sweep_sorted(weights: Iterable[Weights]) -> list[Weights]:
    """Weights in the order weight_grid produces them (descending lexicographic)."""
    return sorted(weights, reverse=True)
