"""Stable Diffusion 3 / 3.5 (text-to-image, MMDiT)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from . import register_backbone
from .base import BackboneAdapter, Conditioning, vae_decode_images, weight_device, weight_dtype

if TYPE_CHECKING:
    from diffusers import StableDiffusion3Pipeline


@register_backbone
class SD3Adapter(BackboneAdapter):
    name: ClassVar[str] = "sd3"
    description: ClassVar[str] = "Stable Diffusion 3.5 text-to-image"
    default_base: ClassVar[str] = "stabilityai/stable-diffusion-3.5-medium"
    transformer_class_path: ClassVar[str] = "diffusers:SD3Transformer2DModel"
    pipeline_class_path: ClassVar[str] = "diffusers:StableDiffusion3Pipeline"

    global_module: ClassVar[str] = "time_text_embed"
    block_module_pattern: ClassVar[str] = r"transformer_blocks\.\d+\.ff"
    comfy_global_module: ClassVar[str] = "diffusion_model.t_embedder"
    comfy_block_module: ClassVar[str] = "diffusion_model.joint_blocks.{i}.x_block.mlp"

    lora_target_modules: ClassVar[tuple[str, ...]] = (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    )
    lora_key_prefix: ClassVar[str] = "transformer."
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2", "text_encoder_3")
    fsdp_block_classes: ClassVar[tuple[str, ...]] = ("JointTransformerBlock",)

    # T5 tokens per prompt; the real pipeline's default is 256, the tiny one keeps it short.
    max_sequence_length: int = 256

    def tiny_pipeline(self, seed: int = 0) -> StableDiffusion3Pipeline:
        """2-block SD3 shaped the way ComfyUI's detector expects (hidden 64 x depth, head dim 64, 16 channels)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        from .tiny import eval_components, tiny_clip_tokenizer, tiny_t5_encoder, tiny_t5_tokenizer, tiny_vae

        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=64, num_attention_heads=2, joint_attention_dim=32,
            caption_projection_dim=128, pooled_projection_dim=32, pos_embed_max_size=32,
        )
        clip_cfg = dict(
            vocab_size=514, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            projection_dim=16, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        )
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg))
        tokenizer_3 = tiny_t5_tokenizer()
        text_encoder_3 = tiny_t5_encoder(tokenizer_3)
        vae = tiny_vae(latent_channels=16, shift_factor=0.0609, scaling_factor=1.5305)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
            text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(), text_encoder_2=text_encoder_2,
            tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
        )
        return eval_components(pipe)

    def unreachable_lora_modules(self, transformer: nn.Module) -> list[str]:
        """The last joint block discards its text stream (context_pre_only): its text queries reach no output."""
        return [f"transformer_blocks.{transformer.config.num_layers - 1}.attn.add_q_proj"]

    def check_sample_size(self, pipe: Any, height: int, width: int, num_frames: int = 1) -> None:
        """Latent patches must fit the learned position embedding (pos_embed_max_size patches per side)."""
        config = pipe.transformer.config
        multiple = pipe.vae_scale_factor * config.patch_size
        largest = (config.pos_embed_max_size or config.sample_size) * multiple
        if height % multiple or width % multiple:
            raise ValueError(
                f"This {self.name} base renders sizes that are multiples of {multiple} px; got {height}x{width}. "
                f"Pass --height and --width as multiples of {multiple}."
            )
        if max(height, width) > largest:
            raise ValueError(
                f"This {self.name} base renders at most {largest}x{largest} px (pos_embed_max_size "
                f"{config.pos_embed_max_size} x patch {config.patch_size} x VAE factor {pipe.vae_scale_factor}); "
                f"got {height}x{width}. Pass --height and --width of at most {largest} (or a larger base)."
            )

    def encode_prompts(
        self, pipe: Any, prompts: list[str], sources: torch.Tensor | None = None, *, height: int, width: int,
        num_frames: int = 1,
    ) -> Conditioning:
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
            device=weight_device(pipe.transformer), max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": embeds, "pooled_projections": pooled}

    def initial_noise(
        self, pipe: Any, batch: int, height: int, width: int, generator: torch.Generator, num_frames: int = 1
    ) -> torch.Tensor:
        f = pipe.vae_scale_factor
        shape = (batch, pipe.transformer.config.in_channels, height // f, width // f)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(weight_device(pipe.transformer))

    def sigmas(self, pipe: Any, num_steps: int, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        pipe.scheduler.set_timesteps(num_steps, device=x.device)
        return pipe.scheduler.sigmas.to(torch.float32)

    def predict_velocity(
        self, pipe: Any, transformer: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        dtype = weight_dtype(transformer)
        return transformer(
            hidden_states=x.to(dtype),
            timestep=(sigma * 1000).to(dtype),
            encoder_hidden_states=cond["prompt_embeds"].to(dtype),
            pooled_projections=cond["pooled_projections"].to(dtype),
            return_dict=False,
        )[0].to(x.dtype)

    def decode(self, pipe: Any, x0: torch.Tensor, height: int, width: int, num_frames: int = 1) -> torch.Tensor:
        return vae_decode_images(pipe.vae, x0)

    def random_conditioning(
        self, pipe: Any, batch: int, *, height: int, width: int, num_frames: int = 1,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Conditioning:
        """CLIP tokens then T5 tokens (`max_sequence_length`; the CLIP length when the pipeline has no T5, as
        diffusers zero-fills it) in the joint attention width, and the pooled CLIP projections."""
        config = pipe.transformer.config
        device = device if device is not None else weight_device(pipe.transformer)
        text = pipe.text_encoder if pipe.text_encoder is not None else pipe.transformer
        dtype = dtype or weight_dtype(text)
        t5_tokens = self.max_sequence_length if pipe.text_encoder_3 is not None else pipe.tokenizer_max_length
        tokens = pipe.tokenizer_max_length + t5_tokens
        return {
            "prompt_embeds": self.random_tensor((batch, tokens, config.joint_attention_dim), generator, device, dtype),
            "pooled_projections": self.random_tensor((batch, config.pooled_projection_dim), generator, device, dtype),
        }
