"""Model-free image statistics: cheap rewards for tests, toy runs and sanity checks (kornia kernels)."""

from __future__ import annotations

import io

import numpy as np
import torch
from kornia.color import rgb_to_grayscale, rgb_to_hsv
from kornia.filters import canny, laplacian
from PIL import Image

from .base import Reward, RewardBatch
from .registry import register_reward


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) floats in [0, 1] -> (N,H,W,3) uint8, for PIL encoders."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class ImageStat(Reward):
    """A reward computed from the images alone, on the reward's device in float32."""

    def score(self, batch: RewardBatch) -> torch.Tensor:
        return self.stat(batch.images.to(self.device, torch.float32))

    def stat(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_reward("brightness")
class Brightness(ImageStat):
    name = "brightness"
    description = "mean luma (Rec. 601) in [0, 1]"

    def stat(self, images: torch.Tensor) -> torch.Tensor:
        return rgb_to_grayscale(images).mean(dim=(1, 2, 3))


@register_reward("saturation")
class Saturation(ImageStat):
    name = "saturation"
    description = "mean HSV saturation in [0, 1] (grey images score 0)"

    def stat(self, images: torch.Tensor) -> torch.Tensor:
        return rgb_to_hsv(images)[:, 1].mean(dim=(1, 2))


@register_reward("sharpness")
class Sharpness(ImageStat):
    name = "sharpness"
    description = "variance of the 3x3 Laplacian of the grey image (blur lowers it)"

    def stat(self, images: torch.Tensor) -> torch.Tensor:
        return laplacian(rgb_to_grayscale(images), kernel_size=3, normalized=False).var(dim=(1, 2, 3))


@register_reward("colorfulness")
class Colorfulness(ImageStat):
    name = "colorfulness"
    description = "Hasler-Suesstrunk colorfulness on [0, 1] RGB (grey images score 0)"

    def stat(self, images: torch.Tensor) -> torch.Tensor:
        red, green, blue = images.unbind(dim=1)
        rg, yb = (red - green).flatten(1), (0.5 * (red + green) - blue).flatten(1)
        spread = (rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False)).sqrt()
        offset = (rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2).sqrt()
        return spread + 0.3 * offset


@register_reward("edge_density")
class EdgeDensity(ImageStat):
    name = "edge_density"
    description = "fraction of pixels on Canny edges of the grey image ('sketchiness'), in [0, 1]"

    def __init__(self, low_threshold: float = 0.1, high_threshold: float = 0.2) -> None:
        self.low_threshold, self.high_threshold = low_threshold, high_threshold

    def stat(self, images: torch.Tensor) -> torch.Tensor:
        _, edges = canny(rgb_to_grayscale(images), self.low_threshold, self.high_threshold)
        return edges.mean(dim=(1, 2, 3))


@register_reward("jpeg_compressibility")
class JpegCompressibility(Reward):
    """DDPO's compressibility: minus the JPEG (quality 95) size in kB; smooth, flat images score higher."""

    name = "jpeg_compressibility"
    description = "minus the JPEG size in kB at quality 95 (DDPO); higher = more compressible"
    sign = -1.0

    def __init__(self, quality: int = 95) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"{self.name}: quality must be in 1..100, got {quality}")
        self.quality = quality

    def score(self, batch: RewardBatch) -> torch.Tensor:
        sizes = []
        for array in to_uint8(batch.images):
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="JPEG", quality=self.quality)
            sizes.append(buffer.tell() / 1000)
        return self.sign * torch.tensor(sizes)


@register_reward("jpeg_incompressibility")
class JpegIncompressibility(JpegCompressibility):
    name = "jpeg_incompressibility"
    description = "the JPEG size in kB at quality 95 (DDPO); higher = more detail"
    sign = 1.0
