"""LAION-style aesthetic predictor: a linear MLP head over normalised CLIP image embeddings.

Head file: safetensors with keys `layers.<i>.weight` / `layers.<i>.bias` for increasing i, each a Linear,
applied in index order with no activation between them (the LAION "improved aesthetic predictor" layout:
layers.0 768->1024, layers.2 1024->128, layers.4 128->64, layers.6 64->16, layers.7 16->1, on CLIP ViT-L/14).
Convert the released `.pth` once with
`save_file(torch.load(path, weights_only=True), "aesthetic_head.safetensors")`.
"""

from __future__ import annotations

import os
import re

import torch
from safetensors.torch import load_file

from .base import ModelReward, RewardBatch
from .embedders import DEFAULT_CLIP, ClipEmbedder, load_clip
from .hf import cached
from .registry import register_reward

_KEY = re.compile(r"^layers\.(\d+)\.(weight|bias)$")
_LAYOUT_HINT = "expected keys layers.<i>.weight / layers.<i>.bias forming a chain of Linear layers ending in 1 output"


def load_head(path: str, reward: str) -> torch.nn.Sequential:
    """Build the MLP from a safetensors file, checking the layout."""
    tensors = load_file(path)
    indices = sorted({int(m.group(1)) for key in tensors if (m := _KEY.match(key))})
    stray = [key for key in tensors if not _KEY.match(key)]
    if stray or not indices:
        raise ValueError(
            f"reward {reward!r}: head {path} has unexpected keys {stray[:5] or list(tensors)[:5]}; {_LAYOUT_HINT}"
        )
    layers = []
    for i in indices:
        weight, bias = tensors.get(f"layers.{i}.weight"), tensors.get(f"layers.{i}.bias")
        if weight is None or bias is None or weight.ndim != 2 or bias.shape != weight.shape[:1]:
            raise ValueError(f"reward {reward!r}: head {path} layer {i} is not a Linear layer; {_LAYOUT_HINT}")
        if layers and layers[-1].out_features != weight.shape[1]:
            raise ValueError(
                f"reward {reward!r}: head {path} layer {i} takes {weight.shape[1]} inputs but the previous layer "
                f"gives {layers[-1].out_features}; {_LAYOUT_HINT}"
            )
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight, "bias": bias})
        layers.append(linear)
    if layers[-1].out_features != 1:
        raise ValueError(f"reward {reward!r}: head {path} ends with {layers[-1].out_features} outputs; {_LAYOUT_HINT}")
    return torch.nn.Sequential(*layers).eval().requires_grad_(False)


@register_reward("aesthetic")
class Aesthetic(ModelReward):
    """Aesthetic score (about 1-10) predicted from the CLIP image embedding."""

    name = "aesthetic"
    description = "LAION aesthetic predictor (MLP head on CLIP ViT-L/14 image embeddings), about 1-10"

    def __init__(
        self, head: str = "", model: str = DEFAULT_CLIP, processor: str | None = None, batch_size: int = 16
    ) -> None:
        if not head:
            raise ValueError(
                "aesthetic needs its MLP head weights: aesthetic(head=/path/to/head.safetensors). Convert LAION's "
                "sac+logos+ava1-l14-linearMSE.pth with save_file(torch.load(p, weights_only=True), 'head.safetensors')"
            )
        if not os.path.isfile(head):
            raise FileNotFoundError(
                f"reward 'aesthetic': head file {head!r} does not exist; pass head=<file>.safetensors"
            )
        self.head, self.model, self.processor, self.batch_size = head, model, processor, batch_size

    def _load(self) -> tuple[ClipEmbedder, torch.nn.Sequential]:
        clip = load_clip(self.model, self.processor, self.base_name, self.device, self.dtype)
        key = ("aesthetic_head", os.path.abspath(self.head), str(self.device))
        head = cached(key, lambda: load_head(self.head, self.name).to(self.device))
        width = clip.model.config.projection_dim
        if head[0].in_features != width:
            raise ValueError(
                f"reward {self.name!r}: head {self.head} expects {head[0].in_features}-d embeddings but {self.model} "
                f"gives {width}-d; use the CLIP model the head was trained on (ViT-L/14 for LAION's head)"
            )
        return clip, head

    def score(self, batch: RewardBatch) -> torch.Tensor:
        clip, head = self.models
        return head(clip.embed_images(batch.images)).squeeze(-1)
