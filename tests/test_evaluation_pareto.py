"""Exact hypervolume and dominance, checked against independent brute-force computations."""

import itertools

import numpy as np
import pytest

from pslider_core.evaluation import default_reference, hypervolume, minmax_normalise, non_dominated


def grid_volume(points: np.ndarray, ref: np.ndarray) -> int:
    """Brute force for integer inputs: count the unit cells some point dominates (exact)."""
    top = points.max(axis=0)
    if np.any(top <= ref):
        return 0
    axes = [np.arange(low + 1, high + 1) for low, high in zip(ref, top)]  # upper corners of the cells
    corners = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(ref))
    covered = np.any(np.all(points[None, :, :] >= corners[:, None, :], axis=2), axis=1)
    return int(covered.sum())


def inclusion_exclusion_volume(points: np.ndarray, ref: np.ndarray) -> float:
    """Brute force for any inputs: volume of a union of boxes by inclusion-exclusion (exact)."""
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            corner = np.min(subset, axis=0)
            total += (-1) ** (size + 1) * np.prod(np.clip(corner - ref, 0, None))
    return total


def test_hand_checked_2d():
    # Staircase of three boxes: 1x3 + 1x2 + 1x1.
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [0, 0]) == 6.0
    assert hypervolume([[4, 1], [3, 3], [1, 4]], [0, 0]) == 11.0
    assert hypervolume([[2.5, 4.0]], [0.5, 1.0]) == 6.0


def test_hand_checked_3d_and_1d():
    # Three 2x1x1 boxes along each axis: 3*2 - 3*1 + 1 = 4.
    assert hypervolume([[2, 1, 1], [1, 2, 1], [1, 1, 2]], [0, 0, 0]) == 4.0
    assert hypervolume([[2, 3, 4]], [1, 1, 1]) == 1 * 2 * 3
    assert hypervolume([[3.0], [5.0], [2.0]], [1.0]) == 4.0


def test_points_not_strictly_better_than_ref_add_nothing():
    assert hypervolume([[0, 5]], [0, 0]) == 0.0
    assert hypervolume([[-1, 5], [5, -1]], [0, 0]) == 0.0
    assert hypervolume([[2, 2], [0, 9]], [0, 0]) == 4.0
    assert hypervolume(np.empty((0, 3)), [0, 0, 0]) == 0.0


@pytest.mark.parametrize("dims", [2, 3])
def test_matches_grid_brute_force_on_random_integer_sets(dims):
    rng = np.random.default_rng(dims)
    for _ in range(60):
        count = int(rng.integers(1, 9))
        points = rng.integers(-3, 7, size=(count, dims))
        ref = rng.integers(-4, 2, size=dims)
        assert hypervolume(points, ref) == grid_volume(points, ref)


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_matches_inclusion_exclusion_on_random_float_sets(dims):
    rng = np.random.default_rng(10 + dims)
    for _ in range(30):
        points = rng.normal(size=(int(rng.integers(1, 8)), dims))
        ref = rng.normal(size=dims) - 1.0
        assert hypervolume(points, ref) == pytest.approx(inclusion_exclusion_volume(points, ref), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_dominated_points_and_order_never_change_it(dims):
    rng = np.random.default_rng(20 + dims)
    for _ in range(20):
        points = rng.uniform(0, 1, size=(12, dims))
        ref = np.zeros(dims)
        expected = hypervolume(points, ref)
        worse = points[rng.integers(0, len(points), size=15)] - rng.uniform(0, 0.5, size=(15, dims))
        duplicates = points[:3]
        assert hypervolume(np.concatenate([points, worse, duplicates]), ref) == pytest.approx(expected, rel=1e-12)
        assert hypervolume(points[rng.permutation(len(points))], ref) == pytest.approx(expected, rel=1e-12)
        assert hypervolume(points[non_dominated(points)], ref) == pytest.approx(expected, rel=1e-12)


def test_non_dominated_against_pairwise_definition():
    rng = np.random.default_rng(3)
    points = rng.integers(0, 5, size=(40, 3)).astype(float)
    expected = [
        not any(np.all(other >= point) and np.any(other > point) for other in points) for point in points
    ]
    assert non_dominated(points).tolist() == expected
    # Equal points do not dominate each other; (1, 1) is dominated by (2, 2).
    assert non_dominated([[2, 2], [2, 2], [1, 1], [3, 0]]).tolist() == [True, True, False, True]


def test_minmax_normalise():
    points = np.array([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0]])
    out = minmax_normalise(points, lo=[1.0, 10.0, 5.0], hi=[3.0, 20.0, 5.0])
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]])  # constant reward -> 0
    np.testing.assert_allclose(minmax_normalise([2.0, 15.0, 5.0], [1, 10, 5], [3, 20, 5]), [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="hi must be >= lo"):
        minmax_normalise(points, lo=[0, 0, 0], hi=[1, -1, 1])
    with pytest.raises(ValueError, match="one value per reward"):
        minmax_normalise(points, lo=[0, 0], hi=[1, 1])


def test_default_reference():
    ref = default_reference([[[1, 5], [3, 2]], np.empty((0, 2)), [[0.5, 9]]])
    np.testing.assert_array_equal(ref, [0.5, 2])
    with pytest.raises(ValueError, match="same number of rewards"):
        default_reference([[[1, 2]], [[1, 2, 3]]])
    with pytest.raises(ValueError, match="at least one point"):
        default_reference([np.empty((0, 2))])


def test_invalid_input_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match=r"wrap a single reward vector as \[\[r1, r2"):
        hypervolume([1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        hypervolume([[1.0, np.nan]], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"ref must have one value per reward \(2\)"):
        hypervolume([[1.0, 2.0]], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="numbers shaped"):
        non_dominated([["a", "b"]])
