"""The objectives' settings and the samplers' choices as plain data, importable without torch (the command lines
build their options from them and answer --help at once)."""

from __future__ import annotations

from dataclasses import dataclass

ODE_SOLVERS = ("euler", "dpm2")
SDE_KINDS = ("sde", "cps")
ADVANTAGE_STDS = ("group", "pooled")  # `advantages.group_advantages`: whose std scales a reward's advantages


@dataclass
class NFTConfig:
    """beta: how far the implicit positive / negative policies sit from the old one. adv_clip: the advantage clip A_max,
    which also scales the loss. kl_weight: lambda_KL of the velocity penalty towards the base model."""

    beta: float = 0.1
    adv_clip: float = 5.0
    kl_weight: float = 1e-4

    def __post_init__(self) -> None:
        if not 0 < self.beta <= 1:
            raise ValueError(f"NFT beta must be in (0, 1] (the reference uses 0.1), got {self.beta}.")
        if not self.adv_clip > 0:
            raise ValueError(f"adv_clip must be > 0 (the reference uses 5), got {self.adv_clip}.")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0 (0 turns the KL term off), got {self.kl_weight}.")


@dataclass
class GRPOConfig:
    """clip_range: PPO ratio clip eps. kl_weight: beta_KL towards the base model's step mean (Flow-GRPO's 0.04).
    adv_clip: advantage clip. noise_level, kind: the SDE of the rollouts (see `samplers.sde_step`)."""

    clip_range: float = 1e-4
    kl_weight: float = 0.04
    adv_clip: float = 5.0
    noise_level: float = 0.7
    kind: str = "sde"

    def __post_init__(self) -> None:
        if not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0 (Flow-GRPO uses 1e-4), got {self.clip_range}.")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0 (0 turns the KL term off), got {self.kl_weight}.")
        if not self.adv_clip > 0:
            raise ValueError(f"adv_clip must be > 0 (the reference uses 5), got {self.adv_clip}.")
        if not 0 < self.noise_level <= 1:
            raise ValueError(f"noise_level must be in (0, 1] (Flow-GRPO uses 0.7), got {self.noise_level}.")
        if self.kind not in SDE_KINDS:
            raise ValueError(f"Unknown SDE kind {self.kind!r}; choose one of {list(SDE_KINDS)}.")
