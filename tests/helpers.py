"""Test helpers shared by several test modules."""

from __future__ import annotations

import torch

from pslider_core import get_backbone


def transformer_inputs(backbone: str, pipe, prompts: list[str], seed: int = 0):
    """(x, sigma, cond) for one velocity call of a tiny pipeline, sources included for editing backbones."""
    adapter = get_backbone(backbone)
    size = {"num_frames": 1, **adapter.tiny_sample_size}
    gen = torch.Generator().manual_seed(seed)
    sources = None
    if adapter.needs_source:
        sources = torch.rand(len(prompts), 3, size["height"], size["width"], generator=gen)
    with torch.no_grad():
        cond = adapter.encode_prompts(pipe, prompts, sources, **size)
    x = adapter.initial_noise(pipe, len(prompts), size["height"], size["width"], gen, size["num_frames"])
    sigma = torch.full((len(prompts),), 0.6)
    return x, sigma, cond


def randomize_(params, seed: int = 0, std: float = 0.05) -> None:
    """Give every parameter random values so that zero-initialised paths become visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * std)
