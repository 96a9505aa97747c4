"""scores.csv: one row per (method, weights, prompt, seed, reward), appended batch by batch.

The file is line-oriented (no field may contain a line break) and every batch is written with one
write, then flushed and fsynced. A run killed mid-write leaves at most one partial last line; it is
ignored on load and cut off before the next append, so rerunning the same command resumes where it
stopped: call done_keys() once and skip what it lists.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .grid import sweep_sorted

COLUMNS = ("method", "weights", "prompt", "seed", "reward", "value")
WEIGHT_SEPARATOR = ";"

# A sweep point: weights on the simplex, or None for a method that takes no preference (the base model).
Weights = tuple[float, ...] | None
Key = tuple[str, Weights, str, int]


def weights_key(weights: Weights) -> str:
    """Text form used in the weights column: "0.25;0.75"; "" for None. Round-trips exactly."""
    if weights is None:
        return ""
    return WEIGHT_SEPARATOR.join(repr(float(value)) for value in weights)


def parse_weights_key(text: str) -> Weights:
    """Inverse of weights_key."""
    if text == "":
        return None
    try:
        return tuple(float(part) for part in text.split(WEIGHT_SEPARATOR))
    except ValueError:
        raise ValueError(
            f"weights {text!r} is not a {WEIGHT_SEPARATOR!r}-separated list of numbers such as '0.25;0.75'"
        ) from None


def _check_text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    if "\n" in value or "\r" in value:
        raise ValueError(
            f"{field} {value!r} contains a line break; scores.csv keeps one row per line so an "
            "interrupted run can resume: replace line breaks with spaces"
        )
    return value


def _check_weights(weights: object) -> Weights:
    if weights is None:
        return None
    try:
        values = tuple(float(value) for value in weights)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"weights must be a sequence of numbers or None, got {weights!r}") from None
    if not values or not all(math.isfinite(value) and value >= 0 for value in values):
        raise ValueError(f"weights must be non-empty, finite and >= 0, got {weights!r}")
    if abs(math.fsum(values) - 1.0) > 1e-6:
        raise ValueError(f"weights {values} sum to {math.fsum(values)}, not 1; divide them by their sum")
    return values


@dataclass(frozen=True)
class ScoreRow:
    """One reward value for one generated sample."""

    method: str
    weights: Weights
    prompt: str
    seed: int
    reward: str
    value: float

    def __post_init__(self) -> None:
        _check_text(self.method, "method")
        _check_text(self.prompt, "prompt")
        _check_text(self.reward, "reward")
        object.__setattr__(self, "weights", _check_weights(self.weights))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        try:
            value = float(self.value)
        except (TypeError, ValueError):
            raise ValueError(f"value must be a number, got {self.value!r} for reward {self.reward!r}") from None
        if not math.isfinite(value):
            raise ValueError(
                f"reward {self.reward!r} gave {value} for method {self.method!r}, weights {self.weights}, "
                f"prompt {self.prompt!r}, seed {self.seed}; fix the reward so it returns a finite number"
            )
        object.__setattr__(self, "value", value)

    @property
    def key(self) -> Key:
        return (self.method, self.weights, self.prompt, self.seed)


@dataclass(frozen=True)
class MethodMeans:
    """Mean reward vector of one method at each sweep point (averaged over prompts and seeds)."""

    rewards: tuple[str, ...]
    weights: tuple[Weights, ...]  # sweep order (descending lexicographic); (None,) for the base model
    values: np.ndarray  # (len(weights), len(rewards))
    counts: np.ndarray  # (len(weights), len(rewards)): samples averaged into each mean

    def __post_init__(self) -> None:
        shape = (len(self.weights), len(self.rewards))
        values = np.asarray(self.values, dtype=np.float64)
        counts = np.asarray(self.counts, dtype=np.int64)
        if values.shape != shape or counts.shape != shape:
            raise ValueError(
                f"values and counts must be shaped (points, rewards) = {shape}, got {values.shape} and {counts.shape}"
            )
        if not shape[0] or not shape[1]:
            raise ValueError("MethodMeans needs at least one sweep point and one reward")
        if not np.all(np.isfinite(values)):
            raise ValueError("MethodMeans values contain NaN or infinite numbers")
        object.__setattr__(self, "rewards", tuple(self.rewards))
        object.__setattr__(self, "weights", tuple(_check_weights(weights) for weights in self.weights))
        if None in self.weights:
            if len(self.weights) != 1:
                raise ValueError("a method without weights (None) must have exactly one point")
        elif list(self.weights) != sweep_sorted(self.weights) or len(set(self.weights)) != len(self.weights):
            raise ValueError("weights must be unique and in sweep order; sort them with grid.sweep_sorted")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "counts", counts)

    @property
    def has_weights(self) -> bool:
        return self.weights[0] is not None


def _complete_length(handle: BinaryIO, end: int, chunk: int = 1 << 16) -> int:
    """Length of the file up to and including its last line break (0 if it has none)."""
    position = end
    while position > 0:
        start = max(0, position - chunk)
        handle.seek(start)
        newline = handle.read(position - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


class ScoreTable:
    """In-memory view of scores.csv that appends batches to disk as they are scored."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._rows: list[ScoreRow] = []
        self._row_keys: set[tuple[Key, str]] = set()
        self._num_weights: int | None = None
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        data = data[: data.rfind(b"\n") + 1]  # drop a partial line left by an interrupted write
        lines = data.decode("utf-8").split("\n")[:-1]
        if not lines:
            return
        header = next(csv.reader([lines[0]]))
        if tuple(header) != COLUMNS:
            raise ValueError(
                f"{self.path} has columns {header}, expected {list(COLUMNS)}; "
                "it is not a pslider scores file: pick another output directory or remove it"
            )
        rows = []
        for line_number, fields in enumerate(csv.reader(lines[1:]), start=2):
            if len(fields) != len(COLUMNS):
                raise ValueError(
                    f"{self.path} line {line_number} has {len(fields)} fields, expected {len(COLUMNS)}; "
                    "the file was edited or corrupted: fix or delete that line"
                )
            method, weights, prompt, seed, reward, value = fields
            try:
                rows.append(ScoreRow(method, parse_weights_key(weights), prompt, int(seed), reward, float(value)))
            except ValueError as error:
                raise ValueError(f"{self.path} line {line_number}: {error}") from None
        self._commit(rows, *self._validate(rows))

    def _validate(self, rows: list[ScoreRow]) -> tuple[set[tuple[Key, str]], int | None]:
        """Check a batch against the table and itself; return its keys and the weight length."""
        keys: set[tuple[Key, str]] = set()
        num_weights = self._num_weights
        for row in rows:
            row_key = (row.key, row.reward)
            if row_key in self._row_keys or row_key in keys:
                raise ValueError(
                    f"duplicate score for method {row.method!r}, weights {row.weights}, prompt {row.prompt!r}, "
                    f"seed {row.seed}, reward {row.reward!r}; skip the keys done_keys() reports"
                )
            keys.add(row_key)
            if row.weights is not None:
                if num_weights is None:
                    num_weights = len(row.weights)
                elif len(row.weights) != num_weights:
                    raise ValueError(
                        f"weights {row.weights} have {len(row.weights)} components but this table uses "
                        f"{num_weights}; write runs with another number of rewards to another file"
                    )
        return keys, num_weights

    def _commit(self, rows: list[ScoreRow], keys: set[tuple[Key, str]], num_weights: int | None) -> None:
        self._rows.extend(rows)
        self._row_keys |= keys
        self._num_weights = num_weights

    def append(self, rows: Iterable[ScoreRow]) -> None:
        """Validate a batch, write it in one go and fsync it; a bad batch writes nothing."""
        batch = list(rows)
        if not all(isinstance(row, ScoreRow) for row in batch):
            raise TypeError("append takes ScoreRow objects")
        if not batch:
            return
        keys, num_weights = self._validate(batch)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for row in batch:
            writer.writerow(
                [row.method, weights_key(row.weights), row.prompt, row.seed, row.reward, repr(row.value)]
            )
        self._write(buffer.getvalue())
        self._commit(batch, keys, num_weights)

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            end = handle.seek(0, os.SEEK_END)
            complete = _complete_length(handle, end)
            if complete != end:
                handle.truncate(complete)  # an interrupted run left a partial line
            if complete == 0:
                text = ",".join(COLUMNS) + "\n" + text
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    @property
    def rows(self) -> tuple[ScoreRow, ...]:
        return tuple(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def done_keys(self, rewards: Iterable[str] | None = None) -> set[Key]:
        """(method, weights, prompt, seed) combinations scored by every reward in `rewards`.

        With rewards=None, any score counts. Pass the rewards of this run so a sample scored by only
        some of them (for example after adding a judge) is scored again for the missing ones.
        """
        found: dict[Key, set[str]] = defaultdict(set)
        for row in self._rows:
            found[row.key].add(row.reward)
        if rewards is None:
            return set(found)
        needed = set(rewards)
        return {key for key, have in found.items() if needed <= have}

    def reward_names(self) -> tuple[str, ...]:
        """Rewards in the table, in order of first appearance."""
        return tuple(dict.fromkeys(row.reward for row in self._rows))

    def means(self, rewards: Sequence[str] | None = None) -> dict[str, MethodMeans]:
        """Mean of each reward per (method, weights), over prompts and seeds, methods in file order."""
        names = tuple(rewards) if rewards is not None else self.reward_names()
        if not names:
            raise ValueError(f"{self.path} has no scores yet; run the evaluation first")
        grouped: dict[str, dict[Weights, dict[str, list[float]]]] = {}
        for row in self._rows:
            grouped.setdefault(row.method, {}).setdefault(row.weights, defaultdict(list))[row.reward].append(row.value)
        result = {}
        for method, points in grouped.items():
            if None in points and len(points) > 1:
                raise ValueError(
                    f"method {method!r} has scores both with and without weights; give the two runs distinct names"
                )
            order = list(points) if None in points else sweep_sorted(points)
            values = np.empty((len(order), len(names)))
            counts = np.empty((len(order), len(names)), dtype=np.int64)
            for i, weights in enumerate(order):
                for j, name in enumerate(names):
                    samples = points[weights].get(name)
                    if not samples:
                        raise ValueError(
                            f"method {method!r} at weights {weights} has no scores for reward {name!r}; "
                            "rerun the evaluation to finish it or leave that reward out"
                        )
                    values[i, j] = math.fsum(samples) / len(samples)
                    counts[i, j] = len(samples)
            result[method] = MethodMeans(names, tuple(order), values, counts)
        return result
