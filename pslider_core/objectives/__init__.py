"""Training objectives: DiffusionNFT (the reference method) and Flow-GRPO (clipped ratio), both late-scalarized."""

from ..ema import EMA, ema_decay
from .grpo import GRPOConfig, grpo_loss
from .nft import NFTConfig, lagged_decay, nft_loss, nft_reward_weight, update_old_policy_

__all__ = [
    "EMA",
    "GRPOConfig",
    "NFTConfig",
    "ema_decay",
    "grpo_loss",
    "lagged_decay",
    "nft_loss",
    "nft_reward_weight",
    "update_old_policy_",
]
