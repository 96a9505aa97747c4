"""Training objectives: DiffusionNFT (the reference method) and Flow-GRPO (clipped ratio), both late-scalarized.

Names load lazily: their settings (`config.py`) import without torch, for the command lines' options.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("GRPOConfig", "NFTConfig"), ".config"),
    **dict.fromkeys(("EMA", "ema_decay"), "..ema"),
    "grpo_loss": ".grpo",
    **dict.fromkeys(("lagged_decay", "nft_loss", "nft_reward_weight", "update_old_policy_"), ".nft"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
