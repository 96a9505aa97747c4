"""summary.json metrics on hand-checked fronts, and the printed table."""

import json
import math

import numpy as np
import pytest

from pslider_core.evaluation import (
    MethodMeans,
    ScoreRow,
    ScoreTable,
    compute_summary,
    format_table,
    hypervolume,
    weight_grid,
    write_summary,
)

REWARDS = ("photo", "sketch")
KINDS = {"slider": "pareto_slider", "fixed": "fixed_weights", "base": "base"}


def method(weights, values, rewards=REWARDS):
    values = np.asarray(values, dtype=float)
    return MethodMeans(tuple(rewards), tuple(weights), values, np.ones(values.shape, dtype=int))


@pytest.fixture
def means():
    return {
        "slider": method([(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)], [[4, 1], [3, 3], [1, 4]]),
        "fixed": method([(0.75, 0.25), (0.5, 0.5)], [[3, 1], [2, 2]]),
        "base": method([None], [[1, 1]]),
    }


def test_hand_checked_summary(means):
    summary = compute_summary(means, KINDS)
    assert summary["rewards"] == list(REWARDS)
    # Reference = per-reward minimum = (1, 1): the slider's end points sit on it and add nothing.
    assert summary["reference"] == [1.0, 1.0] and not summary["reference_given"]
    assert summary["normalisation"] == {"lo": [1.0, 1.0], "hi": [4.0, 4.0]}
    slider, fixed, base = (summary["methods"][name] for name in ("slider", "fixed", "base"))
    assert slider["hypervolume"] == 4.0  # the (3, 3) box: 2 x 2
    assert slider["hypervolume_normalised"] == pytest.approx(4.0 / 9.0)
    assert fixed["hypervolume"] == 1.0 and base["hypervolume"] == 0.0
    assert summary["fixed_weights_union"] == {
        "num_points": 2, "hypervolume": 1.0, "hypervolume_normalised": pytest.approx(1 / 9),
    }
    assert slider["hv_ratio_vs_fixed_union"] == 4.0
    assert "hv_ratio_vs_fixed_union" not in fixed
    assert [point["non_dominated"] for point in fixed["points"]] == [True, True]
    assert slider["points"][1] == {
        "weights": [0.5, 0.5], "means": {"photo": 3.0, "sketch": 3.0}, "counts": {"photo": 1, "sketch": 1},
        "non_dominated": True,
    }
    assert summary["non_dominated"] == [
        {"method": "slider", "weights": [1.0, 0.0]},
        {"method": "slider", "weights": [0.5, 0.5]},
        {"method": "slider", "weights": [0.0, 1.0]},
    ]
    assert slider["controllability"] == {
        "photo": {"weight_component": 0, "spearman": 1.0, "violations": 0, "comparisons": 2},
        "sketch": {"weight_component": 1, "spearman": 1.0, "violations": 0, "comparisons": 2},
    }
    # Fixed runs (weights = their training trade-off): sketch 1 -> 2 as w1 rises .25 -> .5.
    assert fixed["controllability"]["sketch"] == {
        "weight_component": 1, "spearman": 1.0, "violations": 0, "comparisons": 1,
    }
    assert base["controllability"] is None


def test_given_reference_and_json_file(means, tmp_path):
    summary = compute_summary(means, KINDS, ref=[0, 0])
    assert summary["methods"]["slider"]["hypervolume"] == 11.0  # 4*1 + 3*2 + 1*1
    assert summary["methods"]["fixed"]["hypervolume"] == 5.0  # 3*1 + 2*1
    assert summary["methods"]["slider"]["hv_ratio_vs_fixed_union"] == pytest.approx(11 / 5)
    # lo = (1, 1), span 3: the reference (0, 0) normalises to (-1/3, -1/3).
    assert summary["reference_normalised"] == pytest.approx([-1 / 3, -1 / 3])
    assert summary["methods"]["slider"]["hypervolume_normalised"] == pytest.approx(11 / 9)
    path = write_summary(summary, tmp_path / "out" / "summary.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(summary))
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temp file left behind


def test_undefined_numbers_become_null(tmp_path):
    flat = {"slider": method([(1.0, 0.0), (0.0, 1.0)], [[1, 2], [1, 3]])}  # photo never changes
    summary = compute_summary(flat, KINDS)
    assert summary["methods"]["slider"]["controllability"]["photo"]["spearman"] is None
    assert summary["methods"]["slider"]["hv_ratio_vs_fixed_union"] is None  # no fixed-weight runs
    assert summary["fixed_weights_union"] is None
    assert summary["methods"]["slider"]["hypervolume_normalised"] == 0.0  # a constant reward normalises to 0
    text = write_summary(summary, tmp_path / "summary.json").read_text()
    assert "NaN" not in text and json.loads(text)["methods"]["slider"]["controllability"]["photo"]["spearman"] is None


def test_three_rewards_and_a_held_out_judge(tmp_path):
    grid = weight_grid(3, 4)
    rng = np.random.default_rng(0)
    table = ScoreTable(tmp_path / "scores.csv")
    for weights in grid:
        for seed in range(2):
            noise = rng.normal(scale=0.01, size=4)
            values = {"a": weights[0], "b": weights[1] ** 2, "c": weights[2], "judge": 1 - weights[1]}
            table.append(
                ScoreRow("slider", weights, "p", seed, name, value + n)
                for (name, value), n in zip(values.items(), noise)
            )
    means = table.means(["a", "b", "c", "judge"])
    with pytest.raises(ValueError, match="pass weight_index"):
        compute_summary(means, {"slider": "pareto_slider"})
    index = {"a": 0, "b": 1, "c": 2, "judge": 1}  # the judge should fall as w1 rises
    summary = compute_summary(means, {"slider": "pareto_slider"}, weight_index=index)
    entry = summary["methods"]["slider"]
    values = means["slider"].values
    assert entry["hypervolume"] == pytest.approx(hypervolume(values, values.min(axis=0)))
    assert entry["num_points"] == len(grid) == 10
    for reward in "abc":
        assert entry["controllability"][reward]["spearman"] > 0.8
        assert entry["controllability"][reward]["comparisons"] == 12
    assert entry["controllability"]["judge"]["spearman"] == pytest.approx(-1.0, abs=0.05)
    assert entry["controllability"]["judge"]["violations"] == 12


def test_soups_and_sliders_are_compared_with_the_fixed_runs_and_each_other(means):
    soup = method([(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)], [[3, 1], [2, 2], [1, 4.25]])
    kinds = {**KINDS, "soup": "soup"}
    summary = compute_summary({**means, "soup": soup}, kinds, ref=[0, 0], dominance_tol=0.5)
    slider, soup_entry = summary["methods"]["slider"], summary["methods"]["soup"]
    assert summary["dominance_tolerance"] == 0.5
    # soup HV above (0, 0): 3 * 1 + 2 * 1 + 1 * 2.25 = 7.25; fixed (3, 1), (2, 2): 5; slider: 11.
    assert soup_entry["vs_fixed_union"] == {"hv_ratio": pytest.approx(7.25 / 5), "dominated_share": 1.0,
                                            "extent": {"photo": 1.0, "sketch": 2.125}}
    assert soup_entry["hv_ratio_vs_fixed_union"] == pytest.approx(7.25 / 5)
    assert "vs_soups" not in soup_entry and "vs_fixed_union" not in summary["methods"]["fixed"]
    # the slider's (3, 3) covers the soup's (3, 1) and (2, 2); its (1, 4) is 0.25 short of (1, 4.25): within 0.5.
    assert slider["vs_soups"] == {"soup": {"hv_ratio": pytest.approx(11 / 7.25), "dominated_share": 1.0,
                                           "extent": {"photo": pytest.approx(4 / 3), "sketch": pytest.approx(4 / 4.25)}}}
    strict = compute_summary({**means, "soup": soup}, kinds, ref=[0, 0])  # the default tolerance, 0.01
    assert strict["methods"]["slider"]["vs_soups"]["soup"]["dominated_share"] == pytest.approx(2 / 3)
    assert soup_entry["controllability"]["photo"]["spearman"] == 1.0
    with pytest.raises(ValueError, match="soup method 'soup' has no weights"):
        compute_summary({"soup": means["base"]}, kinds)


def test_input_checks(means):
    with pytest.raises(ValueError, match="kind 'typo'"):
        compute_summary(means, {**KINDS, "base": "typo"})
    with pytest.raises(ValueError, match="has no weights"):
        compute_summary({"slider": means["base"]}, KINDS)
    with pytest.raises(ValueError, match="take all means from one"):
        compute_summary({**means, "base": method([None], [[1.0]], rewards=("photo",))}, KINDS)
    with pytest.raises(ValueError, match="ref must be 2 finite numbers"):
        compute_summary(means, KINDS, ref=[0.0])
    with pytest.raises(ValueError, match="ref must be 2 finite numbers"):
        compute_summary(means, KINDS, ref=["low", "low"])
    with pytest.raises(ValueError, match="weight_index names reward 'nope'"):
        compute_summary(means, KINDS, weight_index={"nope": 0})
    with pytest.raises(ValueError, match="sweep order"):
        method([(0.0, 1.0), (1.0, 0.0)], [[1, 2], [2, 1]])


def test_format_table(means):
    summary = compute_summary(means, KINDS, ref=[0, 0])
    text = format_table(summary)
    lines = text.splitlines()
    assert lines[0].split() == ["method", "kind", "points", "HV", "HV", "norm", "HV/fixed", "fixed", "covered", "rho",
                                "photo", "rho", "sketch", "viol", "photo", "viol", "sketch"]
    slider_row = next(line for line in lines if line.startswith("slider"))
    assert slider_row.split() == ["slider", "pareto_slider", "3", "11", "1.222", "2.2", "1", "1", "1", "0/2", "0/2"]
    base_row = next(line for line in lines if line.startswith("base"))
    assert base_row.split()[3:] == ["1", "0.1111", "-", "-", "-", "-", "-", "-"]
    assert lines[-2] == "reference point (given): photo=0, sketch=0"
    assert lines[-1].startswith("fixed covered: share of the fixed runs' points weakly dominated (within 0.01)")
    assert not math.isnan(summary["methods"]["fixed"]["hypervolume"])


def test_dominated_sweep_points_are_flagged():
    bent = {"slider": method([(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)], [[4, 1], [3, 3], [2, 2]])}
    summary = compute_summary(bent, KINDS)
    assert [point["non_dominated"] for point in summary["methods"]["slider"]["points"]] == [True, True, False]
    assert [entry["weights"] for entry in summary["non_dominated"]] == [[1.0, 0.0], [0.5, 0.5]]
    assert summary["methods"]["slider"]["controllability"]["sketch"]["violations"] == 1
