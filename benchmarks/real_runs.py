"""Training runs on the real configurations with random weights, shared by `gpu_step.py` and `real_width.py`.

The real transformer, VAE and scheduler configs are the shipped copies in `pslider_core/backbones/real_configs/`
(each value cited there, in its README, from diffusers' conversion scripts and ComfyUI's config files). Nothing is
downloaded: the pipelines are built from those configs with random weights, and the text encoders are not built at
all: every prompt's conditioning is random embeddings of the real shapes (`BackboneAdapter.random_conditioning`),
put in the trainer's prompt cache as the trainer would after encoding. Rewards are model-free (brightness,
saturation), since reward models cannot be downloaded either.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pslider_core import get_backbone  # noqa: E402
from pslider_core.backbones import BackboneAdapter  # noqa: E402
from pslider_core.memory import build_pipeline, config_folder  # noqa: E402
from trainer.config import read_toml, resolve_config  # noqa: E402
from trainer.trainer import ParetoSliderTrainer  # noqa: E402

PROMPTS = ["a lighthouse at dusk", "a red fox in the snow"]
REWARDS = "brightness,saturation"
T = TypeVar("T", bound=ParetoSliderTrainer)


@dataclass(frozen=True)
class RealConfig:
    """One real base: the shipped preset that trains it and the hub id whose configs are shipped."""

    name: str
    preset: str  # trainer/configs/<preset>.toml
    base: str

    def preset_values(self) -> dict[str, Any]:
        return read_toml(REPO / "trainer" / "configs" / f"{self.preset}.toml")

    def adapter(self) -> BackboneAdapter:
        return get_backbone(self.preset_values()["backbone"])

    def pipeline(self, device: torch.device | str, transformer: dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> Any:
        """The base pipeline with random weights in `dtype` (the presets' bf16) on `device` (meta: shapes only),
        text encoders left out; `transformer` overrides transformer config values (e.g. fewer blocks)."""
        adapter = self.adapter()
        return build_pipeline(adapter, config_folder(self.base), dtype=dtype, device=device,
                              skip=adapter.text_encoder_names, overrides={"transformer": transformer or {}})


CONFIGS = {
    c.name: c for c in (
        RealConfig("sd35-medium", "sd3", "stabilityai/stable-diffusion-3.5-medium"),
        RealConfig("sd35-large", "sd3", "stabilityai/stable-diffusion-3.5-large"),
        RealConfig("kontext", "fluxkontext", "black-forest-labs/FLUX.1-Kontext-dev"),
        RealConfig("ltx2", "ltx2", "Lightricks/LTX-2"),
    )
}


def parse_configs(names: str) -> list[RealConfig]:
    """`--configs` of the benchmarks: comma-separated names of CONFIGS."""
    chosen = [n for n in names.split(",") if n]
    unknown = sorted(set(chosen) - set(CONFIGS))
    if unknown or not chosen:
        raise ValueError(f"unknown configurations {unknown or names!r}; choose from {', '.join(CONFIGS)}.")
    return [CONFIGS[n] for n in chosen]


def write_prompts(path: Path, needs_source: bool, height: int, width: int) -> None:
    """PROMPTS as a prompts file; editing backbones get a JSONL file with a random source image per prompt."""
    if not needs_source:
        path.write_text("\n".join(PROMPTS) + "\n")
        return
    rng = np.random.default_rng(0)
    lines = []
    for i, prompt in enumerate(PROMPTS):
        Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8")).save(path.parent / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "prompt": prompt}))
    path.write_text("\n".join(lines) + "\n")


def epoch_trainer(pipe: Any, real: RealConfig, folder: Path, overrides: dict[str, Any],
                  trainer_class: type[T] = ParetoSliderTrainer) -> T:
    """A trainer of `real`'s shipped preset on `pipe` with random conditioning in place of encoded prompts, the
    model-free rewards and one prompt x 2 rollouts (one preference slot) per epoch, micro-batch 2, no checkpoints;
    `overrides` (TrainConfig fields: sizes, steps, device...) win over all of these."""
    shipped = real.preset_values()
    adapter = get_backbone(shipped["backbone"])
    prompts = folder / ("edits.jsonl" if adapter.needs_source else "prompts.txt")
    config = resolve_config(shipped, {
        "base": real.base, "rewards": REWARDS, "progress": False, "prompts": str(prompts),
        "output": str(folder / f"{real.name}.safetensors"), "checkpoint_every": 0, "prompts_per_epoch": 1,
        "slots_per_prompt": 1, "images_per_prompt": 2, "batch_size": 2, **overrides,
    })
    write_prompts(prompts, adapter.needs_source, config.height, config.width)
    if config.max_sequence_length:  # the trainer's adapter gets the same; the embeddings must match it
        adapter.max_sequence_length = config.max_sequence_length
    cond = adapter.random_conditioning(  # in place of the text encoders, which are not built
        pipe, len(PROMPTS), height=config.height, width=config.width, num_frames=config.num_frames,
        generator=torch.Generator().manual_seed(0),
    )
    return trainer_class(config, pipeline=pipe, conditioning=cond)


def detach_lora(pipe: Any) -> None:
    """Delete the trainer's LoRA adapters so the next trainer starts from the bare base (the preference hooks stay:
    inactive outside a conditioned forward, they are reused)."""
    transformer = pipe.transformer
    with warnings.catch_warnings():  # peft warns that the active adapter goes: that is the point
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        transformer.delete_adapters(list(transformer.peft_config))
