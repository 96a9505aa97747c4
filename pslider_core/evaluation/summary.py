"""summary.json: hypervolume, non-dominated points and controllability per evaluated method.

Every swept method (ParetoSlider or LoRA soup) is also compared with the union of the fixed-weights runs, and every
ParetoSlider with every soup, by `fronts.compare_fronts`: hypervolume ratio, share of the other's points it weakly
dominates (within `dominance_tol`), extent of each reward. All rewards are maximised. The reference point is the
per-reward minimum over every method's points unless one is given; hypervolumes are also reported after min-max
normalising each reward over all methods, so rewards on different scales count equally. JSON has no NaN: an undefined
number (a Spearman correlation over a reward or weight that never changed, a ratio over an empty union) is null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text_atomic
from .controllability import controllability
from .fronts import DOMINANCE_TOLERANCE, compare_fronts
from .pareto import default_reference, hypervolume, minmax_normalise, non_dominated
from .scores import MethodMeans

KINDS = ("pareto_slider", "fixed_weights", "base", "soup")
SWEPT = ("pareto_slider", "soup")  # kinds evaluated along a weight grid


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def check_means(
    means: Mapping[str, MethodMeans], kinds: Mapping[str, str]
) -> tuple[tuple[str, ...], int | None]:
    """Validate methods and kinds together; return the shared reward names and the weight vector length."""
    if not means:
        raise ValueError("means is empty; score at least one method first")
    rewards = next(iter(means.values())).rewards
    weight_sizes = set()
    for method, method_means in means.items():
        if not isinstance(method_means, MethodMeans):
            raise TypeError(
                f"means[{method!r}] must be a MethodMeans (from ScoreTable.means()), got {type(method_means).__name__}"
            )
        kind = kinds.get(method)
        if kind not in KINDS:
            raise ValueError(f"method {method!r} has kind {kind!r}; give it one of {list(KINDS)} in kinds")
        if method_means.rewards != rewards:
            raise ValueError(
                f"method {method!r} has rewards {list(method_means.rewards)} but others have {list(rewards)}; "
                "take all means from one ScoreTable.means(rewards) call"
            )
        if kind in SWEPT and not method_means.has_weights:
            raise ValueError(f"{kind} method {method!r} has no weights; score it at the points of a weight grid")
        if method_means.has_weights:
            weight_sizes.update(len(weights) for weights in method_means.weights)
    if len(weight_sizes) > 1:
        raise ValueError(
            f"methods use weight vectors of different lengths {sorted(weight_sizes)}; evaluate one reward set at a time"
        )
    return rewards, weight_sizes.pop() if weight_sizes else None


def _weight_components(
    rewards: Sequence[str], num_weights: int | None, weight_index: Mapping[str, int] | None
) -> dict[str, int]:
    if num_weights is None:
        return {}
    if weight_index is None:
        if len(rewards) != num_weights:
            raise ValueError(
                f"the means have {len(rewards)} rewards but w has {num_weights} components, so it is unclear "
                "which weight each reward follows; pass weight_index={reward: component} (rewards left out "
                "get no controllability score)"
            )
        return {reward: index for index, reward in enumerate(rewards)}
    for reward, index in weight_index.items():
        if reward not in rewards:
            raise ValueError(f"weight_index names reward {reward!r}, which is not among {list(rewards)}")
        if not 0 <= index < num_weights:
            raise ValueError(f"weight_index[{reward!r}] = {index} is outside the {num_weights} weight components")
    return dict(weight_index)


def _points(method_means: MethodMeans) -> list[dict[str, Any]]:
    front = non_dominated(method_means.values)
    return [
        {
            "weights": None if weights is None else list(weights),
            "means": dict(zip(method_means.rewards, map(float, values))),
            "counts": dict(zip(method_means.rewards, map(int, counts))),
            "non_dominated": bool(is_front),
        }
        for weights, values, counts, is_front in zip(
            method_means.weights, method_means.values, method_means.counts, front
        )
    ]


def _controllability(method_means: MethodMeans, components: Mapping[str, int], tol: float) -> dict[str, Any] | None:
    """Per-reward controllability, or None when the method has no sweep (base model, one point)."""
    if not method_means.has_weights or len(method_means.weights) < 2 or not components:
        return None
    grid = np.asarray(method_means.weights)
    entry = {}
    for reward, component in components.items():
        values = method_means.values[:, method_means.rewards.index(reward)]
        result = controllability(grid, values, component, tol)
        entry[reward] = {
            "weight_component": component,
            "spearman": _number(result.spearman),
            "violations": result.violations,
            "comparisons": result.comparisons,
        }
    return entry


def compute_summary(
    means: Mapping[str, MethodMeans],
    kinds: Mapping[str, str],
    *,
    ref: Sequence[float] | None = None,
    weight_index: Mapping[str, int] | None = None,
    tol: float = 0.0,
    dominance_tol: float = DOMINANCE_TOLERANCE,
) -> dict[str, Any]:
    """Metrics for every method; see the module docstring for conventions.

    kinds maps each method to "pareto_slider", "fixed_weights", "soup" or "base". weight_index says which
    weight component each reward should follow (default: reward i follows w_i, which needs as many
    rewards as weight components). tol is the drop a slider step may cause before it counts as a
    monotonicity violation; dominance_tol (reward units) the shortfall a point may have and still
    weakly dominate another.
    """
    rewards, num_weights = check_means(means, kinds)
    components = _weight_components(rewards, num_weights, weight_index)
    all_values = [method_means.values for method_means in means.values()]
    lo, hi = default_reference(all_values), np.max(np.concatenate(all_values), axis=0)
    try:
        reference = lo.copy() if ref is None else np.asarray(ref, dtype=np.float64)
    except (TypeError, ValueError):
        reference = np.empty(0)
    if reference.shape != (len(rewards),) or not np.all(np.isfinite(reference)):
        raise ValueError(f"ref must be {len(rewards)} finite numbers (one per reward {list(rewards)}), got {ref!r}")
    reference_normalised = minmax_normalise(reference, lo, hi)

    def volumes(values: np.ndarray) -> dict[str, float]:
        return {
            "hypervolume": hypervolume(values, reference),
            "hypervolume_normalised": hypervolume(minmax_normalise(values, lo, hi), reference_normalised),
        }

    def versus(values: np.ndarray, other: np.ndarray) -> dict[str, Any]:
        found = compare_fronts(values, other, reference, rewards, dominance_tol)
        return {"hv_ratio": _number(found["hv_ratio"]), "dominated_share": _number(found["dominated_share"]),
                "extent": {reward: _number(value) for reward, value in found["extent"].items()}}

    fixed = [means[method].values for method in means if kinds[method] == "fixed_weights"]
    union = {"num_points": sum(map(len, fixed)), **volumes(np.concatenate(fixed))} if fixed else None
    soups = [method for method in means if kinds[method] == "soup"]
    methods: dict[str, Any] = {}
    for method, method_means in means.items():
        entry = {"kind": kinds[method], "num_points": len(method_means.weights), **volumes(method_means.values)}
        if kinds[method] in SWEPT:
            entry["vs_fixed_union"] = versus(method_means.values, np.concatenate(fixed)) if fixed else None
            entry["hv_ratio_vs_fixed_union"] = entry["vs_fixed_union"]["hv_ratio"] if fixed else None
        if kinds[method] == "pareto_slider" and soups:
            entry["vs_soups"] = {soup: versus(method_means.values, means[soup].values) for soup in soups}
        entry["controllability"] = _controllability(method_means, components, tol)
        entry["points"] = _points(method_means)
        methods[method] = entry

    labels = [(method, weights) for method, method_means in means.items() for weights in method_means.weights]
    overall = non_dominated(np.concatenate(all_values))
    return {
        "rewards": list(rewards),
        "reference": reference.tolist(),
        "reference_given": ref is not None,
        "normalisation": {"lo": lo.tolist(), "hi": hi.tolist()},
        "reference_normalised": reference_normalised.tolist(),
        "dominance_tolerance": dominance_tol,
        "methods": methods,
        "fixed_weights_union": union,
        "non_dominated": [
            {"method": method, "weights": None if weights is None else list(weights)}
            for (method, weights), keep in zip(labels, overall)
            if keep
        ],
    }


def write_summary(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write summary.json atomically (temp file + rename; mode from the umask), strict JSON."""
    return write_text_atomic(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def _format(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def format_table(summary: Mapping[str, Any]) -> str:
    """Plain-text table of the summary, one row per method, for printing."""
    rewards = summary["rewards"]
    header = ["method", "kind", "points", "HV", "HV norm", "HV/fixed", "fixed covered"]
    header += [f"rho {reward}" for reward in rewards] + [f"viol {reward}" for reward in rewards]
    rows = [header]
    for method, entry in summary["methods"].items():
        control = entry["controllability"] or {}
        row = [
            method,
            entry["kind"],
            str(entry["num_points"]),
            _format(entry["hypervolume"]),
            _format(entry["hypervolume_normalised"]),
            _format(entry.get("hv_ratio_vs_fixed_union"), 3),
            _format((entry.get("vs_fixed_union") or {}).get("dominated_share"), 3),
        ]
        row += [_format(control[reward]["spearman"], 3) if reward in control else "-" for reward in rewards]
        row += [
            f"{control[reward]['violations']}/{control[reward]['comparisons']}" if reward in control else "-"
            for reward in rewards
        ]
        rows.append(row)
    union = summary["fixed_weights_union"]
    if union is not None:
        rows.append(
            ["(union of fixed)", "fixed_weights", str(union["num_points"]), _format(union["hypervolume"]),
             _format(union["hypervolume_normalised"]), "1", "1"] + ["-"] * (2 * len(rewards))
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    reference = ", ".join(f"{reward}={value:.4g}" for reward, value in zip(rewards, summary["reference"]))
    source = "given" if summary["reference_given"] else "per-reward minimum"
    notes = [f"reference point ({source}): {reference}"]
    if union is not None:
        notes.append(f"fixed covered: share of the fixed runs' points weakly dominated (within "
                     f"{summary['dominance_tolerance']:g}) by the method's points")
    return "\n".join(lines + notes)
