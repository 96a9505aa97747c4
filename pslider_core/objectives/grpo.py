"""The Flow-GRPO clipped-ratio objective on late-scalarized advantages (method.md, GRPO variant; our choice)."""

from __future__ import annotations

import torch

from .config import GRPOConfig

__all__ = ["GRPOConfig", "grpo_loss"]


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mean_theta: torch.Tensor,
    mean_ref: torch.Tensor | None,
    std: torch.Tensor | float,
    config: GRPOConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """mean max(-A rho, -A clip(rho, 1 - eps, 1 + eps)) + kl_weight mean((mu_theta - mu_ref)^2 / (2 std^2)).

    rho = exp(log_prob - old_log_prob); A is clipped to +-adv_clip; std is `SDEStep.std` (g for "sde", s for
    "cps", as Flow-GRPO). mean_ref None (or kl_weight 0) drops the KL term.
    """
    n = log_prob.shape[0]
    if log_prob.shape != (n,) or old_log_prob.shape != (n,) or advantages.shape != (n,):
        raise ValueError(
            "log_prob, old_log_prob and advantages must all have shape (N,); got "
            f"{tuple(log_prob.shape)}, {tuple(old_log_prob.shape)}, {tuple(advantages.shape)}."
        )
    if mean_theta.shape[0] != n or (mean_ref is not None and mean_ref.shape != mean_theta.shape):
        raise ValueError(
            f"mean_theta and mean_ref must have the same shape (N={n}, ...); got {tuple(mean_theta.shape)} and "
            f"{None if mean_ref is None else tuple(mean_ref.shape)}."
        )
    adv = advantages.detach().float().clamp(-config.adv_clip, config.adv_clip)
    ratio = torch.exp(log_prob.float() - old_log_prob.detach().float())
    eps = config.clip_range
    policy_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)).mean()
    if mean_ref is not None and config.kl_weight > 0:
        std = torch.as_tensor(std, dtype=torch.float32, device=mean_theta.device).reshape(-1).expand(n)
        per_sample = (mean_theta.float() - mean_ref.detach().float()).square().flatten(1).mean(dim=1)
        kl = (per_sample / (2 * std.detach() ** 2)).mean()
    else:
        kl = torch.zeros((), device=log_prob.device)
    loss = policy_loss + config.kl_weight * kl
    with torch.no_grad():  # 0-d tensors, not floats: reading them per loss pass would wait for the GPU
        stats = {
            "loss": loss.detach(),
            "policy_loss": policy_loss.detach(),
            "kl": kl.detach(),
            "approx_kl": 0.5 * (log_prob - old_log_prob).float().square().mean(),
            "clip_fraction": ((ratio - 1).abs() > eps).float().mean(),
            "ratio_mean": ratio.mean(),
        }
    return loss, stats
