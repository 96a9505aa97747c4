"""CLIP and DINOv2 embedders shared by the CLIP-family rewards, fidelity and temporal consistency.

Each embedder returns L2-normalised float32 embeddings, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .hf import ImagePreprocessor, cached, from_pretrained

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_DINOV2 = "facebook/dinov2-base"


class ClipEmbedder:
    """A CLIPModel with its tokenizer and image preprocessing (tokenizer and preprocessing from `processor`)."""

    def __init__(self, model, tokenizer, preprocess: ImagePreprocessor) -> None:
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess
        self.device, self.dtype = model.device, model.dtype

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device, torch.float32)).to(self.dtype)
        return F.normalize(self.model.get_image_features(pixel_values=pixels).pooler_output.float(), dim=-1)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        max_length = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        tokens = {key: value.to(self.device) for key, value in tokens.items()}
        return F.normalize(self.model.get_text_features(**tokens).pooler_output.float(), dim=-1)


class Dinov2Embedder:
    """A Dinov2Model; the image embedding is its pooled (layer-normalised CLS) output."""

    def __init__(self, model, preprocess: ImagePreprocessor) -> None:
        self.model, self.preprocess = model, preprocess
        self.device, self.dtype = model.device, model.dtype

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device, torch.float32)).to(self.dtype)
        return F.normalize(self.model(pixel_values=pixels).pooler_output.float(), dim=-1)


def _frozen(model, device: torch.device):
    return model.to(device).eval().requires_grad_(False)


def load_clip(model: str, processor: str | None, reward: str, device: torch.device, dtype: torch.dtype) -> ClipEmbedder:
    """A cached ClipEmbedder; `processor` (default: `model`) supplies the tokenizer and preprocessor config."""
    from transformers import AutoTokenizer, CLIPModel

    processor = processor or model
    param = "processor" if processor != model else "model"

    def build() -> ClipEmbedder:
        preprocess = ImagePreprocessor.from_pretrained(processor, reward, param)
        tokenizer = from_pretrained(AutoTokenizer.from_pretrained, processor, reward, param)
        clip = from_pretrained(CLIPModel.from_pretrained, model, reward, "model", dtype=dtype)
        return ClipEmbedder(_frozen(clip, device), tokenizer, preprocess)

    return cached(("clip", model, processor, str(device), dtype), build)


def load_dinov2(
    model: str, processor: str | None, reward: str, device: torch.device, dtype: torch.dtype
) -> Dinov2Embedder:
    """A cached Dinov2Embedder; `processor` (default: `model`) supplies the preprocessor config."""
    from transformers import Dinov2Model

    processor = processor or model
    param = "processor" if processor != model else "model"

    def build() -> Dinov2Embedder:
        preprocess = ImagePreprocessor.from_pretrained(processor, reward, param)
        dino = from_pretrained(Dinov2Model.from_pretrained, model, reward, "model", dtype=dtype)
        return Dinov2Embedder(_frozen(dino, device), preprocess)

    return cached(("dinov2", model, processor, str(device), dtype), build)


IMAGE_EMBEDDERS = {"clip": (load_clip, DEFAULT_CLIP), "dinov2": (load_dinov2, DEFAULT_DINOV2)}


def load_image_embedder(
    backbone: str, model: str | None, processor: str | None, reward: str, device: torch.device, dtype: torch.dtype
) -> ClipEmbedder | Dinov2Embedder:
    """An image embedder by backbone name ('clip' or 'dinov2'), with that backbone's default checkpoint."""
    if backbone not in IMAGE_EMBEDDERS:
        raise ValueError(f"reward {reward!r}: unknown backbone {backbone!r}; use one of {', '.join(IMAGE_EMBEDDERS)}")
    load, default = IMAGE_EMBEDDERS[backbone]
    return load(model or default, processor, reward, device, dtype)
