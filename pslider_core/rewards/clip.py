"""CLIP-family text-image rewards: CLIP score, CLIP style score and PickScore."""

from __future__ import annotations

from functools import partial

import torch

from .base import ModelReward, RewardBatch
from .embedders import DEFAULT_CLIP, ClipEmbedder, load_clip
from .registry import register_reward

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
# The authors' photorealism objective (method.md): PickScore against this rewrite of the prompt.
PHOTOREALISM_TEMPLATE = "A photorealistic, high quality, 4K, camera-captured snapshot of {prompt}"


@register_reward("clip_score")
class ClipScore(ModelReward):
    """Cosine similarity between CLIP embeddings of the image and a text built from `template` ({prompt})."""

    name = "clip_score"
    description = "CLIP cosine similarity between the image and its prompt (prompt adherence), about 0.1-0.4"
    use_logit_scale = False

    def __init__(
        self, model: str = DEFAULT_CLIP, processor: str | None = None, template: str = "{prompt}", batch_size: int = 16
    ) -> None:
        self.model, self.processor, self.template, self.batch_size = model, processor, template, batch_size

    def _load(self) -> ClipEmbedder:
        return load_clip(self.model, self.processor, self.base_name, self.device, self.dtype)

    def texts(self, batch: RewardBatch) -> list[str]:
        return [self.template.replace("{prompt}", prompt) for prompt in batch.prompts]

    def score(self, batch: RewardBatch) -> torch.Tensor:
        clip: ClipEmbedder = self.models
        texts = self.texts(batch)
        unique = sorted(set(texts))
        text_embeds = clip.embed_texts(unique)[[unique.index(t) for t in texts]]
        cosine = (clip.embed_images(batch.images) * text_embeds).sum(dim=-1)
        return cosine * clip.logit_scale if self.use_logit_scale else cosine


@register_reward("clip_style")
class ClipStyle(ClipScore):
    """CLIP cosine similarity to a fixed style description; the prompt is ignored."""

    name = "clip_style"
    description = "CLIP cosine similarity between the image and a style text, e.g. clip_style(style=a pencil sketch)"

    def __init__(
        self, style: str, model: str = DEFAULT_CLIP, processor: str | None = None, batch_size: int = 16
    ) -> None:
        if not style.strip():
            raise ValueError("clip_style needs a style description, e.g. clip_style(style=a pencil sketch)")
        super().__init__(model=model, processor=processor, template=style, batch_size=batch_size)


@register_reward("pickscore")
class PickScore(ClipScore):
    """PickScore (Kirstain et al. 2023): a CLIP-H fine-tune on human preferences, logit_scale * cosine."""

    name = "pickscore"
    description = "PickScore human-preference score of the image for its prompt, about 18-24"
    use_logit_scale = True

    def __init__(
        self,
        model: str = PICKSCORE_MODEL,
        processor: str | None = PICKSCORE_PROCESSOR,
        template: str = "{prompt}",
        batch_size: int = 16,
    ) -> None:
        super().__init__(model=model, processor=processor, template=template, batch_size=batch_size)


register_reward(
    "pickscore_photorealism",
    partial(PickScore, template=PHOTOREALISM_TEMPLATE),
    description="PickScore against 'A photorealistic, high quality, 4K, camera-captured snapshot of {prompt}' "
    "(the authors' photorealism reward)",
)
