"""Fidelity to the source image (editing): pixel metrics (SSIM, PSNR, MSE) and embedding similarity.

Sources at another resolution are resized (bilinear, antialiased) to the sample's size first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.transform import resize
from kornia.metrics import ssim

from .base import ModelReward, Reward, RewardBatch
from .embedders import ClipEmbedder, Dinov2Embedder, load_image_embedder
from .registry import register_reward

PSNR_CAP_DB = 100.0  # identical images: a finite value keeps group statistics finite


def aligned_pair(batch: RewardBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, sources) on `device` in float32, sources resized to the images' height and width."""
    images = batch.images.to(device, torch.float32)
    sources = batch.sources.to(device, torch.float32)
    if sources.shape[-2:] != images.shape[-2:]:
        sources = resize(sources, tuple(images.shape[-2:]), interpolation="bilinear", antialias=True)
    return images, sources


class PixelFidelity(Reward):
    needs_source = True

    def score(self, batch: RewardBatch) -> torch.Tensor:
        return self.compare(*aligned_pair(batch, self.device))

    def compare(self, images: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_reward("ssim")
class Ssim(PixelFidelity):
    name = "ssim"
    description = "SSIM to the source image (11x11 Gaussian window), up to 1"

    def __init__(self, window_size: int = 11) -> None:
        if window_size < 3 or window_size % 2 == 0:
            raise ValueError(f"ssim: window_size must be an odd number >= 3, got {window_size}")
        self.window_size = window_size

    def compare(self, images: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        return ssim(images, sources, self.window_size).mean(dim=(1, 2, 3))


def mean_squared_error(images: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(images, sources, reduction="none").mean(dim=(1, 2, 3))


@register_reward("psnr")
class Psnr(PixelFidelity):
    name = "psnr"
    description = f"PSNR to the source image in dB (identical images: {PSNR_CAP_DB:g})"

    def compare(self, images: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        floor = 10 ** (-PSNR_CAP_DB / 10)
        return -10 * torch.log10(mean_squared_error(images, sources).clamp_min(floor))


@register_reward("mse")
class Mse(PixelFidelity):
    name = "mse"
    description = "mean squared error to the source image; LOWER is better"
    higher_is_better = False

    def compare(self, images: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        return mean_squared_error(images, sources)


class EmbeddingFidelity(ModelReward):
    """Cosine similarity between image and source embeddings of a frozen vision backbone."""

    needs_source = True
    backbone = ""

    def __init__(self, model: str | None = None, processor: str | None = None, batch_size: int = 16) -> None:
        self.model, self.processor, self.batch_size = model, processor, batch_size

    def _load(self) -> ClipEmbedder | Dinov2Embedder:
        return load_image_embedder(self.backbone, self.model, self.processor, self.base_name, self.device, self.dtype)

    def score(self, batch: RewardBatch) -> torch.Tensor:
        embedder = self.models
        return (embedder.embed_images(batch.images) * embedder.embed_images(batch.sources)).sum(dim=-1)


@register_reward("clip_fidelity")
class ClipFidelity(EmbeddingFidelity):
    name = "clip_fidelity"
    description = "cosine similarity of CLIP image embeddings of the sample and its source"
    backbone = "clip"


@register_reward("dinov2_fidelity")
class Dinov2Fidelity(EmbeddingFidelity):
    name = "dinov2_fidelity"
    description = "cosine similarity of DINOv2 embeddings of the sample and its source (structure, identity)"
    backbone = "dinov2"
