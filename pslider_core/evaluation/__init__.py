"""Evaluation of a ParetoSlider model against baselines: scores on disk, fronts, metrics, pictures.

Pure library (no model code): the pslider-eval CLI samples images, scores them into a ScoreTable,
then calls compute_summary / plot_front / contact_sheet on the results.
"""

from .controllability import Controllability, average_ranks, controllability, monotonicity_violations, spearman
from .fronts import DOMINANCE_TOLERANCE, compare_fronts, dominated_share, end_extent, hv_ratio, weakly_dominated
from .grid import sweep_sorted, weight_grid
from .pareto import default_reference, hypervolume, minmax_normalise, non_dominated
from .scores import COLUMNS, MethodMeans, ScoreRow, ScoreTable, parse_weights_key, weights_key
from .summary import KINDS, SWEPT, check_means, compute_summary, format_table, write_summary

_PLOTS = ("contact_sheet", "method_colours", "plot_front", "video_strip")


def __getattr__(name: str):
    """Plot helpers load matplotlib on first use only (the ComfyUI pack imports the weight grid at start-up)."""
    if name in _PLOTS:
        from . import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "COLUMNS",
    "DOMINANCE_TOLERANCE",
    "KINDS",
    "SWEPT",
    "Controllability",
    "MethodMeans",
    "ScoreRow",
    "ScoreTable",
    "average_ranks",
    "check_means",
    "compare_fronts",
    "compute_summary",
    "contact_sheet",
    "controllability",
    "default_reference",
    "dominated_share",
    "end_extent",
    "format_table",
    "hv_ratio",
    "hypervolume",
    "method_colours",
    "minmax_normalise",
    "monotonicity_violations",
    "non_dominated",
    "parse_weights_key",
    "plot_front",
    "spearman",
    "sweep_sorted",
    "video_strip",
    "weakly_dominated",
    "weight_grid",
    "weights_key",
    "write_summary",
]
