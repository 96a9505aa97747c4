"""Fake of comfy/model_sampling.py: the flow-matching sampling used by SD3, Flux and LTX (CONST prediction)."""

from __future__ import annotations

import torch


class ModelSamplingDiscreteFlow(torch.nn.Module):
    """x_t = (1 - sigma) x0 + sigma noise; the model predicts v = noise - x0; timestep = sigma * multiplier."""

    def __init__(self, multiplier: float = 1000.0, sigma_min: float = 0.001) -> None:
        super().__init__()
        self.multiplier = multiplier
        self.register_buffer("sigmas", torch.linspace(sigma_min, 1.0, 1000), persistent=False)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.multiplier

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma
