"""LTX-2 (text-to-audio+video, dual-stream video/audio DiT).

The transformer always denoises a video and an audio latent together (they attend to each other), so both belong
to the flow-matching state. The state x is ONE tensor: packed video tokens followed by packed audio tokens along
dim 1, which works because both streams are 128 features wide in the real model (video: 128 latent channels,
patch 1; audio: 8 latent channels x 16 latent mel bins). Both parts share one sigma grid, as in LTX2Pipeline (its
audio scheduler is a copy).

The token split and the video grid cannot be read back from a (B, N, C) tensor, so `encode_prompts` puts the
batch's `LTX2Layout` in the conditioning (`shared_layout`), where `sigmas` and `predict_velocity` read it; losses or
rewards that should ignore audio take the video part from `LTX2Layout.split`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from . import register_backbone
from .base import BackboneAdapter, Conditioning, shifted_sigma_grid, weight_device, weight_dtype

if TYPE_CHECKING:
    from diffusers import LTX2Pipeline


@dataclass(frozen=True)
class LTX2Layout:
    """Where video and audio sit in the state, and the latent grid the transformer's positions are built from."""

    latent_frames: int
    latent_height: int
    latent_width: int
    video_tokens: int
    audio_frames: int  # audio tokens (latent audio frames; the pipeline does not patch audio)
    frame_rate: float  # frames per second, a transformer input (audio and video positions are in seconds)

    @property
    def tokens(self) -> int:
        return self.video_tokens + self.audio_frames

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(video tokens, audio tokens) views of a state of this layout, e.g. for losses that ignore audio."""
        if x.ndim != 3 or x.shape[1] != self.tokens:
            raise ValueError(
                f"LTX-2 states of this size are (B, {self.tokens}, C), got {tuple(x.shape)}: pass the height, width "
                "and num_frames the state was created with (to encode_prompts and decode alike)."
            )
        video, audio = x.split([self.video_tokens, self.audio_frames], dim=1)
        return video, audio


@register_backbone
class LTX2Adapter(BackboneAdapter):
    name: ClassVar[str] = "ltx2"
    description: ClassVar[str] = "LTX-2 text-to-video (with its jointly generated audio)"
    modality: ClassVar[str] = "video"
    generates_audio: ClassVar[bool] = True
    tiny_sample_size: ClassVar[dict[str, int]] = {"height": 32, "width": 32, "num_frames": 5}
    default_base: ClassVar[str] = "Lightricks/LTX-2"
    transformer_class_path: ClassVar[str] = "diffusers:LTX2VideoTransformer3DModel"
    pipeline_class_path: ClassVar[str] = "diffusers:LTX2Pipeline"

    global_module: ClassVar[str] = "time_embed.emb"  # video timestep embedding; audio_time_embed is left alone
    block_module_pattern: ClassVar[str] = r"transformer_blocks\.\d+\.ff"  # video feed-forward, not audio_ff
    comfy_global_module: ClassVar[str] = "diffusion_model.adaln_single.emb"
    comfy_block_module: ClassVar[str] = "diffusion_model.transformer_blocks.{i}.ff"

    # video self- and text cross-attention only (audio_attn1/2 and the audio<->video attentions stay frozen)
    lora_target_modules: ClassVar[str] = r".*transformer_blocks\.\d+\.attn[12]\.to_(q|k|v|out\.0)"
    lora_key_prefix: ClassVar[str] = "diffusion_model."
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder", "connectors")  # connectors map Gemma's states
    fsdp_block_classes: ClassVar[tuple[str, ...]] = ("LTX2VideoTransformerBlock",)

    # Gemma tokens per prompt: the pipeline's default (so is the base class's frame rate, 24)
    max_sequence_length: int = 1024

    # ---------------------------------------------------------------- state layout
    def layout(self, pipe: Any, height: int, width: int, num_frames: int) -> LTX2Layout:
        """The latent grid and token counts LTX2Pipeline uses for this video size."""
        multiple = pipe.vae_spatial_compression_ratio * pipe.transformer_spatial_patch_size
        if height % multiple or width % multiple or num_frames < 1:
            raise ValueError(
                f"LTX-2 needs height and width that are multiples of {multiple} and num_frames >= 1 (8k + 1 frames "
                f"use the VAE's whole temporal grid); got {height}x{width}, {num_frames} frames."
            )
        frames = (num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
        h, w = height // pipe.vae_spatial_compression_ratio, width // pipe.vae_spatial_compression_ratio
        p, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        audio_per_second = pipe.audio_sampling_rate / pipe.audio_hop_length / float(
            pipe.audio_vae_temporal_compression_ratio
        )
        return LTX2Layout(
            latent_frames=frames, latent_height=h, latent_width=w, video_tokens=(frames // pt) * (h // p) * (w // p),
            audio_frames=round(num_frames / self.frame_rate * audio_per_second), frame_rate=self.frame_rate,
        )

    def check_sample_size(self, pipe: Any, height: int, width: int, num_frames: int = 1) -> None:
        self.layout(pipe, height, width, num_frames)

    def state_mask(self, pipe: Any, mask: torch.Tensor, height: int, width: int, num_frames: int = 1) -> torch.Tensor:
        """(B_m, tokens, 1): every latent frame's video tokens get the mask area-averaged onto the token grid (the
        same region in every frame); audio tokens get 0, i.e. the outside weights (a picture region has no sound;
        the preference does not condition audio directly anyway)."""
        from ..controls import resize_mask

        layout = self.layout(pipe, height, width, num_frames)
        p, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        grid = resize_mask(mask, layout.latent_height // p, layout.latent_width // p)
        video = grid[:, None].expand(-1, layout.latent_frames // pt, -1, -1).reshape(grid.shape[0], -1)
        audio = torch.zeros(grid.shape[0], layout.audio_frames)
        return torch.cat([video, audio], dim=1)[..., None].to(weight_device(pipe.transformer))

    def frame_mask(self, pipe: Any, height: int, width: int, num_frames: int = 1) -> torch.Tensor:
        """(1, tokens, 1): latent frame f of F gets f / (F - 1) on all its video tokens (pixel frames take their
        latent frame's value: frame 0 alone, then each group of the VAE's temporal compression); audio tokens, in
        time order too, get their position j / (A - 1) so the sound's clock runs with the picture's."""
        from ..controls import frame_ramp, time_ramp

        layout = self.layout(pipe, height, width, num_frames)
        pt = pipe.transformer_temporal_patch_size
        frames = layout.latent_frames // pt
        video = frame_ramp(frames).repeat_interleave(layout.video_tokens // frames)
        audio = time_ramp(layout.audio_frames)
        return torch.cat([video, audio])[None, :, None].to(weight_device(pipe.transformer))

    @staticmethod
    def layout_of(cond: Conditioning) -> LTX2Layout:
        """The layout `encode_prompts` put in a conditioning batch."""
        try:
            return cond["shared_layout"]
        except KeyError:
            raise ValueError(
                "This conditioning holds no LTX-2 layout (`shared_layout`): create it with the LTX-2 adapter's "
                "encode_prompts(pipe, prompts, height=..., width=..., num_frames=...)."
            ) from None

    # ---------------------------------------------------------------- loading
    def tiny_pipeline(self, seed: int = 0) -> LTX2Pipeline:
        """2 layers, video 2 heads x 8, audio 2 heads x 4; video and audio tokens both 4 features wide."""
        from diffusers import (
            AutoencoderKLLTX2Audio,
            AutoencoderKLLTX2Video,
            FlowMatchEulerDiscreteScheduler,
            LTX2Pipeline,
            LTX2VideoTransformer3DModel,
        )
        from diffusers.pipelines.ltx2 import LTX2TextConnectors
        from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
        from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

        from .tiny import eval_components, tiny_gemma_tokenizer

        torch.manual_seed(seed)
        tokenizer = tiny_gemma_tokenizer()
        text_layers, text_width = 2, 16
        text_encoder = Gemma3ForConditionalGeneration(
            Gemma3Config(
                text_config=Gemma3TextConfig(
                    vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=32,
                    num_hidden_layers=text_layers, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                    max_position_embeddings=64, sliding_window=16,
                ),
                vision_config=SiglipVisionConfig(
                    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8,
                    patch_size=4,
                ),
                mm_tokens_per_image=4,
            )
        )
        connectors = LTX2TextConnectors(
            caption_channels=text_width, text_proj_in_factor=text_layers + 1,
            video_connector_num_attention_heads=2, video_connector_attention_head_dim=8,
            video_connector_num_layers=1, video_connector_num_learnable_registers=None,
            audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8,
            audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32, rope_double_precision=False, rope_type="split",
        )
        transformer = LTX2VideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
            audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
            audio_cross_attention_dim=8, num_layers=2, caption_channels=text_width, rope_double_precision=False,
            rope_type="split",
        )
        vae = AutoencoderKLLTX2Video(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
            layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
            decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
            upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1,
            patch_size_t=1, encoder_causal=True, decoder_causal=False,
        )
        # 2 latent channels x (8 mel bins / 4) = 4 features per audio token, the width of a video token
        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, in_channels=2, resolution=32,
            latent_channels=2, mel_bins=8,
        )
        vocoder = LTX2Vocoder(
            in_channels=2 * 8, hidden_channels=16, out_channels=2, upsample_kernel_sizes=[4, 4],
            upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
            output_sampling_rate=16000,
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
            max_image_seq_len=4096, shift_terminal=0.1,
        )
        pipe = LTX2Pipeline(
            scheduler=scheduler, vae=vae, audio_vae=audio_vae, text_encoder=text_encoder, tokenizer=tokenizer,
            connectors=connectors, transformer=transformer, vocoder=vocoder,
        )
        return eval_components(pipe)

    # ---------------------------------------------------------------- generation steps
    def encode_prompts(
        self, pipe: Any, prompts: list[str], sources: torch.Tensor | None = None, *, height: int, width: int,
        num_frames: int = 1,
    ) -> Conditioning:
        """Gemma hidden states through the text connectors (one embedding per stream, one mask for both) and the
        state layout of this size."""
        layout = self.layout(pipe, height, width, num_frames)
        embeds, mask, _, _ = pipe.encode_prompt(
            prompt=prompts, do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
            device=weight_device(pipe.transformer),
        )
        padding_side = getattr(pipe.tokenizer, "padding_side", "left")
        video_embeds, audio_embeds, connector_mask = pipe.connectors(embeds, mask, padding_side=padding_side)
        return {
            "prompt_embeds": video_embeds,
            "audio_prompt_embeds": audio_embeds,
            "prompt_attention_mask": connector_mask,
            "shared_layout": layout,
        }

    def initial_noise(
        self, pipe: Any, batch: int, height: int, width: int, generator: torch.Generator, num_frames: int = 1
    ) -> torch.Tensor:
        """Video noise, then audio noise, drawn in the pipeline's order; packed and concatenated along tokens."""
        layout = self.layout(pipe, height, width, num_frames)
        mel_bins = pipe.audio_vae.config.mel_bins // pipe.audio_vae_mel_compression_ratio
        video = torch.randn(
            (batch, pipe.transformer.config.in_channels, layout.latent_frames, layout.latent_height,
             layout.latent_width),
            generator=generator, dtype=torch.float32,
        )
        audio = torch.randn(
            (batch, pipe.audio_vae.config.latent_channels, layout.audio_frames, mel_bins),
            generator=generator, dtype=torch.float32,
        )
        video = pipe._pack_latents(video, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)
        audio = pipe._pack_audio_latents(audio)
        if video.shape[2] != audio.shape[2]:
            raise ValueError(
                f"The LTX-2 state concatenates video and audio tokens, so both must be equally wide; this model has "
                f"{video.shape[2]} video and {audio.shape[2]} audio features per token (the real LTX-2 has 128 each)."
            )
        return torch.cat([video, audio], dim=1).to(weight_device(pipe.transformer))

    def sigmas(self, pipe: Any, num_steps: int, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The pipeline's grid: linspace(1, 1/n), shifted by mu from the number of video tokens, then 0."""
        layout = self.layout_of(cond)
        layout.split(x)  # refuses a state of another size, which would get another grid
        return shifted_sigma_grid(pipe.scheduler, num_steps, layout.video_tokens, x.device, (1024, 4096, 0.95, 2.05))

    def predict_velocity(
        self, pipe: Any, transformer: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        layout = self.layout_of(cond)
        video, audio = layout.split(x)
        dtype = weight_dtype(transformer)
        # the pipeline passes scheduler timesteps (sigma x num_train_timesteps) as both timestep and sigma
        timestep = (sigma * pipe.scheduler.config.num_train_timesteps).to(dtype)
        mask = cond["prompt_attention_mask"]
        video_v, audio_v = transformer(
            hidden_states=video.to(dtype),
            audio_hidden_states=audio.to(dtype),
            encoder_hidden_states=cond["prompt_embeds"].to(dtype),
            audio_encoder_hidden_states=cond["audio_prompt_embeds"].to(dtype),
            timestep=timestep,
            sigma=timestep,
            encoder_attention_mask=mask,
            audio_encoder_attention_mask=mask,
            num_frames=layout.latent_frames,
            height=layout.latent_height,
            width=layout.latent_width,
            fps=layout.frame_rate,
            audio_num_frames=layout.audio_frames,
            use_cross_timestep=True,
            return_dict=False,
        )
        return torch.cat([video_v, audio_v], dim=1).to(x.dtype)

    def decode(self, pipe: Any, x0: torch.Tensor, height: int, width: int, num_frames: int = 1) -> torch.Tensor:
        """Video part -> frames (B, T, 3, H, W) in [0, 1]; the audio part is ignored (see `decode_audio`)."""
        layout = self.layout(pipe, height, width, num_frames)
        vae = pipe.vae
        latents = pipe._unpack_latents(
            layout.split(x0)[0], layout.latent_frames, layout.latent_height, layout.latent_width,
            pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size,
        )
        latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        # a timestep-conditioned VAE gets the pipeline's default decode_timestep 0 (no decode noise)
        timestep = torch.zeros(x0.shape[0], device=x0.device) if vae.config.timestep_conditioning else None
        video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
        return (video.float().permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1)

    def decode_audio(
        self, pipe: Any, x0: torch.Tensor, height: int, width: int, num_frames: int = 1
    ) -> tuple[torch.Tensor, int]:
        """Audio part -> waveform (B, channels, samples) and its sample rate, for rewards that score audio."""
        layout = self.layout(pipe, height, width, num_frames)
        audio_vae = pipe.audio_vae
        latents = pipe._denormalize_audio_latents(layout.split(x0)[1], audio_vae.latents_mean, audio_vae.latents_std)
        mel_bins = audio_vae.config.mel_bins // pipe.audio_vae_mel_compression_ratio
        latents = pipe._unpack_audio_latents(latents, layout.audio_frames, num_mel_bins=mel_bins)
        mel = audio_vae.decode(latents.to(audio_vae.dtype), return_dict=False)[0]
        return pipe.vocoder(mel).float(), int(pipe.vocoder.config.output_sampling_rate)

    def random_conditioning(
        self, pipe: Any, batch: int, *, height: int, width: int, num_frames: int = 1,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Conditioning:
        """The connectors' video and audio embeddings (`max_sequence_length` tokens in the transformer's caption
        width, read from the transformer so that it works once the text side is released), an all-valid mask
        (registers fill the padding) and the state layout of this size."""
        device = device if device is not None else weight_device(pipe.transformer)
        text = pipe.connectors if pipe.connectors is not None else pipe.transformer
        dtype = dtype or weight_dtype(text)
        shape = (batch, self.max_sequence_length, pipe.transformer.config.caption_channels)
        return {
            "prompt_embeds": self.random_tensor(shape, generator, device, dtype),
            "audio_prompt_embeds": self.random_tensor(shape, generator, device, dtype),
            "prompt_attention_mask": torch.ones(shape[:2], dtype=torch.int64, device=device),
            "shared_layout": self.layout(pipe, height, width, num_frames),
        }
