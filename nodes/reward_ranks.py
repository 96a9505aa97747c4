"""A w-conditioned LoRA in ComfyUI: the shared ranks through ComfyUI's own loader, each reward's ranks by hooks.

A file with `module_config.reward_ranks` scales each reward's LoRA ranks by its weight w_m, per latent (a sweep, a
schedule and the controls give rows of one call different w), so those ranks cannot be a weight patch. ComfyUI's key
map (`comfy.lora.model_lora_keys_unet`, what `load_lora_for_models` uses) says which weight, or which slice of a fused
qkv weight, each LoRA module changes; a forward hook on that layer adds up(s(w) * down(x)) to its output there, which
is the weight patch's product computed per row. Files without reward ranks never come here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import comfy.lora
import torch
from torch.nn import functional

from ..pslider_core import get_backbone
from ..pslider_core.conditioning import reward_rank_scale, scale_reward_ranks
from ..pslider_core.lora import lora_modules
from .files import LoadedSlider

WEIGHT = ".weight"


@dataclass(frozen=True)
class RankedLayer:
    """One targeted ComfyUI layer: its path under the BaseModel, the reward ranks' projections, and where in its
    output they land (the slice of a fused weight's rows, and the row reorder ComfyUI applies to that weight)."""

    path: str
    down: torch.Tensor  # (R, in)
    up: torch.Tensor  # (out, R)
    offset: tuple[int, int, int] | None
    function: Callable[[torch.Tensor], torch.Tensor] | None
    # (down, up) on each (device, dtype) the layer ran with: copied once, not at every sampler step
    placed: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, compare=False, repr=False)

    def add(self, x: torch.Tensor, out: torch.Tensor, rank_scale: torch.Tensor) -> torch.Tensor:
        """`out` plus this layer's reward-rank delta for input `x`, rank_scale (batch, R) per row."""
        key = (x.device, x.dtype)
        if key not in self.placed:
            self.placed[key] = tuple(t.to(device=x.device, dtype=x.dtype) for t in (self.down, self.up))
        down, up = self.placed[key]
        hidden = scale_reward_ranks(functional.linear(x, down), rank_scale.to(x.device))
        delta = functional.linear(hidden, up)
        if self.function is not None:  # it reorders a weight's rows: the output's last dim
            delta = self.function(delta.movedim(-1, 0)).movedim(0, -1)
        if self.offset is None:
            return out + delta.to(out.dtype)
        dim, start, length = self.offset
        if dim != 0:
            raise ValueError(f"ComfyUI maps a LoRA onto dim {dim} of {self.path}; only output rows are supported.")
        out = out.clone()
        out[..., start:start + length] += delta.to(out.dtype)
        return out


@dataclass(frozen=True)
class RewardRanks:
    """The file's reward-owned ranks on one ComfyUI model, at the node's strength."""

    layers: tuple[RankedLayer, ...]
    reward_ranks: int
    strength: float

    def rank_scale(self, w: torch.Tensor) -> torch.Tensor:
        """(rows, M) preferences -> (rows, M x reward_ranks) scales, the node's strength included."""
        return reward_rank_scale(w, self.reward_ranks) * self.strength

    def hooks(self, base_model: torch.nn.Module, w: torch.Tensor) -> list[Any]:
        """Forward hooks adding every layer's delta for this call's rows; the caller removes them."""
        scale = self.rank_scale(w)
        handles = []
        for layer in self.layers:
            def hook(_module: torch.nn.Module, args: tuple, out: torch.Tensor, layer: RankedLayer = layer) -> Any:
                return layer.add(args[0], out, scale)

            handles.append(base_model.get_submodule(layer.path).register_forward_hook(hook))
        return handles


def split_lora(loaded: LoadedSlider) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(the shared ranks as a plain LoRA state for ComfyUI's loader, {module key: (down, up)} of the reward ranks)."""
    data = loaded.data
    reward = data.module_config.reward_rank_total
    shared = data.lora.rank - reward if data.lora is not None else 0
    prefix = get_backbone(data.backbone).lora_key_prefix
    plain: dict[str, torch.Tensor] = {}
    ranked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, (a, b) in lora_modules(data.lora_state, prefix).items():
        key = prefix + module
        if shared:
            plain[f"{key}.lora_A.weight"], plain[f"{key}.lora_B.weight"] = a[:shared], b[:, :shared]
        ranked[key] = a[shared:], b[:, shared:]
    return plain, ranked


def reward_ranks(model: Any, loaded: LoadedSlider, ranked: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 strength: float) -> RewardRanks:
    """Place the reward ranks (`split_lora`'s second part) on `model` (a ModelPatcher) with ComfyUI's key map; keys it
    cannot map are logged as ComfyUI logs its own ("lora key not loaded"), and left out."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    state = model.model.state_dict()
    layers = []
    for key, (down, up) in ranked.items():
        target = key_map.get(key)
        if isinstance(target, str):
            weight, offset, function = target, None, None
        else:  # (weight key, (dim, start, length) or None[, row reorder]), or None when unmapped
            weight, offset, function = (*target, None)[:3] if target else (None, None, None)
        if weight not in state or not weight.endswith(WEIGHT):
            logging.warning("lora key not loaded: %s (ParetoSlider reward ranks of %s)", key, loaded.name)
            continue
        layers.append(RankedLayer(weight[:-len(WEIGHT)], down, up, offset, function))
    return RewardRanks(tuple(layers), loaded.data.module_config.reward_ranks, strength)

