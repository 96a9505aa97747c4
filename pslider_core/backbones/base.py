"""What every backbone adapter knows: classes, loading, hook points, LoRA layout, ComfyUI paths, generation steps.

A backbone's specifics live in its adapter alone; the trainer, the sampler and the ComfyUI nodes ask the adapter
instead of branching on the backbone name.
"""

from __future__ import annotations

import importlib
import os
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..conditioning import matching_modules, preference_conditioning
from ..modules import PreferenceModules

Conditioning = dict[str, Any]
"""Per-prompt inputs of the transformer (embeddings, reference latents): tensors batched on dim 0, except
entries whose key starts with `shared_` (e.g. the sample geometry a state cannot carry), which hold for every
sample."""


def select_conditioning(cond: Conditioning, index: torch.Tensor | list[int]) -> Conditioning:
    """The samples `index` (repeats allowed: CFG doubling, K rollouts per prompt) of a conditioning batch."""
    index = torch.as_tensor(index, dtype=torch.long)
    return {k: v if k.startswith("shared_") else v[index.to(v.device)] for k, v in cond.items()}


class BackboneAdapter:
    """Base class; subclasses set the class attributes and implement the loading and generation methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    modality: ClassVar[str] = "image"  # "image" or "video": what rewards receive
    needs_source: ClassVar[bool] = False  # editing backbones take a source image per prompt
    generates_audio: ClassVar[bool] = False  # True: `decode_audio` gives the sound generated with each sample
    # pixel size (and frames) that the tiny pipeline generates quickly: tests and demos use it
    tiny_sample_size: ClassVar[dict[str, int]] = {"height": 32, "width": 32, "num_frames": 1}
    default_base: ClassVar[str]  # hub id of the real base model
    # "module:Class" of the diffusers classes, imported on first use: the node pack, which only needs the hook points
    # below, never imports diffusers
    transformer_class_path: ClassVar[str]
    pipeline_class_path: ClassVar[str]

    # diffusers hook points (module paths inside the transformer)
    global_module: ClassVar[str]  # output = the global adaLN conditioning vector
    block_module_pattern: ClassVar[str]  # regex over module names: image-stream feed-forward of each block
    # the same points in ComfyUI's model tree (relative to BaseModel, i.e. starting with "diffusion_model.")
    comfy_global_module: ClassVar[str]
    comfy_block_module: ClassVar[str]  # format string with {i}

    # LoRA layout
    lora_target_modules: ClassVar[tuple[str, ...] | str]
    lora_key_prefix: ClassVar[str]  # prefix of LoRA keys in the file, e.g. "transformer."

    # pipeline components that only encode prompts: once every prompt's conditioning is cached they are released
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)

    # class names of the transformer's repeated blocks: the units FSDP shards and gathers one at a time
    # (empty: the whole transformer is one unit, which saves no memory)
    fsdp_block_classes: ClassVar[tuple[str, ...]] = ()

    # playback rate of generated videos (frames per second) and, for video models, a model input; images ignore it
    frame_rate: float = 24.0

    @property
    def transformer_class(self) -> type[nn.Module]:
        return import_object(self.transformer_class_path)

    @property
    def pipeline_class(self) -> type:
        return import_object(self.pipeline_class_path)

    # ---------------------------------------------------------------- structure
    def inner_dim(self, transformer: nn.Module) -> int:
        """Width of the global conditioning vector and of the image-stream hidden states."""
        cfg = transformer.config
        return int(cfg.num_attention_heads * cfg.attention_head_dim)

    def block_modules(self, transformer: nn.Module) -> list[str]:
        return matching_modules(transformer, self.block_module_pattern)

    def comfy_block_modules(self, num_blocks: int) -> list[str]:
        return [self.comfy_block_module.format(i=i) for i in range(num_blocks)]

    def unreachable_lora_modules(self, transformer: nn.Module) -> list[str]:
        """Full names of targeted layers whose output reaches no model output (a LoRA there never gets a
        gradient): left out of the LoRA."""
        return []

    def check_sample_size(self, pipe: Any, height: int, width: int, num_frames: int = 1) -> None:
        """Raise ValueError naming the base's limit and the option to change when it cannot render this size."""

    def target_token_mask(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """Tokens of this transformer call that the block path may change (None = all of them)."""
        return None

    def state_mask(self, pipe: Any, mask: torch.Tensor, height: int, width: int, num_frames: int = 1) -> torch.Tensor:
        """A pixel mask (B_m, height, width) in [0, 1] laid out like this backbone's state, for regional weights
        (`pslider_core.controls`): broadcastable to states (B, ...) with B_m = 1 or B.

        Default, for image latents (B, C, h, w) (sd3, toy, fluxkontext, whose state is the unpacked target latent):
        (B_m, 1, h, w), each latent cell the fraction of its pixels inside (area average).
        """
        from ..controls import resize_mask

        shape = self.initial_noise(pipe, 1, height, width, torch.Generator().manual_seed(0), num_frames).shape
        if len(shape) != 4:
            raise NotImplementedError(f"The {self.name} adapter does not lay out masks for states of shape {shape}.")
        return resize_mask(mask, shape[2], shape[3])[:, None].to(weight_device(pipe.transformer))

    def frame_mask(self, pipe: Any, height: int, width: int, num_frames: int = 1) -> torch.Tensor:
        """Per-frame weights' coefficient in the state layout: 0 at the first frame, 1 at the last (video only)."""
        raise ValueError(
            f"Per-frame weights need a video backbone; {self.name} makes images (use regional weights for space)."
        )

    def condition(
        self, transformer: nn.Module, modules: PreferenceModules, w: torch.Tensor
    ) -> AbstractContextManager[None]:
        """Reversible context in which every transformer forward is conditioned on w."""
        return preference_conditioning(transformer, modules, self, w)

    # ---------------------------------------------------------------- loading
    def load_pipeline(self, base: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> Any:
        """Full diffusers pipeline from a hub id or a local directory (what users point `--base` at)."""
        try:
            return self.pipeline_class.from_pretrained(str(base), dtype=torch_dtype)
        except (OSError, ValueError) as err:
            raise OSError(
                f"Could not load the {self.name} base model from {str(base)!r}: {err}. Pass a local directory "
                f"holding a diffusers {self.pipeline_class.__name__} (save_pretrained layout) or a reachable hub id."
            ) from err

    def load_transformer(self, base: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> nn.Module:
        """Only the transformer (subfolder `transformer`) of a base model."""
        try:
            return self.transformer_class.from_pretrained(str(base), subfolder="transformer", dtype=torch_dtype)
        except (OSError, ValueError) as err:
            raise OSError(
                f"Could not load the {self.name} transformer from {str(base)!r}: {err}. Pass a diffusers model "
                "directory (with a transformer/ subfolder) or a reachable hub id."
            ) from err

    def tiny_pipeline(self, seed: int = 0) -> Any:
        """A randomly initialised miniature of the real pipeline, built from configs with no download."""
        raise NotImplementedError

    # ---------------------------------------------------------------- generation steps (trainer and sampler)
    # A batch is generated as: cond = encode_prompts(.., height=, width=, num_frames=); x = initial_noise(..);
    # sigmas(.., x, cond); predict_velocity(.., x, sigma, cond) per step; decode(.., x0, height, width, num_frames).
    def encode_prompts(
        self, pipe: Any, prompts: list[str], sources: torch.Tensor | None = None, *, height: int, width: int,
        num_frames: int = 1,
    ) -> Conditioning:
        """Conditioning of a batch to be generated at this size: text embeddings (and, for editing, source
        latents); adapters whose states do not carry their geometry add it as `shared_` entries."""
        raise NotImplementedError

    def initial_noise(
        self, pipe: Any, batch: int, height: int, width: int, generator: torch.Generator, num_frames: int = 1
    ) -> torch.Tensor:
        """Gaussian noise in the model's state space (x at sigma = 1)."""
        raise NotImplementedError

    def sigmas(self, pipe: Any, num_steps: int, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Decreasing sigma grid of num_steps + 1 values from 1 to 0, as the backbone's scheduler spaces it for
        states like x conditioned on cond (a resolution-dependent shift reads the size from either)."""
        raise NotImplementedError

    def predict_velocity(
        self, pipe: Any, transformer: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """Flow-matching velocity v = noise - x0 at sigma (B,), same shape as x."""
        raise NotImplementedError

    def decode(self, pipe: Any, x0: torch.Tensor, height: int, width: int, num_frames: int = 1) -> torch.Tensor:
        """Clean state -> images (B, 3, H, W) or videos (B, T, 3, H, W), float in [0, 1]."""
        raise NotImplementedError

    def decode_audio(
        self, pipe: Any, x0: torch.Tensor, height: int, width: int, num_frames: int = 1
    ) -> tuple[torch.Tensor, int]:
        """Clean state -> waveform (B, channels, samples) and its sample rate, for backbones that generate audio."""
        from . import audio_backbones  # the registry imports this module

        raise NotImplementedError(
            f"Backbone {self.name!r} generates no audio; audio rewards need a backbone that does "
            f"({', '.join(audio_backbones())})."
        )

    def random_conditioning(
        self, pipe: Any, batch: int, *, height: int, width: int, num_frames: int = 1,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Conditioning:
        """Random conditioning with the keys, shapes and dtypes `encode_prompts` gives for this pipeline and size,
        without running a text encoder (memory estimates on the meta device, benchmarks); `dtype` overrides the
        floating dtypes, `device` defaults to the transformer's."""
        raise NotImplementedError

    @staticmethod
    def random_tensor(
        shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str, dtype: torch.dtype
    ) -> torch.Tensor:
        """Standard normal values drawn with `generator` on its own device (a seed gives the same values on every
        device), then moved; on the meta device only the shape exists."""
        device = torch.device(device)
        if device.type == "meta":
            return torch.empty(shape, device=device, dtype=dtype)
        draw_on = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(shape, generator=generator, device=draw_on).to(device, dtype)


def import_object(path: str) -> Any:
    """The object a "package.module:name" path names, imported now."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def weight_dtype(module: nn.Module) -> torch.dtype:
    """dtype of a model's frozen weights, from its first non-LoRA parameter (trained LoRA tensors stay float32).

    diffusers' `.dtype` and `.device` walk every parameter: read per forward, they cost 6% of a tiny epoch."""
    return _first_base_parameter(module).dtype


def weight_device(module: nn.Module) -> torch.device:
    """Device of a model's frozen weights (see `weight_dtype`)."""
    return _first_base_parameter(module).device


def _first_base_parameter(module: nn.Module) -> torch.Tensor:
    for name, param in module.named_parameters():
        if "lora_" not in name:
            return param
    raise ValueError(f"{type(module).__name__} has no parameters to read a dtype or device from.")


def vae_decode_images(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents of a diffusers AutoencoderKL -> images (B, 3, H, W) in [0, 1], as its image pipelines do."""
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def shifted_sigma_grid(
    scheduler: Any, num_steps: int, seq_len: int, device: torch.device, defaults: tuple[int, int, float, float]
) -> torch.Tensor:
    """Flux-style pipelines' grid: linspace(1, 1/n) shifted by mu(seq_len), then 0.

    `defaults` are the pipeline's fallbacks for (base_image_seq_len, max_image_seq_len, base_shift, max_shift)
    when the scheduler config lacks them.
    """
    config = scheduler.config
    keys = ("base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift")
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(seq_len, *(config.get(key, default) for key, default in zip(keys, defaults)))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), device=device, mu=mu)
    return scheduler.sigmas.to(torch.float32)
