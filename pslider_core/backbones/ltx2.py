"""LTX-2 (text-to-audio+video, dual-stream video/audio DiT).

The transformer always denoises a video and an audio latent together (they attend to each other), so both belong
to the flow-matching state. The state x is ONE tensor: packed video tokens followed by packed audio tokens along
dim 1, which works because both streams are 128 features wide in the real model (video: 128 latent channels,
patch 1; audio: 8 latent channels x 16 latent mel bins). Losses or rewards that should ignore audio take the video
part from `split_state`. Both parts share one sigma grid, as in LTX2Pipeline (its audio scheduler is a copy).

The token split and the video grid cannot be read back from a (B, N, C) tensor, so `initial_noise` records them
per model geometry and token count (`layout_of`); `sigmas` and `predict_velocity` look them up there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2Pipeline,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
from torch import nn
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

from . import register_backbone
from .base import BackboneAdapter, Conditioning
from .tiny_text import tiny_gemma_tokenizer


@dataclass(frozen=True)
class LTX2Layout:
    """Where video and audio sit in the state, and the latent grid the transformer's positions are built from."""

    latent_frames: int
    latent_height: int
    latent_width: int
    video_tokens: int
    audio_frames: int  # audio tokens (latent audio frames; the pipeline does not patch audio)

    @property
    def tokens(self) -> int:
        return self.video_tokens + self.audio_frames


# (model geometry, frame rate, state token count) -> layout, filled by `initial_noise`: any pipeline of the same
# configuration (a reloaded copy, another adapter instance) finds the states' layout
_LAYOUTS: dict[tuple, LTX2Layout] = {}


@register_backbone
class LTX2Adapter(BackboneAdapter):
    name: ClassVar[str] = "ltx2"
    description: ClassVar[str] = "LTX-2 text-to-video (with its jointly generated audio)"
    modality: ClassVar[str] = "video"
    tiny_sample_size: ClassVar[dict[str, int]] = {"height": 32, "width": 32, "num_frames": 5}
    default_base: ClassVar[str] = "Lightricks/LTX-2"
    transformer_class: ClassVar[type[nn.Module]] = LTX2VideoTransformer3DModel
    pipeline_class: ClassVar[type] = LTX2Pipeline

    global_module: ClassVar[str] = "time_embed.emb"  # video timestep embedding; audio_time_embed is left alone
    block_module_pattern: ClassVar[str] = r"transformer_blocks\.\d+\.ff"  # video feed-forward, not audio_ff
    comfy_global_module: ClassVar[str] = "diffusion_model.adaln_single.emb"
    comfy_block_module: ClassVar[str] = "diffusion_model.transformer_blocks.{i}.ff"

    # video self- and text cross-attention only (audio_attn1/2 and the audio<->video attentions stay frozen)
    lora_target_modules: ClassVar[str] = r".*transformer_blocks\.\d+\.attn[12]\.to_(q|k|v|out\.0)"
    lora_key_prefix: ClassVar[str] = "diffusion_model."

    # Gemma tokens per prompt and playback frame rate: the pipeline's defaults.
    max_sequence_length: int = 1024
    frame_rate: float = 24.0

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
            audio_frames=round(num_frames / self.frame_rate * audio_per_second),
        )

    def _key(self, pipe: Any, tokens: int) -> tuple:
        return (
            pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio,
            pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size, pipe.audio_sampling_rate,
            pipe.audio_hop_length, pipe.audio_vae_temporal_compression_ratio, self.frame_rate, tokens,
        )

    def layout_of(self, pipe: Any, x: torch.Tensor) -> LTX2Layout:
        """Layout that `initial_noise` recorded for states of x's token count from a pipeline like this one."""
        try:
            return _LAYOUTS[self._key(pipe, x.shape[1])]
        except KeyError:
            raise ValueError(
                f"No LTX-2 layout is known for a state of {x.shape[1]} tokens. Create states with "
                "initial_noise(pipe, batch, height, width, generator, num_frames), which records how video and "
                "audio tokens are split for that size, before calling sigmas or predict_velocity."
            ) from None

    def split_state(self, pipe: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(video tokens, audio tokens) views of a state, e.g. for losses that ignore audio."""
        layout = self.layout_of(pipe, x)
        video, audio = x.split([layout.video_tokens, layout.audio_frames], dim=1)
        return video, audio

    def _sized_layout(self, pipe: Any, x: torch.Tensor, height: int, width: int, num_frames: int) -> LTX2Layout:
        layout = self.layout(pipe, height, width, num_frames)
        if x.shape[1] != layout.tokens:
            raise ValueError(
                f"An LTX-2 state for {height}x{width}, {num_frames} frames has {layout.tokens} tokens, got "
                f"{x.shape[1]}: pass the size the state was created with."
            )
        return layout

    def _record(self, pipe: Any, layout: LTX2Layout) -> None:
        known = _LAYOUTS.setdefault(self._key(pipe, layout.tokens), layout)
        if known != layout:
            raise ValueError(
                f"Two LTX-2 sizes give states of {layout.tokens} tokens ({known} and {layout}), which a (B, N, C) "
                "state cannot tell apart: sample only one of these sizes in a process."
            )

    # ---------------------------------------------------------------- loading
    def tiny_pipeline(self, seed: int = 0) -> LTX2Pipeline:
        """2 layers, video 2 heads x 8, audio 2 heads x 4; video and audio tokens both 4 features wide."""
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
        for component in (text_encoder, connectors, transformer, vae, audio_vae, vocoder):
            component.eval()
        return pipe

    # ---------------------------------------------------------------- generation steps
    def encode_prompts(self, pipe: Any, prompts: list[str], sources: torch.Tensor | None = None) -> Conditioning:
        """Gemma hidden states through the text connectors: one embedding per stream, one shared mask."""
        embeds, mask, _, _ = pipe.encode_prompt(
            prompt=prompts, do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
            device=pipe.transformer.device,
        )
        padding_side = getattr(pipe.tokenizer, "padding_side", "left")
        video_embeds, audio_embeds, connector_mask = pipe.connectors(embeds, mask, padding_side=padding_side)
        return {
            "prompt_embeds": video_embeds,
            "audio_prompt_embeds": audio_embeds,
            "prompt_attention_mask": connector_mask,
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
        self._record(pipe, layout)
        return torch.cat([video, audio], dim=1).to(pipe.transformer.device)

    def sigmas(self, pipe: Any, num_steps: int, x: torch.Tensor) -> torch.Tensor:
        """The pipeline's grid: linspace(1, 1/n), shifted by mu from the number of video tokens, then 0."""
        config = pipe.scheduler.config
        mu = calculate_shift(
            self.layout_of(pipe, x).video_tokens,
            config.get("base_image_seq_len", 1024), config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.95), config.get("max_shift", 2.05),
        )
        pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), device=x.device, mu=mu)
        return pipe.scheduler.sigmas.to(torch.float32)

    def predict_velocity(
        self, pipe: Any, transformer: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        layout = self.layout_of(pipe, x)
        video, audio = self.split_state(pipe, x)
        dtype = transformer.dtype
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
            fps=self.frame_rate,
            audio_num_frames=layout.audio_frames,
            use_cross_timestep=True,
            return_dict=False,
        )
        return torch.cat([video_v, audio_v], dim=1).to(x.dtype)

    def decode(self, pipe: Any, x0: torch.Tensor, height: int, width: int, num_frames: int = 1) -> torch.Tensor:
        """Video part -> frames (B, T, 3, H, W) in [0, 1]; the audio part is ignored (see `decode_audio`)."""
        layout = self._sized_layout(pipe, x0, height, width, num_frames)
        vae = pipe.vae
        latents = pipe._unpack_latents(
            x0[:, : layout.video_tokens], layout.latent_frames, layout.latent_height, layout.latent_width,
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
        layout = self._sized_layout(pipe, x0, height, width, num_frames)
        audio_vae = pipe.audio_vae
        latents = pipe._denormalize_audio_latents(
            x0[:, layout.video_tokens : layout.tokens], audio_vae.latents_mean, audio_vae.latents_std
        )
        mel_bins = audio_vae.config.mel_bins // pipe.audio_vae_mel_compression_ratio
        latents = pipe._unpack_audio_latents(latents, layout.audio_frames, num_mel_bins=mel_bins)
        mel = audio_vae.decode(latents.to(audio_vae.dtype), return_dict=False)[0]
        return pipe.vocoder(mel).float(), int(pipe.vocoder.config.output_sampling_rate)
