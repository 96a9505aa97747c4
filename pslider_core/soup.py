"""LoRA soup: the LoRAs of several fixed-weights runs on one base model at once, delta-W = sum_i lambda_i B_i A_i.

This is what a user without a ParetoSlider does for a trade-off: train one LoRA per reward and stack them at
strengths lambda (a "rewarded soup", Rame et al., NeurIPS 2023; ComfyUI's stacked LoraLoaders). It is the practical
baseline a slider must beat. Each file's LoRA becomes its own peft adapter, and `generate(..., lora_scales=
soup.scales(lambdas))` activates them together (`generation.active_lora`). There is no preference conditioning: a
fixed-weights file's modules are untrained, and a ParetoSlider's LoRA was trained together with its modules, so its
LoRA alone is not a model; a soup of sliders is not the baseline and is refused.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .backbones import get_backbone
from .file_format import ParetoSliderFileError, load_pareto_slider, read_header
from .generation import FIXED_WEIGHTS, CheckpointInfo, describe_checkpoint, simplex_point
from .lora import load_lora
from .preference import PreferenceSpec
from .slider import check_compatible

SOUP = "soup"  # the evaluation's method kind


@dataclass(frozen=True)
class SoupInfo:
    """A soup's files, read from their headers alone and checked to blend: enough to validate a run."""

    files: tuple[CheckpointInfo, ...]

    @property
    def name(self) -> str:
        """Method name in pslider-eval: 'soup_' and the files' stems joined by '+'."""
        return "soup_" + "+".join(info.path.stem for info in self.files)

    @property
    def backbone(self) -> str:
        return self.files[0].backbone

    @property
    def base_model(self) -> str:
        return self.files[0].base_model

    @property
    def reward_names(self) -> tuple[str, ...]:
        """Every file's rewards, in order of first appearance (single-reward runs add up to the pair)."""
        return tuple(dict.fromkeys(name for info in self.files for name in info.reward_names))

    def weights(self, lambdas: Sequence[float]) -> tuple[float, ...]:
        """One strength per file, checked (finite, >= 0, positive sum) and put on the simplex like a slider's w."""
        if len(lambdas) != len(self.files):
            raise ValueError(
                f"Got {len(lambdas)} soup weights for {len(self.files)} files "
                f"({', '.join(info.path.name for info in self.files)}); pass one lambda per file, in their order."
            )
        return simplex_point(PreferenceSpec(tuple(str(info.path) for info in self.files)), lambdas)


def describe_soup(paths: Sequence[str | os.PathLike], backbone: str | None = None) -> SoupInfo:
    """Check that the files can be blended before any model loads; each failure says what to pass instead."""
    if len(paths) < 2:
        raise ParetoSliderFileError(
            f"A LoRA soup blends two or more files, got {len(paths)}: pass them together, e.g. "
            "--soup fixed_1-0.safetensors,fixed_0-1.safetensors."
        )
    resolved = [Path(path).resolve() for path in paths]
    for path in sorted({path for path in resolved if resolved.count(path) > 1}):
        raise ParetoSliderFileError(f"The soup lists {path.name} twice; list each file once.")
    files = tuple(describe_checkpoint(path, backbone) for path in paths)
    for info in files:
        if info.kind != FIXED_WEIGHTS:
            raise ParetoSliderFileError(
                f"{info.path.name} is a ParetoSlider: its LoRA was trained together with its preference modules, so "
                "its LoRA alone is no model to blend. A soup blends fixed-weights runs (pslider-train --fixed-weights, "
                "e.g. one run at 1,0 and one at 0,1); to move along a slider's front use its --weights."
            )
        if read_header(info.path).get("lora") is None:
            raise ParetoSliderFileError(f"{info.path.name} holds no LoRA, so it adds nothing to a soup; pass runs "
                                        "trained with a LoRA.")
    first = files[0]
    for info in files[1:]:
        if info.backbone != first.backbone or info.base_model != first.base_model:
            raise ParetoSliderFileError(
                f"{first.path.name} was trained on {first.backbone} base {first.base_model!r} but {info.path.name} on "
                f"{info.backbone} base {info.base_model!r}: a soup adds LoRA deltas of one base model; pass files "
                "trained on the same base."
            )
    return SoupInfo(files)


@dataclass(frozen=True)
class LoraSoup:
    """The soup's LoRAs loaded on a transformer, one peft adapter per file; `scales` maps strengths to adapters."""

    info: SoupInfo
    transformer: nn.Module
    adapter_names: tuple[str, ...]

    @classmethod
    def load(cls, info: SoupInfo, transformer: nn.Module, prefix: str = SOUP) -> LoraSoup:
        """Load every file's LoRA as adapter '<prefix>_<i>'; a file for another base model fails clearly."""
        adapter = get_backbone(info.backbone)
        names = tuple(f"{prefix}_{index}" for index in range(len(info.files)))
        for name, file_info in zip(names, info.files):
            data = load_pareto_slider(file_info.path, info.backbone)
            check_compatible(data, adapter, transformer)
            with warnings.catch_warnings():  # peft warns that adapters join one another: a soup is made of that
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                load_lora(transformer, data.lora_state, adapter.lora_key_prefix, name)
        return cls(info, transformer, names)

    def scales(self, lambdas: Sequence[float]) -> dict[str, float]:
        """{adapter: lambda_i} for `generate(lora_scales=...)`, the lambdas checked and on the simplex."""
        return dict(zip(self.adapter_names, self.info.weights(lambdas)))

    def remove(self) -> None:
        """Take the soup's adapters off the transformer."""
        self.transformer.delete_adapters(list(self.adapter_names))
