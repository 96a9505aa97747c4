"""Advantages from the reward matrix (method.md, training loop step 4, and the fixed-weights baseline).

Standard deviations are population standard deviations (divide by n, `unbiased=False`), as the reference code's
`np.std`. Statistics are computed in float64 and returned as float32.
"""

from __future__ import annotations

import torch

from .objectives.config import ADVANTAGE_STDS


class NonFiniteRewardError(ValueError):
    """A reward returned NaN or inf; the training loop catches this to skip the step instead of training on it."""

    def __init__(self, counts: dict[int, int], num_samples: int) -> None:
        self.counts = dict(counts)
        self.reward_index, self.count = next(iter(self.counts.items()))
        detail = ", ".join(f"reward {m}: {n} of {num_samples}" for m, n in self.counts.items())
        super().__init__(
            f"Non-finite rewards (NaN or inf) in this batch ({detail} samples). Advantages would be meaningless; "
            "skip the step, and check that reward's inputs (black or empty images) or its server's answers."
        )


def _check_rewards(rewards: torch.Tensor, ids: torch.Tensor, ids_name: str) -> torch.Tensor:
    if rewards.ndim != 2 or rewards.shape[0] == 0:
        raise ValueError(f"rewards must have shape (N, M) with N >= 1 samples, got {tuple(rewards.shape)}.")
    if ids.shape != rewards.shape[:1] or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(
            f"{ids_name} must be an integer tensor of shape ({rewards.shape[0]},) (one id per sample), "
            f"got {ids.dtype} {tuple(ids.shape)}."
        )
    bad = (~torch.isfinite(rewards)).sum(dim=0)
    if bad.any():
        raise NonFiniteRewardError({m: int(n) for m, n in enumerate(bad.tolist()) if n}, rewards.shape[0])
    return rewards.double()


def _check_normalization(eps: float, clip: float) -> None:
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    if not clip > 0:
        raise ValueError(f"clip must be > 0 (the reference uses 5), got {clip}.")


def _group_mean(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (N, ...) over the samples sharing each id, broadcast back to every sample."""
    _, inverse = torch.unique(ids, return_inverse=True)
    num_groups = int(inverse.max()) + 1
    counts = torch.bincount(inverse, minlength=num_groups).to(values.dtype)
    sums = torch.zeros((num_groups, *values.shape[1:]), dtype=values.dtype, device=values.device)
    sums.index_add_(0, inverse, values)
    return (sums / counts.view(-1, *[1] * (values.ndim - 1)))[inverse]


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-4, clip: float = 5.0, std: str = "group"
) -> torch.Tensor:
    """Per (prompt, w) group and per reward: (r - group mean) / (std + eps), clipped to +-clip.

    std "group" (the paper's): the group's own population std. "pooled": one std per reward, that of the
    group-centred rewards over the whole batch. When two rewards follow one factor of the image (how pale a fill
    is), each group's own std turns their advantages into mirror images, so w_1 A_1 + w_2 A_2 keeps only the sign
    of w_1 - w_2 and loses the rewards' curvature; a pooled std keeps how steeply each reward moves in each group.
    Rewards are never summed here (late scalarization). A group of one sample, or of identical rewards, gets
    advantage 0: it holds no information about which sample is better.
    """
    _check_normalization(eps, clip)
    if std not in ADVANTAGE_STDS:
        raise ValueError(f"std must be one of {ADVANTAGE_STDS}, got {std!r}.")
    r = _check_rewards(rewards, group_ids, "group_ids")
    centered = r - _group_mean(r, group_ids)
    squares = centered.square()
    scale = (_group_mean(squares, group_ids) if std == "group" else squares.mean(dim=0, keepdim=True)).sqrt()
    return (centered / (scale + eps)).clamp(-clip, clip).float()


def fixed_weight_advantages(
    rewards: torch.Tensor,
    weights: torch.Tensor,
    prompt_ids: torch.Tensor,
    eps: float = 1e-4,
    clip: float = 5.0,
) -> torch.Tensor:
    """Early-scalarization baseline: r = sum_m c_m r_m, A = (r - per-prompt mean) / (batch std + eps), clipped.

    The std is the population std of r over the whole batch, as the reference configuration of the baseline sets.
    """
    _check_normalization(eps, clip)
    r = _check_rewards(rewards, prompt_ids, "prompt_ids")
    c = torch.as_tensor(weights, dtype=torch.float64, device=r.device)
    if c.shape != r.shape[1:] or not torch.isfinite(c).all():
        raise ValueError(
            f"weights must be {r.shape[1]} finite numbers (one per reward), got {c.tolist()} of shape {tuple(c.shape)}."
        )
    scalar = r @ c
    centered = scalar - _group_mean(scalar, prompt_ids)
    return (centered / (scalar.std(unbiased=False) + eps)).clamp(-clip, clip).float()


def scalarize_advantages(adv: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Late scalarization for the GRPO objective: A_w = sum_m w_m A_m per sample, (N, M) -> (N,)."""
    if adv.ndim != 2 or adv.shape != w.shape:
        raise ValueError(
            f"adv and w must both have shape (N, M); got {tuple(adv.shape)} and {tuple(w.shape)}. "
            "Repeat each group's w for every sample of the group."
        )
    return (adv * w.to(adv.dtype)).sum(dim=-1)
