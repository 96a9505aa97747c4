"""Video rewards. Image rewards already score videos frame by frame (see `Reward.__call__`); this module
adds what only a whole clip can show: temporal consistency between consecutive frames.
"""

from __future__ import annotations

import torch
from kornia.metrics import ssim

from .base import ModelReward, RewardBatch
from .embedders import load_image_embedder
from .registry import register_reward

METRICS = ("ssim", "clip", "dinov2")


@register_reward("temporal_consistency")
class TemporalConsistency(ModelReward):
    """Mean similarity of consecutive frames: SSIM (model-free) or the cosine of CLIP / DINOv2 embeddings
    (VBench-style subject consistency). Flicker and jumps lower it; a frozen clip scores highest.
    """

    name = "temporal_consistency"
    description = "mean similarity of consecutive frames (metric=ssim | clip | dinov2), up to 1"
    needs_video = True
    batch_size = 4

    def __init__(self, metric: str = "ssim", model: str | None = None, processor: str | None = None) -> None:
        if metric not in METRICS:
            raise ValueError(f"temporal_consistency: metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if metric == "ssim" and (model or processor):
            raise ValueError("temporal_consistency(metric=ssim) uses no model; pass metric=clip or metric=dinov2")
        self.metric, self.model, self.processor = metric, model, processor

    def _load(self):
        if self.metric == "ssim":
            return None
        return load_image_embedder(self.metric, self.model, self.processor, self.base_name, self.device, self.dtype)

    def score(self, batch: RewardBatch) -> torch.Tensor:
        n, t = batch.images.shape[:2]
        if t < 2:
            raise ValueError(f"reward {self.name!r} needs at least 2 frames per video, got {t}")
        frames = batch.images.to(self.device, torch.float32)
        if self.metric == "ssim":
            similarity = ssim(frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1), 11).mean(dim=(1, 2, 3))
            return similarity.view(n, t - 1).mean(dim=1)
        embeds = self.models.embed_images(frames.flatten(0, 1)).view(n, t, -1)
        return (embeds[:, :-1] * embeds[:, 1:]).sum(dim=-1).mean(dim=1)
