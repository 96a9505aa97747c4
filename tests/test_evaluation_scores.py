"""scores.csv on disk: one row per score, batch appends, resume after an interrupted write."""

import csv
import itertools

import numpy as np
import pytest

from pslider_core.evaluation import COLUMNS, ScoreRow, ScoreTable, parse_weights_key, weight_grid, weights_key

REWARDS = ("photo", "sketch")


def score(method, weights, prompt, seed):
    """A deterministic fake score so means can be checked by hand."""
    base = 0.0 if weights is None else weights[0]
    return {"photo": base + seed, "sketch": 1.0 - base + 10 * seed + len(prompt)}


def rows_for(method, weights, prompt, seed):
    values = score(method, weights, prompt, seed)
    return [ScoreRow(method, weights, prompt, seed, name, value) for name, value in values.items()]


def test_one_row_per_method_weight_prompt_seed_reward(tmp_path):
    path = tmp_path / "out" / "scores.csv"
    table = ScoreTable(path)
    grid = weight_grid(2, 3)
    prompts = ["a cat", 'a "quoted", comma prompt', "un café"]
    combos = [("slider", w, p, s) for w in grid for p in prompts for s in (0, 1)] + [
        ("base", None, p, s) for p in prompts for s in (0, 1)
    ]
    for combo in combos:  # one batch per sample, as the CLI writes them
        table.append(rows_for(*combo))
    with open(path, newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    assert tuple(records[0]) == COLUMNS
    assert len(records) - 1 == len(combos) * len(REWARDS) == len(table)
    keys = {(m, w, p, s, r) for m, w, p, s, r, _ in records[1:]}
    assert len(keys) == len(records) - 1
    assert ("slider", "0.5;0.5", 'a "quoted", comma prompt', "1", "sketch") in keys
    assert ("base", "", "un café", "0", "photo") in keys

    reloaded = ScoreTable(path)
    assert reloaded.rows == table.rows
    assert reloaded.done_keys(REWARDS) == set(combos)


def test_weights_key_round_trips_grid_values():
    for weights in weight_grid(3, 11):
        assert parse_weights_key(weights_key(weights)) == weights
    assert weights_key((0.25, 0.75)) == "0.25;0.75"
    assert weights_key(None) == "" and parse_weights_key("") is None
    with pytest.raises(ValueError, match="separated list of numbers"):
        parse_weights_key("0.5,0.5")


def test_resume_after_an_interrupted_write(tmp_path):
    path = tmp_path / "scores.csv"
    table = ScoreTable(path)
    table.append(rows_for("slider", (1.0, 0.0), "a cat", 0))
    table.append([ScoreRow("slider", (0.0, 1.0), "un café", 0, "photo", 0.5)])  # sketch not scored yet
    # A run killed mid-write: a partial line, cut inside a multi-byte character and without newline.
    complete = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write('slider,0.0;1.0,un caf'.encode() + "é".encode()[:1])

    resumed = ScoreTable(path)
    assert resumed.rows == table.rows
    assert resumed.done_keys(REWARDS) == {("slider", (1.0, 0.0), "a cat", 0)}
    assert resumed.done_keys() == {("slider", (1.0, 0.0), "a cat", 0), ("slider", (0.0, 1.0), "un café", 0)}
    assert resumed.done_keys(["photo"]) == resumed.done_keys()

    resumed.append([ScoreRow("slider", (0.0, 1.0), "un café", 0, "sketch", 0.25)])
    text = path.read_text(encoding="utf-8")
    assert text.startswith(complete.decode())
    assert text[len(complete.decode()):] == "slider,0.0;1.0,un café,0,sketch,0.25\n"
    again = ScoreTable(path)
    assert len(again) == 4
    assert again.done_keys(REWARDS) == {("slider", (1.0, 0.0), "a cat", 0), ("slider", (0.0, 1.0), "un café", 0)}


def test_interrupted_before_the_header_was_complete(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_bytes(b"method,wei")
    table = ScoreTable(path)
    assert len(table) == 0
    table.append(rows_for("base", None, "p", 3))
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert len(ScoreTable(path)) == 2


def test_bad_batches_write_nothing(tmp_path):
    path = tmp_path / "scores.csv"
    table = ScoreTable(path)
    table.append(rows_for("slider", (0.5, 0.5), "p", 0))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="duplicate score"):
        table.append(rows_for("slider", (0.5, 0.5), "q", 0) + rows_for("slider", (0.5, 0.5), "p", 0))
    with pytest.raises(ValueError, match="duplicate score"):
        table.append(rows_for("slider", (0.5, 0.5), "r", 0) * 2)
    with pytest.raises(ValueError, match="have 3 components but this table uses 2"):
        table.append(rows_for("slider", (0.5, 0.25, 0.25), "p", 0))
    assert path.read_bytes() == before
    assert len(table) == 2 and len(ScoreTable(path)) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "two\nlines"}, "contains a line break"),
        ({"value": float("nan")}, "returns a finite number"),
        ({"weights": (0.5, 0.6)}, "divide them by their sum"),
        ({"weights": (1.5, -0.5)}, "finite and >= 0"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"value": "high"}, "value must be a number"),
        ({"method": ""}, "method must be a non-empty string"),
    ],
)
def test_score_rows_are_validated(kwargs, message):
    fields = {"method": "m", "weights": (0.5, 0.5), "prompt": "p", "seed": 0, "reward": "photo", "value": 1.0}
    with pytest.raises(ValueError, match=message):
        ScoreRow(**{**fields, **kwargs})


def test_foreign_or_corrupt_files_are_rejected(tmp_path):
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="not a pslider scores file"):
        ScoreTable(foreign)
    corrupt = tmp_path / "corrupt.csv"
    corrupt.write_text(",".join(COLUMNS) + "\nm,0.5;0.5,p,0,photo\n")
    with pytest.raises(ValueError, match="line 2 has 5 fields"):
        ScoreTable(corrupt)
    corrupt.write_text(",".join(COLUMNS) + "\nm,0.5;0.5,p,zero,photo,1.0\n")
    with pytest.raises(ValueError, match="line 2"):
        ScoreTable(corrupt)


def test_means_per_method_and_weights(tmp_path):
    table = ScoreTable(tmp_path / "scores.csv")
    grid = weight_grid(2, 3)
    prompts, seeds = ["ab", "abcd"], [0, 1, 2]
    for weights, prompt, seed in itertools.product(reversed(grid), prompts, seeds):  # written out of sweep order
        table.append(rows_for("slider", weights, prompt, seed))
    for prompt, seed in itertools.product(prompts, seeds):
        table.append(rows_for("base", None, prompt, seed))
    means = ScoreTable(table.path).means()
    assert list(means) == ["slider", "base"]
    slider = means["slider"]
    assert slider.rewards == REWARDS
    assert slider.weights == tuple(grid)
    # photo = w0 + seed -> w0 + 1; sketch = 1 - w0 + 10 seed + len(prompt) -> 1 - w0 + 10 + 3
    np.testing.assert_allclose(slider.values, [[w0 + 1, 14 - w0] for w0, _ in grid])
    np.testing.assert_array_equal(slider.counts, np.full((3, 2), 6))
    assert means["base"].weights == (None,)
    np.testing.assert_allclose(means["base"].values, [[1.0, 14.0]])
    only_sketch = table.means(["sketch"])
    np.testing.assert_allclose(only_sketch["slider"].values[:, 0], slider.values[:, 1])

    table.append([ScoreRow("slider", grid[0], "new", 0, "photo", 1.0)])
    np.testing.assert_array_equal(table.means(["photo"])["slider"].counts[:, 0], [7, 6, 6])
    table.append([ScoreRow("judged", grid[0], "p", 0, "photo", 1.0)])
    with pytest.raises(ValueError, match="method 'judged' at weights .* has no scores for reward 'sketch'"):
        table.means()
    with pytest.raises(ValueError, match="no scores yet"):
        ScoreTable(tmp_path / "empty.csv").means()
