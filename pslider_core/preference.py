"""The preference spec: which rewards a model was trained on and how user weights become the model's w."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass(frozen=True)
class PreferenceSpec:
    """Ordered reward names (the order of w's entries) with optional one-line descriptions."""

    reward_names: tuple[str, ...]
    reward_descriptions: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        names = tuple(self.reward_names)
        if not names:
            raise ValueError("A preference spec needs at least one reward name.")
        if len(set(names)) != len(names):
            raise ValueError(f"Reward names must be unique, got {list(names)}.")
        descriptions = tuple(self.reward_descriptions) or ("",) * len(names)
        if len(descriptions) != len(names):
            raise ValueError(
                f"Got {len(descriptions)} reward descriptions for {len(names)} rewards; give one per reward or none."
            )
        object.__setattr__(self, "reward_names", names)
        object.__setattr__(self, "reward_descriptions", descriptions)

    @property
    def num_rewards(self) -> int:
        return len(self.reward_names)

    def normalize(self, weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """User weights for these rewards -> the simplex vector the model sees (see `normalize_weights`)."""
        return normalize_weights(weights, self.num_rewards, self.reward_names)


def normalize_weights(
    weights: Sequence[float] | torch.Tensor,
    num_rewards: int,
    reward_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Turn user weights into points on the simplex: finite, non-negative, positive sum, normalized.

    Accepts one weight vector (M,) or a batch (B, M); returns float32 of the same rank. Every rule broken raises
    a `ValueError` saying which rule and how to fix it, because a silently renormalized NaN would make the model
    produce garbage with no hint why.
    """
    w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    if w.ndim not in (1, 2):
        raise ValueError(f"Weights must be a vector (M,) or a batch (B, M); got shape {tuple(w.shape)}.")
    names = f" ({', '.join(reward_names)})" if reward_names else ""
    if w.shape[-1] != num_rewards:
        raise ValueError(
            f"Got {w.shape[-1]} weights but the model has {num_rewards} rewards{names}; pass one weight per reward."
        )
    if not torch.isfinite(w).all():
        raise ValueError(f"Weights must be finite numbers; got {w.tolist()} (NaN or inf). Pass real numbers >= 0.")
    if (w < 0).any():
        raise ValueError(f"Weights must be non-negative; got {w.tolist()}. Use 0 to switch a reward off.")
    total = w.sum(dim=-1, keepdim=True)
    if (total <= 0).any():
        raise ValueError(f"Weights must not all be zero; got {w.tolist()}. Give at least one reward a positive weight.")
    return (w / total).to(torch.float32)


def is_on_simplex(w: torch.Tensor, atol: float = 1e-5) -> bool:
    """True when every row of w is a valid preference (non-negative, sums to one)."""
    return bool((w >= -atol).all() and torch.allclose(w.sum(-1), torch.ones(w.shape[:-1], dtype=w.dtype), atol=atol))


def format_weights(w: Sequence[float]) -> str:
    """Compact, stable text form used in metadata, file names and logs."""
    return ",".join(f"{float(x):.4g}" if not math.isnan(float(x)) else "nan" for x in w)
