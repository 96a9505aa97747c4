"""What `pslider-sample` does once its options are parsed (the command and the options shared with `pslider-eval`
are in `sample_cli.py`, which imports this module only then): resolve settings from the checkpoint, load the base,
render at the chosen weights, write the files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import click
import diffusers
import torch
import transformers

from pslider_core import ParetoSlider, ParetoSliderFileError, get_backbone
from pslider_core.backbones import BackboneAdapter
from pslider_core.controls import describe_controls
from pslider_core.evaluation import weight_grid
from pslider_core.generation import (
    FIXED_WEIGHTS,
    CheckpointInfo,
    describe_checkpoint,
    generate,
    move_pipeline,
    resolve_device,
    sample_name,
    save_sample,
    simplex_point,
)
from pslider_core.samplers import ODE_SOLVERS
from pslider_core.soup import SOUP, LoraSoup, SoupInfo, describe_soup

from .config import TrainConfig
from .controls import control_tag, control_weights, sample_controls
from .data import PromptItem, load_sources


@dataclass(frozen=True)
class Settings:
    """How every sample of a run is drawn."""

    num_steps: int
    solver: str
    height: int
    width: int
    num_frames: int
    guidance_scale: float
    batch_size: int

    def as_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def resolve_settings(adapter: BackboneAdapter, info: CheckpointInfo | None, given: dict[str, Any]) -> Settings:
    """Given options win, then the checkpoint's training settings, then pslider-train's defaults."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}

    def pick(name: str) -> Any:
        if given.get(name) is not None:
            return given[name]
        trained = info.training_setting(name) if info is not None else None
        return trained if trained is not None else defaults[name]

    settings = Settings(
        num_steps=int(pick("num_steps")), solver=str(pick("solver")), height=int(pick("height")),
        width=int(pick("width")), num_frames=int(pick("num_frames")), guidance_scale=float(pick("guidance_scale")),
        batch_size=int(given["batch_size"]),
    )
    for name in ("num_steps", "height", "width", "num_frames", "batch_size"):
        if getattr(settings, name) < 1:
            raise click.UsageError(f"--{name.replace('num_steps', 'steps').replace('_', '-')} must be >= 1, got "
                                   f"{getattr(settings, name)}.")
    if not (math.isfinite(settings.guidance_scale) and settings.guidance_scale > 0):
        raise click.UsageError(f"--guidance-scale must be a positive number (1 = off), got {settings.guidance_scale}.")
    if settings.solver not in ODE_SOLVERS:
        raise click.UsageError(f"--solver must be one of {list(ODE_SOLVERS)}, got {settings.solver!r}.")
    if adapter.modality != "video" and settings.num_frames != 1:
        raise click.UsageError(f"--backbone {adapter.name} makes images; drop --num-frames (or pass 1).")
    return settings


def backbone_adapter(name: str) -> BackboneAdapter:
    try:
        return get_backbone(name)
    except ValueError as err:
        raise click.UsageError(f"--backbone: {err}") from None


def checkpoint_info(path: str, backbone: str) -> CheckpointInfo:
    """Header of --checkpoint, with errors turned into usage errors (nothing is loaded yet)."""
    try:
        return describe_checkpoint(path, backbone)
    except (ParetoSliderFileError, FileNotFoundError) as err:
        raise click.UsageError(f"--checkpoint {path}: {err}") from None


def soup_info(text: str, backbone: str) -> SoupInfo:
    """--soup A,B[,...]: the files' headers, checked to blend (nothing is loaded yet)."""
    paths = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return describe_soup(paths, backbone)
    except (ParetoSliderFileError, FileNotFoundError) as err:
        raise click.UsageError(f"--soup {text}: {err}") from None


def load_soup(info: SoupInfo, pipe: Any, prefix: str = SOUP) -> LoraSoup:
    """Put a soup's LoRAs on the base transformer; a file for another base model fails clearly."""
    try:
        return LoraSoup.load(info, pipe.transformer, prefix)
    except (ParetoSliderFileError, ValueError) as err:
        raise click.ClickException(f"--soup: {err}") from None


def parse_floats(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise click.UsageError(f"{option} {text!r} is not a comma-separated list of numbers such as 0.3,0.7.") from None


def resolve_base(base: str | None, infos: list[CheckpointInfo], adapter: BackboneAdapter) -> str:
    """--base, else the local folder the checkpoints were trained on (the tiny preset's saved base, a local model),
    else the backbone's default base model; says on stderr which recorded base it loads or passes over."""
    if base:
        return base
    recorded = sorted({info.base_model for info in infos if info.base_model})
    local = [folder for folder in recorded if Path(folder).expanduser().is_dir()]
    if len(local) > 1:
        raise click.UsageError(
            f"The checkpoints were trained on different base models ({', '.join(local)}); pass --base with the one "
            "to load, or evaluate them separately."
        )
    if local:
        click.echo(f"--base not given: loading {local[0]}, the base recorded in the checkpoint.", err=True)
        return local[0]
    for other in recorded:
        if other != adapter.default_base:
            click.echo(
                f"--base not given: the checkpoint records base {other!r}, which is no folder here; loading the "
                f"backbone's default {adapter.default_base} (pass --base to load another).", err=True,
            )
    return adapter.default_base


def load_base(adapter: BackboneAdapter, base: str, device: str, dtype: str) -> Any:
    """The base pipeline on its device, in inference mode; a base that cannot load is a clear error."""
    try:
        target = resolve_device(device)
    except ValueError as err:
        raise click.UsageError(f"--device: {err}") from None
    torch_dtype = getattr(torch, dtype) if dtype != "auto" else (torch.bfloat16 if target.type == "cuda" else torch.float32)
    diffusers.utils.logging.disable_progress_bar()  # per-component loading bars; the CLIs have their own
    transformers.utils.logging.disable_progress_bar()
    try:
        pipe = adapter.load_pipeline(base, torch_dtype=torch_dtype)
    except (OSError, ValueError) as err:
        raise click.ClickException(f"--base: {err}") from None
    pipe = move_pipeline(pipe, target)
    for value in vars(pipe).values():
        if isinstance(value, torch.nn.Module):
            value.requires_grad_(False).eval()
    return pipe


def load_slider(info: CheckpointInfo, pipe: Any, adapter_name: str | None = None) -> ParetoSlider:
    """Put a checkpoint's LoRA and modules on the base transformer; a file for another base model fails clearly."""
    kwargs = {"adapter_name": adapter_name} if adapter_name else {}
    try:
        return ParetoSlider.from_file(info.path, pipe.transformer, info.backbone, **kwargs)
    except (ParetoSliderFileError, ValueError) as err:
        raise click.ClickException(f"--checkpoint {info.path}: {err}") from None


def source_items(adapter: BackboneAdapter, prompt: str, source: str | None) -> list[PromptItem]:
    if adapter.needs_source and source is None:
        raise click.UsageError(
            f"--backbone {adapter.name} edits a source image: pass --source IMAGE with the picture to edit."
        )
    if source is not None and not adapter.needs_source:
        raise click.UsageError(f"--backbone {adapter.name} takes no source image; drop --source.")
    return [PromptItem(prompt, Path(source) if source else None)]


def slug(text: str, limit: int = 40) -> str:
    """File-name-safe start of a prompt."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit].strip("_") or "sample"


# ---------------------------------------------------------------------------------------------------- the run
def sample(checkpoint: str | None, soup: str | None, prompt: str, source: str | None, weights_list: tuple[str, ...],
           sweep: int | None, seeds: tuple[int, ...], out: str, backbone: str, base: str | None, device: str,
           dtype: str, video_format: str, **given: Any) -> None:
    """pslider-sample: render a ParetoSlider at chosen trade-offs between its rewards, or a LoRA soup at chosen
    strengths of its files; prints the files written."""
    adapter = backbone_adapter(backbone)
    if (checkpoint is None) == (soup is None):
        raise click.UsageError("Pass --checkpoint FILE (a ParetoSlider or fixed-weights file) or --soup A,B (a LoRA "
                               "soup of fixed-weights files), one of the two.")
    info = checkpoint_info(checkpoint, backbone) if checkpoint is not None else None
    mix = soup_info(soup, backbone) if soup is not None else None
    files = [info] if info is not None else list(mix.files)
    weights_list = control_weights(given, weights_list, sweep)
    points = preference_points(info, weights_list, sweep) if info is not None else soup_points(mix, weights_list, sweep)
    if not prompt.strip():
        raise click.UsageError("--prompt is empty; pass the text to render.")
    if any(seed < 0 for seed in seeds):
        raise click.UsageError(f"--seed must be >= 0, got {list(seeds)}.")
    items = source_items(adapter, prompt, source)
    settings = resolve_settings(adapter, files[0], given)
    controls = sample_controls(given, adapter, info, settings.height, settings.width)
    base = resolve_base(base, files, adapter)

    pipe = load_base(adapter, base, device, dtype)
    sources = load_sources(items, settings.height, settings.width) if adapter.needs_source else None

    def draw(jobs: list[tuple[tuple[float, ...] | None, int]], **model: Any) -> torch.Tensor:
        try:
            return generate(
                adapter, pipe, [prompt] * len(jobs), seeds=[seed for _, seed in jobs], **model,
                sources=None if sources is None else sources.expand(len(jobs), -1, -1, -1), **settings.as_kwargs(),
            )
        except ValueError as err:  # a setting the model cannot draw, e.g. a size the toy base does not know
            raise click.ClickException(str(err)) from None

    jobs = [(w, seed) for w in points for seed in seeds]
    if info is not None:
        slider = load_slider(info, pipe)
        kind, reward_names, origin = info.kind, info.reward_names, {"checkpoint": str(info.path)}
        samples = draw(jobs, slider=slider, weights=None if info.kind == FIXED_WEIGHTS else [w for w, _ in jobs],
                       controls=controls)
    else:  # one set of LoRA strengths per model call
        lora_soup = load_soup(mix, pipe)
        kind, reward_names, origin = SOUP, mix.reward_names, {"soup": [str(f.path) for f in mix.files]}
        samples = torch.cat([draw([(w, seed) for seed in seeds], lora_scales=lora_soup.scales(w)) for w in points])
    for sample, (w, seed) in zip(samples, jobs):
        tag_weights = info.fixed_weights if w is None else w
        metadata = {
            "prompt": prompt, "seed": seed, "weights": None if tag_weights is None else list(tag_weights),
            "reward_names": list(reward_names), "kind": kind, **origin,
            "backbone": backbone, "base": base, "source": source, **settings.as_kwargs(),
            **describe_controls(controls),
        }
        stem = sample_name(tag_weights, seed, "_".join(filter(None, [slug(prompt), control_tag(controls)])))
        path = save_sample(sample, out, stem, metadata, video_format, adapter.frame_rate)
        click.echo(str(path))


def preference_points(
    info: CheckpointInfo, weights_list: tuple[str, ...], sweep: int | None
) -> list[tuple[float, ...] | None]:
    """The w's to render (on the simplex, in the given order, duplicates dropped); [None] for a fixed-weights file."""
    if info.kind == FIXED_WEIGHTS:
        if weights_list or sweep:
            raise click.UsageError(
                f"{info.path.name} is a fixed-weights baseline (trained at {info.fixed_weights}, no preference "
                "input), so it has no slider: drop --weights and --sweep."
            )
        return [None]
    return _points(weights_list, sweep, info.spec.num_rewards, f"one weight per reward ({', '.join(info.reward_names)})",
                   lambda weights: simplex_point(info.spec, weights))


def soup_points(soup: SoupInfo, weights_list: tuple[str, ...], sweep: int | None) -> list[tuple[float, ...]]:
    """The soup's strengths to render, one per file (on the simplex, in the given order, duplicates dropped)."""
    names = ", ".join(info.path.name for info in soup.files)
    return _points(weights_list, sweep, len(soup.files), f"one strength per soup file ({names})", soup.weights)


def _points(weights_list: tuple[str, ...], sweep: int | None, size: int, what: str,
            to_simplex: Callable[[list[float]], tuple[float, ...]]) -> list[tuple[float, ...]]:
    if not weights_list and sweep is None:
        raise click.UsageError(f"Pass --weights with {what}, e.g. --weights {','.join(['0.5'] * size)}, or --sweep N.")
    points = []
    for text in weights_list:
        try:
            points.append(to_simplex(parse_floats(text, "--weights")))
        except ValueError as err:
            raise click.UsageError(f"--weights {text}: {err}") from None
    if sweep is not None:
        try:
            points.extend(weight_grid(size, sweep))
        except ValueError as err:
            raise click.UsageError(f"--sweep: {err}") from None
    return list(dict.fromkeys(points))
