"""The preference modules: how w becomes vectors added inside the transformer (method.md, Conditioning)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .module_config import PreferenceModuleConfig


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
