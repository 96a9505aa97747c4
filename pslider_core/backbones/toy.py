"""The toy world's backbone: a tiny SD3 transformer on 32x32 pixels with a learned word-embedding text encoder.

It is an SD3 transformer, so the hook points, LoRA layout and velocity call are SD3's; only loading, the text
side and the (absent) VAE differ. The shipped pretrained base is the embedded default of the demo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..toy import BASE_DIR
from . import register_backbone
from .base import Conditioning, weight_device
from .sd3 import SD3Adapter

if TYPE_CHECKING:
    from ..toy.text_encoder import ToyTextEncoder, ToyTokenizer


@dataclass
class ToyPipeline:
    """The toy base's components with diffusers-style `from_pretrained` / `save_pretrained`."""

    transformer: Any
    text_encoder: ToyTextEncoder
    tokenizer: ToyTokenizer
    info: dict

    @classmethod
    def from_pretrained(cls, base: str | os.PathLike | None = None, torch_dtype: torch.dtype | None = None):
        from ..toy.base_model import load_toy_base

        return cls(*load_toy_base(base, torch_dtype=torch_dtype or torch.float32))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from ..toy.base_model import save_toy_base

        save_toy_base(directory, self.transformer, self.text_encoder, self.tokenizer, self.info, torch.float32)


@register_backbone
class ToyAdapter(SD3Adapter):
    name: ClassVar[str] = "toy"
    description: ClassVar[str] = "Toy world: tiny SD3 on 32x32 pixels (shapes and colours), for demos and benchmarks"
    default_base: ClassVar[str] = str(BASE_DIR)
    pipeline_class_path: ClassVar[str] = f"{__name__}:ToyPipeline"

    def load_pipeline(self, base: str | os.PathLike | None, torch_dtype: torch.dtype | None = None) -> ToyPipeline:
        return ToyPipeline.from_pretrained(base, torch_dtype)

    def load_transformer(self, base: str | os.PathLike | None, torch_dtype: torch.dtype | None = None):
        return self.load_pipeline(base, torch_dtype).transformer

    def tiny_pipeline(self, seed: int = 0) -> ToyPipeline:
        from ..toy.base_model import build_toy_base

        torch.manual_seed(seed)
        transformer, text_encoder, tokenizer = build_toy_base(hidden=32, head_dim=16, layers=2, text_dim=16)
        return ToyPipeline(transformer.eval(), text_encoder.eval(), tokenizer, {"pretrained": False})

    def check_sample_size(self, pipe: Any, height: int, width: int, num_frames: int = 1) -> None:
        size = pipe.transformer.config.sample_size
        if (height, width) != (size, size):
            raise ValueError(
                f"The toy base draws {size}x{size} images; got {height}x{width}. Pass --height {size} --width {size}."
            )

    def encode_prompts(
        self, pipe: Any, prompts: list[str], sources: torch.Tensor | None = None, *, height: int, width: int,
        num_frames: int = 1,
    ) -> Conditioning:
        embeds, pooled = pipe.text_encoder.encode(prompts)
        return {"prompt_embeds": embeds, "pooled_projections": pooled}

    def initial_noise(
        self, pipe: Any, batch: int, height: int, width: int, generator: torch.Generator, num_frames: int = 1
    ) -> torch.Tensor:
        self.check_sample_size(pipe, height, width)
        size = pipe.transformer.config.sample_size
        noise = torch.randn((batch, pipe.transformer.config.in_channels, size, size), generator=generator)
        return noise.to(weight_device(pipe.transformer))

    def sigmas(self, pipe: Any, num_steps: int, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        from ..toy.pipeline import sigma_grid

        return sigma_grid(num_steps).to(x.device)

    def decode(self, pipe: Any, x0: torch.Tensor, height: int, width: int, num_frames: int = 1) -> torch.Tensor:
        from ..toy.pipeline import to_images

        return to_images(x0.float())

    def random_conditioning(
        self, pipe: Any, batch: int, *, height: int, width: int, num_frames: int = 1,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Conditioning:
        """The toy text encoder's token embeddings (the tokenizer's fixed length) and pooled projection."""
        config = pipe.text_encoder.config
        device = device if device is not None else weight_device(pipe.transformer)
        dtype = dtype or pipe.text_encoder.dtype
        return {
            "prompt_embeds": self.random_tensor(
                (batch, pipe.tokenizer.max_length, config.joint_attention_dim), generator, device, dtype
            ),
            "pooled_projections": self.random_tensor((batch, config.pooled_projection_dim), generator, device, dtype),
        }
