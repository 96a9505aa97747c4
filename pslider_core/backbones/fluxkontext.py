"""FLUX.1 Kontext (instruction-based image editing, dual- and single-stream blocks).

The state x is the unpacked target latent (B, C, h, w): its shape carries the geometry, so the trainer's elementwise
flow-matching math needs nothing else. Packing into 2x2 tokens, appending the source image's reference tokens and
slicing them off the output happen inside `predict_velocity`, as FluxKontextPipeline does in its loop.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from . import register_backbone
from .base import (
    BackboneAdapter,
    Conditioning,
    import_object,
    shifted_sigma_grid,
    vae_decode_images,
    weight_device,
    weight_dtype,
)

if TYPE_CHECKING:
    from diffusers import FluxKontextPipeline


@register_backbone
class FluxKontextAdapter(BackboneAdapter):
    name: ClassVar[str] = "fluxkontext"
    description: ClassVar[str] = "FLUX.1 Kontext image editing (source image + instruction)"
    needs_source: ClassVar[bool] = True
    default_base: ClassVar[str] = "black-forest-labs/FLUX.1-Kontext-dev"
    transformer_class_path: ClassVar[str] = "diffusers:FluxTransformer2DModel"
    pipeline_class_path: ClassVar[str] = "diffusers:FluxKontextPipeline"

    global_module: ClassVar[str] = "time_text_embed"
    # double-stream blocks' image feed-forward only: single-stream blocks mix text and image tokens
    block_module_pattern: ClassVar[str] = r"transformer_blocks\.\d+\.ff"
    comfy_global_module: ClassVar[str] = "diffusion_model.time_in"
    comfy_block_module: ClassVar[str] = "diffusion_model.double_blocks.{i}.img_mlp"

    # Attention projections; single blocks have no to_out, their proj_out (attention + MLP output) stands in.
    # Full names, because a bare "proj_out" also matches the model's final projection.
    lora_target_modules: ClassVar[str] = (
        r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
        r"|single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_out)"
    )
    lora_key_prefix: ClassVar[str] = "transformer."
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    fsdp_block_classes: ClassVar[tuple[str, ...]] = ("FluxTransformerBlock", "FluxSingleTransformerBlock")

    # T5 tokens per prompt (the pipeline's default) and the distilled guidance the model is given as an input
    # (not CFG): 2.5 is what Black Forest Labs and the pipeline's example use for Kontext.
    max_sequence_length: int = 512
    guidance_scale: float = 2.5

    def check_sample_size(self, pipe: Any, height: int, width: int, num_frames: int = 1) -> None:
        multiple = 2 * pipe.vae_scale_factor  # 2x2 latent packing
        if height % multiple or width % multiple:
            raise ValueError(
                f"Kontext height and width must be multiples of {multiple}; got {height}x{width}. Pass --height and "
                f"--width as multiples of {multiple}."
            )

    def target_token_mask(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """Target latents only: reference-image tokens carry first id coordinate 1 and must stay unchanged."""
        ids = kwargs.get("img_ids")
        position = _img_ids_position(self.transformer_class_path)
        if ids is None and len(args) > position:
            ids = args[position]
        if ids is None:
            return None
        ids = ids[0] if ids.ndim == 3 else ids  # legacy (B, N, 3) ids, as the transformer itself accepts
        return ids[:, 0] == 0

    def tiny_pipeline(self, seed: int = 0) -> FluxKontextPipeline:
        """1 double + 1 single block, 2 heads x 16, 4-channel VAE (16 channels after 2x2 packing)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from .tiny import eval_components, tiny_clip_tokenizer, tiny_t5_encoder, tiny_t5_tokenizer, tiny_vae

        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=514, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
            )
        )
        tokenizer_2 = tiny_t5_tokenizer()
        text_encoder_2 = tiny_t5_encoder(tokenizer_2)
        vae = tiny_vae(latent_channels=4, shift_factor=0.1159, scaling_factor=0.3611)
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        pipe = FluxKontextPipeline(
            scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(),
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
        )
        return eval_components(pipe)

    def encode_prompts(
        self, pipe: Any, prompts: list[str], sources: torch.Tensor | None = None, *, height: int, width: int,
        num_frames: int = 1,
    ) -> Conditioning:
        """Text embeddings plus the VAE latents of each source image (the reference the edit starts from).

        Sources are used at their own size, floored to a multiple of 2 x the VAE factor; unlike the pipeline's
        default, they are not snapped to Kontext's preferred resolutions (the caller picks the training size).
        """
        _check_sources(sources, len(prompts))
        device = weight_device(pipe.transformer)
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, max_sequence_length=self.max_sequence_length
        )
        multiple = pipe.vae_scale_factor * 2
        height, width = (sources.shape[2] // multiple) * multiple, (sources.shape[3] // multiple) * multiple
        if height == 0 or width == 0:
            raise ValueError(
                f"Source images must be at least {multiple} px on each side; got {tuple(sources.shape)}. "
                "Pass larger images."
            )
        image = pipe.image_processor.resize(sources, height, width)
        image = pipe.image_processor.preprocess(image, height, width).to(device=device, dtype=pipe.vae.dtype)
        reference = pipe._encode_vae_image(image, generator=None)
        return {"prompt_embeds": embeds, "pooled_projections": pooled, "reference_latents": reference}

    def initial_noise(
        self, pipe: Any, batch: int, height: int, width: int, generator: torch.Generator, num_frames: int = 1
    ) -> torch.Tensor:
        self.check_sample_size(pipe, height, width)
        f = pipe.vae_scale_factor
        shape = (batch, pipe.transformer.config.in_channels // 4, height // f, width // f)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(weight_device(pipe.transformer))

    def sigmas(self, pipe: Any, num_steps: int, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The pipeline's grid: linspace(1, 1/n), shifted by mu from the number of target tokens (x's shape), then 0."""
        seq_len = (x.shape[2] // 2) * (x.shape[3] // 2)
        return shifted_sigma_grid(pipe.scheduler, num_steps, seq_len, x.device, (256, 4096, 0.5, 1.15))

    def predict_velocity(
        self, pipe: Any, transformer: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        dtype = weight_dtype(transformer)
        batch, channels, h, w = x.shape
        reference = cond["reference_latents"]
        ref_h, ref_w = reference.shape[2:]
        target_ids = pipe._prepare_latent_image_ids(batch, h // 2, w // 2, x.device, dtype)
        reference_ids = pipe._prepare_latent_image_ids(batch, ref_h // 2, ref_w // 2, x.device, dtype)
        reference_ids[:, 0] = 1
        targets = pipe._pack_latents(x, batch, channels, h, w)
        tokens = torch.cat([targets, pipe._pack_latents(reference, batch, channels, ref_h, ref_w)], dim=1)
        embeds = cond["prompt_embeds"]
        out = transformer(
            hidden_states=tokens.to(dtype),
            timestep=sigma.to(dtype),
            guidance=torch.full((batch,), self.guidance_scale, device=x.device, dtype=torch.float32),
            pooled_projections=cond["pooled_projections"].to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=dtype),
            img_ids=torch.cat([target_ids, reference_ids], dim=0),
            return_dict=False,
        )[0]
        f = pipe.vae_scale_factor
        return pipe._unpack_latents(out[:, : targets.shape[1]], h * f, w * f, f).to(x.dtype)

    def decode(self, pipe: Any, x0: torch.Tensor, height: int, width: int, num_frames: int = 1) -> torch.Tensor:
        return vae_decode_images(pipe.vae, x0)

    def random_conditioning(
        self, pipe: Any, batch: int, *, height: int, width: int, num_frames: int = 1,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Conditioning:
        """T5 embeddings (`max_sequence_length` tokens), pooled CLIP embeddings and the VAE latents of a source of
        this size (floored to the 2x2 packing, as `encode_prompts` floors the sources)."""
        config = pipe.transformer.config
        device = device if device is not None else weight_device(pipe.transformer)
        t5 = pipe.text_encoder_2 if pipe.text_encoder_2 is not None else pipe.transformer
        clip = pipe.text_encoder if pipe.text_encoder is not None else pipe.transformer
        f = pipe.vae_scale_factor
        latent = (batch, config.in_channels // 4, height // (2 * f) * 2, width // (2 * f) * 2)
        return {
            "prompt_embeds": self.random_tensor(
                (batch, self.max_sequence_length, config.joint_attention_dim), generator, device,
                dtype or weight_dtype(t5),
            ),
            "pooled_projections": self.random_tensor(
                (batch, config.pooled_projection_dim), generator, device, dtype or weight_dtype(clip)
            ),
            "reference_latents": self.random_tensor(latent, generator, device, dtype or weight_dtype(pipe.vae)),
        }


@functools.cache
def _img_ids_position(transformer_class_path: str) -> int:
    """Position of `img_ids` among the transformer's positional arguments (hooks may see either form)."""
    forward = import_object(transformer_class_path).forward
    return list(inspect.signature(forward).parameters).index("img_ids") - 1


def _check_sources(sources: torch.Tensor | None, batch: int) -> None:
    shape_ok = sources is not None and sources.ndim == 4 and sources.shape[:2] == (batch, 3)
    if shape_ok and 0 <= float(sources.min()) and float(sources.max()) <= 1:
        return
    got = "None" if sources is None else f"shape {tuple(sources.shape)}"
    if shape_ok:
        got += f", values in [{float(sources.min()):.3g}, {float(sources.max()):.3g}]"
    raise ValueError(
        "FLUX.1 Kontext edits a source image: pass sources as a float tensor (B, 3, H, W) in [0, 1] with "
        f"B = {batch} (one per prompt); got {got}."
    )
