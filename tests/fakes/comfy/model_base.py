"""Fake of comfy/model_base.py: BaseModel.apply_model with the real wrapper plumbing, and tiny SD3, Flux and LTXAV
models whose module trees carry ComfyUI's paths (comfy/ldm/.../mmdit.py, flux/model.py, lightricks/av_model.py).

The tiny diffusion models keep what the pack relies on: where the global conditioning vector is built
(`t_embedder` + `y_embedder`, `time_in` + `guidance_in` + `vector_in`, `adaln_single.emb` called on per-frame
timesteps, flattened batch-major), the image-stream feed-forward of each block, adaLN gates, token mixing, and
Kontext reference tokens appended after the target tokens. Their attention is one head; LTXAV's audio stream does
not attend to the video stream (the real one does), so a test can see that audio is left exactly as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import patcher_extension
from .model_sampling import ModelSamplingDiscreteFlow


@dataclass
class ModelConfig:
    """Stand-in for a comfy.supported_models entry: the unet_config the model is built from."""

    unet_config: dict[str, Any] = field(default_factory=dict)
    multiplier: float = 1000.0


class BaseModel(nn.Module):
    def __init__(self, model_config: ModelConfig, model_type=None, device=None, unet_model: type[nn.Module] | None = None):
        """model_type: unused here (the real class picks its sampling from it; the fake from ModelConfig)."""
        super().__init__()
        self.model_config = model_config
        self.diffusion_model = unet_model(**model_config.unet_config)
        self.model_sampling = ModelSamplingDiscreteFlow(model_config.multiplier)

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        return patcher_extension.WrapperExecutor.new_class_executor(
            self._apply_model,
            self,
            patcher_extension.get_all_wrappers(patcher_extension.WrappersMP.APPLY_MODEL, transformer_options),
        ).execute(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        timestep = self.model_sampling.timestep(t).float()
        out = self.diffusion_model(
            xc, timestep, context=c_crossattn, control=control, transformer_options=transformer_options, **kwargs
        ).float()
        return self.model_sampling.calculate_denoised(sigma, out, x)


# ---------------------------------------------------------------------------------------------- shared pieces
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Mixer(nn.Module):
    """One-head self-attention over the tokens of each sample (never across the batch)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        return self.proj(attn @ v)


def mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, c: int, h: int, w: int, p: int) -> torch.Tensor:
    b = tokens.shape[0]
    return tokens.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


# ---------------------------------------------------------------------------------------------- SD3 (MMDiT)
class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, frequency_embedding_size: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor, dtype: torch.dtype, **kwargs: Any) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size).to(dtype))


class DismantledBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.mlp = mlp(dim)

    def post_attention(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=-1)
        return x + gate.unsqueeze(1) * self.mlp(modulate(self.norm(x), shift, scale))


class JointBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.context_block = DismantledBlock(dim)
        self.x_block = DismantledBlock(dim)
        self.attn = Mixer(dim)

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joint = torch.cat([context, x], dim=1)
        joint = joint + self.attn(joint)
        context, x = joint.split([context.shape[1], x.shape[1]], dim=1)
        return self.context_block.post_attention(context, c), self.x_block.post_attention(x, c)


class MMDiT(nn.Module):
    def __init__(self, hidden: int = 32, depth: int = 2, in_channels: int = 4, context_dim: int = 8,
                 adm_in_channels: int = 8, patch_size: int = 2) -> None:
        super().__init__()
        self.patch_size, self.in_channels = patch_size, in_channels
        self.x_embedder = nn.Linear(in_channels * patch_size**2, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = nn.Linear(adm_in_channels, hidden)
        self.context_embedder = nn.Linear(context_dim, hidden)
        self.joint_blocks = nn.ModuleList(JointBlock(hidden) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.final_modulation = nn.Linear(hidden, 2 * hidden)
        self.final_linear = nn.Linear(hidden, in_channels * patch_size**2)

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        _, c_in, h, w = x.shape
        tokens = self.x_embedder(patchify(x, self.patch_size))
        c = self.t_embedder(timesteps, dtype=tokens.dtype) + self.y_embedder(y)
        context = self.context_embedder(context)
        for block in self.joint_blocks:
            context, tokens = block(context, tokens, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        out = self.final_linear(modulate(self.final_norm(tokens), shift, scale))
        return unpatchify(out, c_in, h, w, self.patch_size)


class SD3(BaseModel):
    def __init__(self, model_config: ModelConfig, model_type=None, device=None):
        super().__init__(model_config, model_type, device=device, unet_model=MMDiT)


# ---------------------------------------------------------------------------------------------- Flux
class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class DoubleStreamBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.img_mod = nn.Linear(dim, 3 * dim)
        self.txt_mod = nn.Linear(dim, 3 * dim)
        self.attn = Mixer(dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.img_mlp = mlp(dim)
        self.txt_mlp = mlp(dim)

    def forward(self, img, txt, vec):
        joint = torch.cat([txt, img], dim=1)
        joint = joint + self.attn(joint)
        txt, img = joint.split([txt.shape[1], img.shape[1]], dim=1)
        i_shift, i_scale, i_gate = self.img_mod(nn.functional.silu(vec)).chunk(3, dim=-1)
        t_shift, t_scale, t_gate = self.txt_mod(nn.functional.silu(vec)).chunk(3, dim=-1)
        img = img + i_gate.unsqueeze(1) * self.img_mlp(modulate(self.norm(img), i_shift, i_scale))
        txt = txt + t_gate.unsqueeze(1) * self.txt_mlp(modulate(self.norm(txt), t_shift, t_scale))
        return img, txt


class FluxModel(nn.Module):
    def __init__(self, hidden_size: int = 32, depth: int = 2, in_channels: int = 4, context_in_dim: int = 8,
                 vec_in_dim: int = 8, guidance_embed: bool = True, patch_size: int = 2) -> None:
        super().__init__()
        self.patch_size, self.in_channels = patch_size, in_channels
        self.img_in = nn.Linear(in_channels * patch_size**2, hidden_size)
        self.time_in = MLPEmbedder(32, hidden_size)
        self.guidance_in = MLPEmbedder(32, hidden_size) if guidance_embed else nn.Identity()
        self.vector_in = MLPEmbedder(vec_in_dim, hidden_size)
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.final_layer = nn.Linear(hidden_size, in_channels * patch_size**2)

    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                transformer_options={}, **kwargs):  # noqa: B006
        _, c_in, h, w = x.shape
        img = patchify(x, self.patch_size)
        img_tokens = img.shape[1]
        for ref in ref_latents or []:
            img = torch.cat([img, patchify(ref, self.patch_size)], dim=1)
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timestep, 32).to(img.dtype))
        if guidance is not None and isinstance(self.guidance_in, MLPEmbedder):
            vec = vec + self.guidance_in(timestep_embedding(guidance, 32).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(context)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec)
        out = self.final_layer(self.final_norm(img))[:, :img_tokens]
        return unpatchify(out, c_in, h, w, self.patch_size)


class Flux(BaseModel):
    def __init__(self, model_config: ModelConfig, model_type=None, device=None):
        super().__init__(model_config, model_type, device=device, unet_model=FluxModel)


# ---------------------------------------------------------------------------------------------- LTX-2 (LTXAV)
class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))


class PixArtAlphaCombinedTimestepSizeEmbeddings(nn.Module):
    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(32, embedding_dim)

    def forward(self, timestep, resolution=None, aspect_ratio=None, batch_size=None, hidden_dtype=None):
        return self.timestep_embedder(timestep_embedding(timestep, 32).to(hidden_dtype))


class AdaLayerNormSingle(nn.Module):
    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.emb = PixArtAlphaCombinedTimestepSizeEmbeddings(embedding_dim)
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 3 * embedding_dim)

    def forward(self, timestep, added_cond_kwargs=None, batch_size=None, hidden_dtype=None):
        embedded = self.emb(timestep, batch_size=batch_size, hidden_dtype=hidden_dtype)
        return self.linear(self.silu(embedded)), embedded


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        context_dim = context_dim or query_dim
        self.to_q = nn.Linear(query_dim, query_dim)
        self.to_k = nn.Linear(context_dim, query_dim)
        self.to_v = nn.Linear(context_dim, query_dim)
        self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        return self.to_out(attn @ v)


class BasicAVTransformerBlock(nn.Module):
    def __init__(self, v_dim: int, a_dim: int) -> None:
        super().__init__()
        self.attn1, self.attn2 = CrossAttention(v_dim), CrossAttention(v_dim)
        self.audio_attn1, self.audio_attn2 = CrossAttention(a_dim), CrossAttention(a_dim)
        self.ff, self.audio_ff = mlp(v_dim), mlp(a_dim)
        self.norm_v = nn.LayerNorm(v_dim, elementwise_affine=False)
        self.norm_a = nn.LayerNorm(a_dim, elementwise_affine=False)

    @staticmethod
    def _stream(x, ctx, ada, attn1, attn2, ff, norm):
        shift, scale, gate = ada.chunk(3, dim=-1)  # (B, N or 1, D) each
        x = x + attn1(norm(x))
        x = x + attn2(norm(x), ctx)
        return x + gate * ff(norm(x) * (1 + scale) + shift)

    def forward(self, vx, ax, v_ctx, a_ctx, v_ada, a_ada):
        vx = self._stream(vx, v_ctx, v_ada, self.attn1, self.attn2, self.ff, self.norm_v)
        ax = self._stream(ax, a_ctx, a_ada, self.audio_attn1, self.audio_attn2, self.audio_ff, self.norm_a)
        return vx, ax


class LTXAVModel(nn.Module):
    def __init__(self, in_channels: int = 4, audio_in_channels: int = 8, inner_dim: int = 32,
                 audio_inner_dim: int = 16, caption_channels: int = 8, num_layers: int = 2) -> None:
        super().__init__()
        self.patchify_proj = nn.Linear(in_channels, inner_dim)
        self.audio_patchify_proj = nn.Linear(audio_in_channels, audio_inner_dim)
        self.adaln_single = AdaLayerNormSingle(inner_dim)
        self.audio_adaln_single = AdaLayerNormSingle(audio_inner_dim)
        self.caption_projection = nn.Linear(caption_channels, inner_dim)
        self.audio_caption_projection = nn.Linear(caption_channels, audio_inner_dim)
        self.transformer_blocks = nn.ModuleList(
            BasicAVTransformerBlock(inner_dim, audio_inner_dim) for _ in range(num_layers)
        )
        self.proj_out = nn.Linear(inner_dim, in_channels)
        self.audio_proj_out = nn.Linear(audio_inner_dim, audio_in_channels)

    def forward(self, x, timestep, context, attention_mask=None, frame_rate=25, transformer_options={}, **kwargs):  # noqa: B006
        vx, ax = x
        b, c, f, h, w = vx.shape
        _, ca, t_audio, fa = ax.shape
        v = self.patchify_proj(vx.permute(0, 2, 3, 4, 1).reshape(b, f * h * w, c))
        a = self.audio_patchify_proj(ax.permute(0, 2, 1, 3).reshape(b, t_audio, ca * fa))
        # one video timestep per latent frame, flattened batch-major as LTXAVModel._prepare_timestep does
        v_mod, _ = self.adaln_single(timestep.repeat_interleave(f), batch_size=b, hidden_dtype=v.dtype)
        v_mod = v_mod.view(b, f, 1, -1).expand(b, f, h * w, v_mod.shape[-1]).reshape(b, f * h * w, -1)
        a_mod, _ = self.audio_adaln_single(timestep, batch_size=b, hidden_dtype=a.dtype)
        a_mod = a_mod[:, None]
        v_ctx, a_ctx = self.caption_projection(context), self.audio_caption_projection(context)
        for block in self.transformer_blocks:
            v, a = block(v, a, v_ctx, a_ctx, v_mod, a_mod)
        v_out = self.proj_out(v).reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)
        a_out = self.audio_proj_out(a).reshape(b, t_audio, ca, fa).permute(0, 2, 1, 3)
        return [v_out, a_out]


class LTXAV(BaseModel):
    """x is [video latent, audio latent] (the real model gets a NestedTensor holding both)."""

    def __init__(self, model_config: ModelConfig, model_type=None, device=None):
        super().__init__(model_config, model_type, device=device, unet_model=LTXAVModel)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        timestep = self.model_sampling.timestep(t).float()
        out = self.diffusion_model(x, timestep, context=c_crossattn, transformer_options=transformer_options, **kwargs)
        return [self.model_sampling.calculate_denoised(t, o.float(), xi) for o, xi in zip(out, x)]
