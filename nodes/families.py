"""Which ComfyUI MODEL is which ParetoSlider backbone, and whether a file fits it: one table, one place.

ComfyUI tells model families apart by the `comfy.model_base` class of `model.model`; the hook paths come from
the backbone adapter (`comfy_global_module`, `comfy_block_module`). What only ComfyUI's tree needs (how many
image tokens a Flux call has before Kontext appends reference tokens) lives in the family row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..pslider_core import ParetoSliderFile, get_backbone


def _flux_target_tokens(x: Any, diffusion_model: nn.Module) -> int:
    """Tokens of the latent being denoised; Kontext appends reference-image tokens after them."""
    p = int(getattr(diffusion_model, "patch_size", 2))
    h, w = x.shape[-2], x.shape[-1]
    return ((h + p // 2) // p) * ((w + p // 2) // p)


@dataclass(frozen=True)
class ModelFamily:
    backbone: str  # pslider_core backbone name written in the file
    comfy_classes: tuple[str, ...]  # comfy.model_base classes of `model.model` for this family
    label: str
    # tokens at the start of the image-stream feed-forward that the block path may change (None: all of them)
    target_tokens: Callable[[Any, nn.Module], int] | None = None


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily("sd3", ("SD3",), "Stable Diffusion 3 / 3.5"),
    ModelFamily("fluxkontext", ("Flux",), "FLUX.1 / FLUX.1 Kontext", _flux_target_tokens),
    ModelFamily("ltx2", ("LTXAV",), "LTX-2 (audio+video)"),
)


@dataclass(frozen=True)
class HookPoints:
    """Module paths relative to ComfyUI's BaseModel (`model.model`), where the two preference paths are added."""

    family: ModelFamily
    global_module: str
    block_modules: tuple[str, ...]


def _model_class(model: Any) -> str:
    return type(model.model).__name__


def detect_family(model: Any) -> ModelFamily:
    """The family of a ComfyUI MODEL (ModelPatcher), or a ValueError naming what it is and what is supported."""
    name = _model_class(model)
    for family in FAMILIES:
        if name in family.comfy_classes:
            return family
    supported = ", ".join(f"{f.label} ({'/'.join(f.comfy_classes)})" for f in FAMILIES)
    raise ValueError(
        f"This MODEL is a ComfyUI {name} model, which no ParetoSlider backbone covers; ParetoSlider files work "
        f"with {supported}. Connect the base model the file was trained on."
    )


def _object(model: Any, path: str) -> nn.Module | None:
    try:
        return model.get_model_object(path)
    except AttributeError:
        return None


def _output_width(module: nn.Module) -> int | None:
    """Width of a module's output: out_features of its last linear layer (None when it has none)."""
    width = None
    for sub in module.modules():
        if isinstance(getattr(sub, "out_features", None), int):
            width = sub.out_features
    return width


def hook_points(model: Any, data: ParetoSliderFile, file_name: str) -> HookPoints:
    """Check that `data` was trained for this MODEL and return where its vectors go; errors name both sides."""
    family = detect_family(model)
    adapter = get_backbone(data.backbone)
    if data.backbone != family.backbone:
        raise ValueError(
            f"{file_name} was trained for {adapter.description} (backbone '{data.backbone}', base "
            f"'{data.base_model}') but the MODEL is {family.label} (ComfyUI {_model_class(model)}). Load the "
            f"{data.backbone} base model, or pick a file trained for this model."
        )
    global_module = _object(model, adapter.comfy_global_module)
    if global_module is None:
        raise ValueError(
            f"The MODEL ({_model_class(model)}) has no {adapter.comfy_global_module}, where {file_name} adds its "
            f"preference vector: it is not a standard {family.label} model."
        )
    width, expected = _output_width(global_module), data.module_config.inner_dim
    if width is not None and width != expected:
        raise ValueError(
            f"{file_name} was trained on a {family.label} model {expected} wide ('{data.base_model}') but this "
            f"MODEL is {width} wide: use the same base model (e.g. SD3.5 Medium vs Large differ)."
        )
    blocks: list[str] = []
    if data.module_config.mode != "global":
        while _object(model, adapter.comfy_block_module.format(i=len(blocks))) is not None:
            blocks.append(adapter.comfy_block_module.format(i=len(blocks)))
        if not blocks:
            raise ValueError(
                f"The MODEL has no {adapter.comfy_block_module.format(i=0)}, where {file_name} adds its block "
                f"vector: it is not a standard {family.label} model."
            )
    return HookPoints(family, adapter.comfy_global_module, tuple(blocks))


def target_token_mask(family: ModelFamily, x: Any, diffusion_model: nn.Module, tokens: int) -> torch.Tensor | None:
    """Boolean mask over the `tokens` of one feed-forward call (None: change all of them)."""
    if family.target_tokens is None:
        return None
    target = family.target_tokens(x, diffusion_model)
    if target >= tokens:
        return None
    return torch.arange(tokens) < target
