"""Flow-matching conventions of the toy world and a plain Euler sampler (for tests, judging and pretraining checks).

Convention (as diffusers SD3): x_t = (1 - sigma) * x0 + sigma * noise, the transformer predicts v = noise - x0 and is
called with timestep = sigma * 1000. Model space is pixels scaled to [-1, 1]. The RL trainer owns its own sampling;
this helper is the reference deterministic ODE sampler of the base model.
"""

from __future__ import annotations

import itertools

import torch
from diffusers import SD3Transformer2DModel

from .text_encoder import ToyTextEncoder


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> model space [-1, 1]."""
    return images * 2 - 1


def to_images(x: torch.Tensor) -> torch.Tensor:
    """Model space -> images in [0, 1] (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


def sigma_grid(num_steps: int) -> torch.Tensor:
    """Uniform sigmas from 1 (pure noise) to 0 (clean), num_steps + 1 values."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    return torch.linspace(1.0, 0.0, num_steps + 1)


def velocity(
    transformer: SD3Transformer2DModel,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled: torch.Tensor,
) -> torch.Tensor:
    """v = noise - x0 predicted at noise level sigma (scalar or (B,))."""
    timestep = (sigma * 1000).to(x_t.dtype).expand(x_t.shape[0])
    return transformer(
        hidden_states=x_t, encoder_hidden_states=prompt_embeds, pooled_projections=pooled, timestep=timestep
    ).sample


@torch.no_grad()
def sample(
    transformer: SD3Transformer2DModel,
    text_encoder: ToyTextEncoder,
    prompts: list[str],
    num_steps: int = 20,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images (N, 3, S, S) in [0, 1] from the deterministic Euler ODE, one per prompt; noise from `generator` if not given."""
    param = next(transformer.parameters())
    size = transformer.config.sample_size
    if noise is None:
        noise = torch.randn(len(prompts), transformer.config.in_channels, size, size, generator=generator)
    if noise.shape[0] != len(prompts):
        raise ValueError(f"Got noise for {noise.shape[0]} samples but {len(prompts)} prompts; pass one per prompt.")
    x = noise.to(param.device, param.dtype)
    embeds, pooled = text_encoder.encode(prompts)
    embeds, pooled = embeds.to(param.device, param.dtype), pooled.to(param.device, param.dtype)
    sigmas = sigma_grid(num_steps).to(param.device, param.dtype)
    for sigma, sigma_next in itertools.pairwise(sigmas):
        x = x + (sigma_next - sigma) * velocity(transformer, x, sigma, embeds, pooled)
    return to_images(x.float())
