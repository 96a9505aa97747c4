"""The DiffusionNFT objective with late scalarization (method.md, training loop steps 5 and 6)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..ema import EMA, ema_decay
from .config import NFTConfig

__all__ = ["EMA", "NFTConfig", "ema_decay", "lagged_decay", "nft_loss", "nft_reward_weight", "update_old_policy_"]


def nft_reward_weight(adv: torch.Tensor, w: torch.Tensor, adv_clip: float) -> torch.Tensor:
    """r = sum_m w_m (0.5 + 0.5 clip(A_m / adv_clip, -1, 1)), (N, M) -> (N,), in [0, 1] for w on the simplex.

    Because the NFT loss is linear in r, weighting r by w equals weighting the per-reward losses by w.
    """
    if adv.ndim != 2 or adv.shape != w.shape:
        raise ValueError(f"adv and w must both have shape (N, M); got {tuple(adv.shape)} and {tuple(w.shape)}.")
    per_reward = 0.5 + 0.5 * (adv / adv_clip).clamp(-1.0, 1.0)
    return (w.to(per_reward.dtype) * per_reward).sum(dim=-1)


def _adaptive_x0_loss(v: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per sample mean((x0_hat - x0)^2) / stopgrad(max(mean|x0_hat - x0|, 1e-5)), x0_hat = x_t - t v."""
    dims = tuple(range(1, x0.ndim))
    err = x_t - t * v - x0
    scale = err.detach().abs().mean(dim=dims).clamp(min=1e-5)
    return err.square().mean(dim=dims) / scale


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    v_ref: torch.Tensor | None,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    config: NFTConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """adv_clip * mean((r L+ + (1 - r) L-) / beta) + kl_weight * mean((v_theta - v_ref)^2) (no KL when v_ref is None).

    v+ = beta v_theta + (1 - beta) v_old, v- = (1 + beta) v_old - beta v_theta: raising r pulls the positive policy's
    data prediction towards x0, lowering it pushes the negative one there. Computed in float32 at least.
    """
    if not (v_theta.shape == v_old.shape == x_t.shape == x0.shape) or (v_ref is not None and v_ref.shape != x0.shape):
        raise ValueError(
            "v_theta, v_old, v_ref, x_t and x0 must share one shape; got "
            f"{[None if a is None else tuple(a.shape) for a in (v_theta, v_old, v_ref, x_t, x0)]}."
        )
    n = x0.shape[0]
    if t.shape != (n,) or r.shape != (n,):
        raise ValueError(f"t and r must have shape ({n},) (one per sample), got {tuple(t.shape)} and {tuple(r.shape)}.")
    dtype = torch.promote_types(v_theta.dtype, torch.float32)
    v_theta, v_old, x_t, x0 = (a.to(dtype) for a in (v_theta, v_old.detach(), x_t, x0))
    t = t.to(dtype).view(-1, *[1] * (x0.ndim - 1))
    r = r.to(dtype)
    beta = config.beta
    loss_pos = _adaptive_x0_loss(beta * v_theta + (1 - beta) * v_old, x_t, x0, t)
    loss_neg = _adaptive_x0_loss((1 + beta) * v_old - beta * v_theta, x_t, x0, t)
    policy_loss = config.adv_clip * ((r * loss_pos + (1 - r) * loss_neg) / beta).mean()
    kl = (v_theta - v_ref.detach().to(dtype)).square().mean() if v_ref is not None else v_theta.new_zeros(())
    loss = policy_loss + config.kl_weight * kl
    with torch.no_grad():  # 0-d tensors, not floats: reading them per loss pass would wait for the GPU
        stats = {
            "loss": loss.detach(),
            "policy_loss": policy_loss.detach(),
            "kl": kl.detach(),
            "positive_loss": loss_pos.mean(),
            "negative_loss": loss_neg.mean(),
            "old_deviation": (v_theta.detach() - v_old).square().mean(),
        }
    return loss, stats


def lagged_decay(step: int) -> float:
    """Decay of the old (rollout) policy: min(0.001 step, 0.5); 0 at first, so it starts by tracking theta."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    return min(0.001 * step, 0.5)


@torch.no_grad()
def update_old_policy_(old_params: Iterable[torch.Tensor], params: Iterable[torch.Tensor], decay: float) -> None:
    """theta_old <- decay theta_old + (1 - decay) theta, in place, after each epoch."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}.")
    old_params, params = list(old_params), list(params)
    if len(old_params) != len(params) or any(o.shape != p.shape for o, p in zip(old_params, params)):
        raise ValueError(
            f"Old policy has {len(old_params)} tensors, current policy {len(params)} (or shapes differ); pass both "
            "lists of trainable parameters in the same order."
        )
    for old, new in zip(old_params, params):
        old.lerp_(new.detach().to(old.device, old.dtype), 1.0 - decay)
