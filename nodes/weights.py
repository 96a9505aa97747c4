"""From slider values to the w of every row the model sees: fixed, swept along the front, or scheduled over sigma.

A policy maps one APPLY_MODEL call to one preference per batch row. ComfyUI concatenates the cond and uncond
chunks of a step into one batch (`transformer_options["cond_or_uncond"]` lists the chunks), every chunk holding
the whole latent batch in order, so row r belongs to latent r % (rows / chunks): the same tiling
`pslider_core.conditioning.tile_to_batch` does for diffusers pipelines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..pslider_core.conditioning import tile_to_batch
from ..pslider_core.evaluation.grid import weight_grid
from ..pslider_core.preference import normalize_weights

MAX_REWARDS = 8


def slider_weights(values: Sequence[float], reward_names: Sequence[str], prefix: str = "w") -> torch.Tensor:
    """The file's w from the node's 8 sliders: the first M count, the rest must be 0, then onto the simplex."""
    m = len(reward_names)
    if m > MAX_REWARDS:
        raise ValueError(
            f"The file has {m} rewards but slider nodes have {MAX_REWARDS} sliders; use the sweep node, or "
            f"pslider-sample from the command line."
        )
    extra = {f"{prefix}{i + 1}": float(v) for i, v in enumerate(values) if i >= m and float(v) != 0.0}
    if extra:
        raise ValueError(
            f"The file has {m} rewards ({', '.join(reward_names)}) but {', '.join(extra)} = "
            f"{', '.join(f'{v:g}' for v in extra.values())}: sliders past the file's rewards must be 0. The "
            "ParetoSlider web extension hides and zeroes them; in API prompts set them to 0."
        )
    return normalize_weights([float(v) for v in values[:m]], m, reward_names)


def describe(w: Sequence[float], reward_names: Sequence[str]) -> str:
    """'photo 0.3 · sketch 0.7': what the node shows under itself."""
    return " · ".join(f"{name} {float(x):.3g}" for name, x in zip(reward_names, w))


def sweep_points(num_rewards: int, points: int) -> torch.Tensor:
    """(P, M) grid along the front: 2 rewards, `points` from (1,0) to (0,1); 3+, the simplex lattice."""
    if num_rewards < 2:
        raise ValueError("A sweep needs a file with at least 2 rewards; this one has 1.")
    return torch.tensor(weight_grid(num_rewards, points), dtype=torch.float32)


class WeightPolicy(Protocol):
    def rows(self, sigma: torch.Tensor, chunks: int, transformer_options: dict, base_model: Any) -> torch.Tensor:
        """(rows, M) float32 preferences for a call whose per-row sigma is `sigma` (rows,)."""


@dataclass(frozen=True)
class FixedWeights:
    w: torch.Tensor  # (M,)

    def rows(self, sigma: torch.Tensor, chunks: int, transformer_options: dict, base_model: Any) -> torch.Tensor:
        return self.w.expand(sigma.shape[0], -1)


@dataclass(frozen=True)
class SweepWeights:
    points: torch.Tensor  # (P, M); latent i gets point i (mod P)

    def rows(self, sigma: torch.Tensor, chunks: int, transformer_options: dict, base_model: Any) -> torch.Tensor:
        total, count = sigma.shape[0], self.points.shape[0]
        if total % chunks:
            raise RuntimeError(f"A model call of {total} rows cannot hold {chunks} cond/uncond chunks.")
        batch = total // chunks
        if batch % count:
            raise ValueError(
                f"The latent batch has {batch} images but the ParetoSlider sweep has {count} points: set the "
                f"empty latent's batch_size to {count} (wire the sweep node's batch_size output to it) or repeat "
                "the latent."
            )
        return tile_to_batch(tile_to_batch(self.points, batch), total)

    def labels(self, reward_names: Sequence[str]) -> list[str]:
        return [f"{i}: {describe(w, reward_names)}" for i, w in enumerate(self.points.tolist())]


@dataclass(frozen=True)
class ScheduledWeights:
    """w moves linearly from `start` at the first sigma of the schedule to `end` at its last positive sigma."""

    start: torch.Tensor  # (M,)
    end: torch.Tensor  # (M,)

    def rows(self, sigma: torch.Tensor, chunks: int, transformer_options: dict, base_model: Any) -> torch.Tensor:
        p = progress(sigma, transformer_options, base_model)[:, None]
        return (1 - p) * self.start + p * self.end


def progress(sigma: torch.Tensor, transformer_options: dict, base_model: Any) -> torch.Tensor:
    """0 at the sampler's first sigma, 1 at its last positive one (the model's own range outside a sampler)."""
    sigma = sigma.detach().float().cpu()
    schedule = transformer_options.get("sample_sigmas")
    if schedule is not None and schedule.numel() > 0:
        schedule = schedule.detach().float().cpu()
        positive = schedule[schedule > 0]
        hi, lo = float(schedule.max()), float(positive.min()) if positive.numel() else 0.0
    else:
        sampling = base_model.model_sampling
        hi, lo = float(sampling.sigma_max), float(sampling.sigma_min)
    if hi <= lo:
        return torch.zeros_like(sigma)
    return ((hi - sigma) / (hi - lo)).clamp(0.0, 1.0)

