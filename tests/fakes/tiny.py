"""Test builders on the fakes (not a ComfyUI mirror): tiny fake ComfyUI models in a ModelPatcher, the inputs one
sampler step gives them, and real ParetoSlider files written for them through pslider_core."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from pslider_core import (
    LoraSpec,
    ParetoSliderFile,
    PreferenceModuleConfig,
    PreferenceModules,
    PreferenceSpec,
    get_backbone,
)
from pslider_core.file_format import save_pareto_slider

from . import install

install()

from comfy.model_base import LTXAV, SD3, Flux, ModelConfig  # noqa: E402  (fake modules, after install())
from comfy.model_patcher import ModelPatcher  # noqa: E402

WIDTH = 32  # hidden size of every tiny model: the preference modules' inner_dim
MODEL_CLASSES = {"sd3": SD3, "fluxkontext": Flux, "ltx2": LTXAV}
MULTIPLIERS = {"sd3": 1000.0, "fluxkontext": 1.0, "ltx2": 1.0}


def tiny_model(backbone: str, seed: int = 0) -> ModelPatcher:
    """A tiny fake ComfyUI MODEL of the family that `backbone` files are trained for, random weights."""
    torch.manual_seed(seed)
    base = MODEL_CLASSES[backbone](ModelConfig(multiplier=MULTIPLIERS[backbone]))
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0.0, 0.3)
    return ModelPatcher(base.eval().requires_grad_(False), torch.device("cpu"), torch.device("cpu"))


def step_inputs(backbone: str, batch: int, seed: int = 0) -> tuple[object, torch.Tensor, dict[str, torch.Tensor]]:
    """(x, sigma (batch,), model kwargs of one cond) for a call at sigma 0.6."""
    gen = torch.Generator().manual_seed(seed)
    if backbone == "ltx2":
        x: object = [torch.randn(batch, 4, 2, 2, 2, generator=gen), torch.randn(batch, 2, 3, 4, generator=gen)]
        cond = {"c_crossattn": torch.randn(batch, 3, 8, generator=gen)}
    else:
        x = torch.randn(batch, 4, 4, 4, generator=gen)
        cond = {"c_crossattn": torch.randn(batch, 3, 8, generator=gen), "y": torch.randn(batch, 8, generator=gen)}
        if backbone == "fluxkontext":
            cond["guidance"] = torch.full((batch,), 2.5)
    return x, torch.full((batch,), 0.6), cond


def _lora_state(model: ModelPatcher, backbone: str, rank: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """LoRA tensors in the file's key layout: LTX-2 names ComfyUI modules, SD3/Flux diffusers ones."""
    if backbone == "ltx2":  # the adapter's targets (video attention) on the tiny model's ComfyUI module names
        pattern = get_backbone("ltx2").lora_target_modules
        shapes = {
            name: module.weight.shape
            for name, module in model.model.named_modules()
            if isinstance(module, torch.nn.Linear) and re.fullmatch(pattern, name.removeprefix("diffusion_model."))
        }
    else:
        shapes = {f"transformer.transformer_blocks.0.attn.{p}": (WIDTH, WIDTH) for p in ("to_q", "to_k", "to_v")}
    state = {}
    for module, (out_f, in_f) in shapes.items():
        state[f"{module}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * 0.3
        state[f"{module}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * 0.3
    return state


def write_file(
    path: Path,
    backbone: str,
    reward_names: tuple[str, ...] = ("photo", "sketch"),
    *,
    seed: int = 0,
    mode: str = "global+block",
    inner_dim: int = WIDTH,
    lora: bool = True,
    reward_ranks: int = 0,
) -> Path:
    """A real ParetoSlider file for `backbone`'s tiny model, with random (non-zero) modules and LoRA (2 shared
    ranks, and `reward_ranks` per reward)."""
    gen = torch.Generator().manual_seed(seed)
    config = PreferenceModuleConfig(
        num_rewards=len(reward_names), inner_dim=inner_dim, mode=mode, block_pe_dim=16, block_layers=2,
        reward_ranks=reward_ranks,
    )
    rank = 2 + config.reward_rank_total
    modules = PreferenceModules(config)
    with torch.no_grad():
        for p in modules.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    lora_state = _lora_state(tiny_model(backbone), backbone, rank, gen) if lora else {}
    data = ParetoSliderFile(
        backbone=backbone, base_model=f"tiny-{backbone}", spec=PreferenceSpec(tuple(reward_names)),
        module_config=config, module_state=modules.state_dict(),
        lora=LoraSpec(rank, float(rank), ("attn",)) if lora else None, lora_state=lora_state,
    )
    return save_pareto_slider(path, data)


class Library:
    """Per-test subfolders of the fake models/pareto_slider and models/loras, removed afterwards."""

    def __init__(self, models_dir: Path, tag: str) -> None:
        self.tag = tag
        self.roots = {folder: models_dir / folder / tag for folder in ("pareto_slider", "loras")}
        for root in self.roots.values():
            root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, folder: str = "pareto_slider") -> Path:
        return self.roots[folder] / name

    def add(self, name: str, backbone: str, folder: str = "pareto_slider", **kwargs) -> str:
        """Write a ParetoSlider file; returns the name the node's combo shows."""
        write_file(self.path(name, folder), backbone, **kwargs)
        return f"{self.tag}/{name}"

    def remove(self) -> None:
        for root in self.roots.values():
            shutil.rmtree(root, ignore_errors=True)
