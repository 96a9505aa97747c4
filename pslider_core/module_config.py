"""The preference modules' configuration: plain data, no torch (the file's metadata and the trainer's options)."""

from __future__ import annotations

import reprlib
from dataclasses import asdict, dataclass

CONDITIONING_MODES = ("global", "global+block")

# Upper bounds of the config's sizes: far above any real model, low enough that a damaged or hostile file's
# config cannot ask for tens of GB before its tensors are compared with it.
CONFIG_LIMITS = {"num_rewards": 64, "inner_dim": 65536, "num_freqs": 64, "block_pe_dim": 65536, "block_layers": 64}
REWARD_RANKS_LIMIT = 1024


@dataclass(frozen=True)
class PreferenceModuleConfig:
    """Everything needed to rebuild the modules from a file's metadata alone (configs as data).

    `reward_ranks` > 0 makes the LoRA w-conditioned (Panacea-style): its last `reward_ranks` x M ranks belong to the
    rewards, `reward_ranks` each, and each reward's ranks are scaled by its weight w_m, so the corners train ranks of
    their own instead of pulling one shared LoRA both ways; the first ranks stay shared (scale 1).
    """

    num_rewards: int
    inner_dim: int
    mode: str = "global+block"
    num_freqs: int = 1
    block_pe_dim: int = 768
    block_layers: int = 4
    reward_ranks: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in CONDITIONING_MODES:
            raise ValueError(
                f"Unknown conditioning mode {reprlib.repr(self.mode)}; choose one of {list(CONDITIONING_MODES)}."
            )
        for key, limit in CONFIG_LIMITS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(
                    f"PreferenceModuleConfig.{key} must be an integer from 1 to {limit}, got {reprlib.repr(value)}."
                )
        ranks = self.reward_ranks
        if isinstance(ranks, bool) or not isinstance(ranks, int) or not 0 <= ranks <= REWARD_RANKS_LIMIT:
            raise ValueError(
                f"PreferenceModuleConfig.reward_ranks must be an integer from 0 to {REWARD_RANKS_LIMIT}, "
                f"got {reprlib.repr(ranks)}."
            )

    @property
    def reward_rank_total(self) -> int:
        """The LoRA's last ranks that w scales: `reward_ranks` per reward, in reward order."""
        return self.reward_ranks * self.num_rewards

    def check_lora_rank(self, rank: int) -> None:
        """The reward-owned ranks must fit in a LoRA of `rank` (0: no LoRA): a ValueError naming both otherwise."""
        if self.reward_rank_total > rank:
            raise ValueError(
                f"reward_ranks asks for {self.reward_rank_total} reward-owned LoRA ranks but the LoRA has rank {rank}; "
                "raise the LoRA's rank or lower reward_ranks."
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreferenceModuleConfig":
        """The config from its `to_dict` form; unknown keys are ignored, missing required ones named."""
        if not isinstance(data, dict):
            raise ValueError(f"A module config must be a JSON object, got {type(data).__name__}.")
        missing = [k for k in ("num_rewards", "inner_dim") if k not in data]
        if missing:
            raise ValueError(f"A module config needs {missing}; got only {reprlib.repr(sorted(data))}.")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
