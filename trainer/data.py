"""Training inputs: the prompts file, source images, rewards, all checked before any model loads.

A run that would fail on its third prompt's missing image must fail in the first second, saying what to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pslider_core import PreferenceSpec, get_backbone
from pslider_core.backbones import BackboneAdapter, audio_backbones
from pslider_core.preference_sampling import PreferenceMixture
from pslider_core.rewards import Reward, get_reward, parse_reward_list

from .checkpoint import check_fresh, check_resume
from .config import TrainConfig


class InputError(ValueError):
    """Bad training input; the message names the problem and the fix."""


@dataclass(frozen=True)
class PromptItem:
    """One training prompt and, for editing backbones, its source image."""

    prompt: str
    image: Path | None = None

    @property
    def key(self) -> str:
        """Identity of the prompt for preference seeds and groups (an edit instruction is per source image)."""
        return self.prompt if self.image is None else f"{self.prompt}\n{self.image}"


@dataclass
class TrainInputs:
    """Everything the trainer needs from the outside world, validated."""

    adapter: BackboneAdapter
    items: list[PromptItem]
    rewards: list[Reward]
    spec: PreferenceSpec
    mixture: PreferenceMixture | None  # None for the fixed-weights baseline


def read_prompts(path: str | Path, needs_source: bool, backbone: str) -> list[PromptItem]:
    """Prompts from a .txt file (one per line) or a .jsonl file ({"prompt": ..., "image": ...} per line)."""
    path = Path(path)
    if not str(path) or not path.is_file():
        raise InputError(f"Prompts file {str(path)!r} does not exist; pass --prompts with a .txt or .jsonl file.")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() == ".jsonl":
        items = [_json_item(line, n, path, needs_source, backbone) for n, line in enumerate(lines, 1) if line.strip()]
    else:
        if needs_source:
            raise InputError(
                f"--backbone {backbone} edits source images, so --prompts must be a .jsonl file with one "
                f'{{"image": "path/to/source.png", "prompt": "the instruction"}} per line; got {path.name}.'
            )
        items = [PromptItem(line.strip()) for line in lines if line.strip()]
    if not items:
        raise InputError(f"Prompts file {path.name} holds no prompt; write one prompt per line.")
    return items


def _json_item(line: str, number: int, path: Path, needs_source: bool, backbone: str) -> PromptItem:
    where = f"{path.name} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where} is not valid JSON ({err}); write one JSON object per line.") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
        raise InputError(f'{where} needs a non-empty "prompt" string, e.g. {{"prompt": "a red fox"}}.')
    image = record.get("image")
    if not needs_source:
        if image is not None:
            raise InputError(
                f'{where} has an "image", but --backbone {backbone} does not take source images; remove it or '
                "use an editing backbone (fluxkontext)."
            )
        return PromptItem(record["prompt"].strip())
    if not isinstance(image, str) or not image:
        raise InputError(f'{where} needs an "image" path (--backbone {backbone} edits a source image per prompt).')
    resolved = (path.parent / image).resolve()
    if not resolved.is_file():
        raise InputError(
            f"{where}: source image {image!r} not found (looked at {resolved}); paths are relative to the prompts file."
        )
    try:
        with Image.open(resolved) as handle:
            handle.verify()
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{where}: {image!r} is not a readable image ({err}).") from None
    return PromptItem(record["prompt"].strip(), resolved)


def load_sources(items: list[PromptItem], height: int, width: int) -> torch.Tensor:
    """Source images as (B, 3, height, width) floats in [0, 1] (resized to the training size)."""
    images = []
    for item in items:
        if item.image is None:
            raise InputError(f"Prompt {item.prompt!r} has no source image.")
        with Image.open(item.image) as handle:
            rgb = handle.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(images)


def build_rewards(config: TrainConfig, adapter: BackboneAdapter) -> list[Reward]:
    """Reward objects for --rewards (models load on first use) that fit what this backbone produces."""
    if not config.rewards.strip():
        raise InputError("No reward given; pass --rewards with comma-separated names, e.g. brightness,saturation.")
    try:
        specs = parse_reward_list(config.rewards)
    except ValueError as err:
        raise InputError(f"--rewards: {err}") from None
    rewards = []
    for spec in specs:
        try:
            reward = get_reward(spec)
        except (KeyError, ValueError, ImportError, AttributeError, TypeError) as err:
            raise InputError(f"--rewards: {err}") from None
        _check_reward_fits(reward, adapter)
        rewards.append(reward)
    return rewards


def _check_reward_fits(reward: Reward, adapter: BackboneAdapter) -> None:
    if reward.needs_source and not adapter.needs_source:
        raise InputError(
            f"Reward {reward.name!r} compares samples with a source image, which only editing backbones have "
            f"(--backbone {adapter.name} is not one); pick another reward or --backbone fluxkontext."
        )
    if reward.needs_video and adapter.modality != "video":
        raise InputError(
            f"Reward {reward.name!r} scores videos but --backbone {adapter.name} makes images; use a video backbone."
        )
    if reward.needs_audio and not adapter.generates_audio:
        raise InputError(
            f"Reward {reward.name!r} scores audio but --backbone {adapter.name} makes no audio; pick another reward "
            f"or --backbone {' / '.join(audio_backbones())}."
        )


def validate_inputs(config: TrainConfig) -> TrainInputs:
    """Check everything that can be checked without loading a model; raise `InputError` naming the fix."""
    adapter = get_backbone(config.backbone)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no GPU; pass --device cpu or install CUDA torch.")
    if not config.output:
        raise InputError("Pass --output FILE.safetensors: where the trained ParetoSlider file goes.")
    if Path(config.output).suffix != ".safetensors":
        raise InputError(f"--output must end in .safetensors, got {config.output!r}.")
    if Path(config.output).is_dir():
        raise InputError(f"--output {config.output!r} is a folder; pass a file name ending in .safetensors.")
    if config.max_sequence_length and not hasattr(adapter, "max_sequence_length"):
        raise InputError(f"--backbone {adapter.name} has no text-length setting; drop --max-sequence-length.")
    items = read_prompts(config.prompts, adapter.needs_source, adapter.name)
    rewards = build_rewards(config, adapter)
    try:
        spec = PreferenceSpec(tuple(r.name for r in rewards), tuple(r.description for r in rewards))
    except ValueError as err:
        raise InputError(f"--rewards: {err}") from None
    mixture = None
    if config.fixed_weights:
        if len(config.fixed_weights) != spec.num_rewards:
            raise InputError(
                f"--fixed-weights has {len(config.fixed_weights)} values but --rewards names {spec.num_rewards} "
                f"({', '.join(spec.reward_names)}); give one weight per reward, e.g. "
                f"{','.join(['0.5'] * spec.num_rewards)}."
            )
    else:
        if spec.num_rewards < 2:
            raise InputError(
                "ParetoSlider conditions on the trade-off between rewards and needs at least 2; for one reward "
                "train the plain baseline with --fixed-weights 1."
            )
        mixture = PreferenceMixture.parse(config.preference_mixture, spec.num_rewards)
    _check_base(config.base, adapter)
    if config.resume:
        check_resume(config.resume, config)
    else:
        check_fresh(config.checkpoint_path(), config.epochs)
    return TrainInputs(adapter, items, rewards, spec, mixture)


def _check_base(base: str, adapter: BackboneAdapter) -> None:
    """A local base must be a diffusers folder of this backbone's pipeline; anything else is tried as a hub id."""
    if not base:
        return
    path = Path(base).expanduser()
    index = path / "model_index.json"
    looks_local = base.startswith(("/", ".", "~")) or base.count("/") > 1 or path.exists()
    if looks_local and not path.is_dir():
        raise InputError(
            f"--base {base!r} is not a folder; pass the model folder written by save_pretrained or a hub id such as "
            f"{adapter.default_base}."
        )
    if index.is_file():
        try:
            found = json.loads(index.read_text()).get("_class_name")
        except json.JSONDecodeError as err:
            raise InputError(f"{index} is not valid JSON ({err}); the model folder is damaged.") from None
        expected = adapter.pipeline_class.__name__
        if found != expected:
            raise InputError(
                f"--base {base!r} holds a {found}, but --backbone {adapter.name} needs a {expected}; pass the "
                "backbone that matches the model, or another --base."
            )
