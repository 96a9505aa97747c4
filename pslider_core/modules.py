"""The preference modules: how w becomes vectors added inside the transformer (method.md, Conditioning)."""

from __future__ import annotations

import math
import reprlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

CONDITIONING_MODES = ("global", "global+block")

# Upper bounds of the config's sizes: far above any real model, low enough that a damaged or hostile file's
# config cannot ask for tens of GB before its tensors are compared with it.
CONFIG_LIMITS = {"num_rewards": 64, "inner_dim": 65536, "num_freqs": 64, "block_pe_dim": 65536, "block_layers": 64}


@dataclass(frozen=True)
class PreferenceModuleConfig:
    """Everything needed to rebuild the modules from a file's metadata alone (configs as data)."""

    num_rewards: int
    inner_dim: int
    mode: str = "global+block"
    num_freqs: int = 1
    block_pe_dim: int = 768
    block_layers: int = 4

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


def _zero_last(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class SinusoidalPreferenceEncoding(nn.Module):
    """sin(pi 2^k w_m), cos(pi 2^k w_m) for k < num_freqs: lets a small MLP resolve nearby preferences."""

    def __init__(self, num_freqs: int) -> None:
        super().__init__()
        freqs = torch.pow(2.0, torch.arange(num_freqs, dtype=torch.float32)) * math.pi
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scaled = w.unsqueeze(-1) * self.freqs
        return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1).flatten(1)


class PreferenceModules(nn.Module):
    """Global MLP (added to the adaLN conditioning vector) and the shared block projector (added to image FF).

    Both last layers start at zero so an untrained model equals the base model exactly.
    """

    def __init__(self, config: PreferenceModuleConfig) -> None:
        super().__init__()
        self.config = config
        m, d = config.num_rewards, config.inner_dim
        self.global_mlp = nn.Sequential(nn.Linear(m, d), nn.SiLU(), _zero_last(nn.Linear(d, d)))
        self.block_projector: nn.Sequential | None = None
        if config.mode == "global+block":
            layers: list[nn.Module] = [
                SinusoidalPreferenceEncoding(config.num_freqs),
                nn.Linear(2 * m * config.num_freqs, config.block_pe_dim),
            ]
            width = config.block_pe_dim
            for _ in range(config.block_layers - 1):
                layers += [nn.Linear(width, d), nn.ReLU()]
                width = d
            layers.append(_zero_last(nn.Linear(width, d)))
            self.block_projector = nn.Sequential(*layers)

    def forward(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """w (B, M) on the simplex -> (global vector (B, D), block vector (B, D) or None)."""
        if w.ndim != 2 or w.shape[1] != self.config.num_rewards:
            raise ValueError(
                f"Preference must have shape (batch, {self.config.num_rewards}); got {tuple(w.shape)}."
            )
        w = w.to(device=self.global_mlp[0].weight.device, dtype=self.global_mlp[0].weight.dtype)
        block = self.block_projector(w) if self.block_projector is not None else None
        return self.global_mlp(w), block
