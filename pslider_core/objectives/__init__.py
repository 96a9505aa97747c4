"""Training objectives: DiffusionNFT (the reference method) and Flow-GRPO (clipped ratio), both late-scalarized.

Names load lazily: their settings (`config.py`) import without torch, for the command lines' options.
"""

from __future__ import annotations

from ..lazy import lazy_getattr

_EXPORTS = {
    **dict.fromkeys(("GRPOConfig", "NFTConfig"), ".config"),
    **dict.fromkeys(("EMA", "ema_decay"), "..ema"),
    "grpo_loss": ".grpo",
    **dict.fromkeys(("lagged_decay", "nft_loss", "nft_reward_weight", "update_old_policy_"), ".nft"),
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
