"""Sampling a base model, a ParetoSlider or a fixed-weights baseline at chosen preferences, and saving the results.

Used by `pslider-sample` and `pslider-eval`. Each sample's noise comes from its own generator seeded with its seed,
so a picture depends on (model, prompt, source, weights, seed, settings) only, never on what shares its batch: the
evaluation's image for seed 3 is what `pslider-sample --seed 3` draws.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import nn

from .backbones import BackboneAdapter, Conditioning
from .controls import ControlContext, PreferenceControl, check_controls, controlled_velocity
from .file_format import ParetoSliderFileError, read_header
from .formats import VIDEO_FORMATS
from .preference import PreferenceSpec
from .rewards.image_stats import to_uint8
from .samplers import VelocityFn, guided_velocity, ode_sample
from .slider import ParetoSlider

PARETO_SLIDER, FIXED_WEIGHTS, BASE = "pareto_slider", "fixed_weights", "base"  # the evaluation's method kinds
METADATA_KEY = "pareto_slider"  # PNG text chunk / side-file key holding the sample's settings as JSON


# ---------------------------------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class CheckpointInfo:
    """What a ParetoSlider file is, read from its header alone (no tensors): enough to validate a run."""

    path: Path
    backbone: str
    spec: PreferenceSpec
    kind: str  # PARETO_SLIDER or FIXED_WEIGHTS
    fixed_weights: tuple[float, ...] | None  # on the simplex, for FIXED_WEIGHTS
    training: dict[str, Any] = field(default_factory=dict)
    base_model: str = ""  # what the run trained on: a hub id or a local folder

    @property
    def reward_names(self) -> tuple[str, ...]:
        return self.spec.reward_names

    def training_setting(self, name: str) -> Any:
        """A rollout setting (num_steps, height, guidance_scale...) of the run that wrote the file, or None."""
        config = self.training.get("config")
        return config.get(name) if isinstance(config, dict) else None


def simplex_point(spec: PreferenceSpec, weights: Sequence[float]) -> tuple[float, ...]:
    """User weights checked by the spec (its messages) and divided by their sum in float64: 0.3 stays 0.3 in
    file names, metadata and scores.csv (the model itself sees float32 anyway)."""
    spec.normalize(weights)
    total = math.fsum(float(x) for x in weights)
    return tuple(float(x) / total for x in weights)


def checkpoint_kind(training: Mapping[str, Any]) -> str:
    """FIXED_WEIGHTS for an early-scalarization baseline (trained without w: its modules are untrained), else
    PARETO_SLIDER."""
    return FIXED_WEIGHTS if training.get("method") == FIXED_WEIGHTS or training.get("fixed_weights") else PARETO_SLIDER


def describe_checkpoint(path: str | os.PathLike, backbone: str | None = None) -> CheckpointInfo:
    """Read and check a file's header; a file for another backbone fails here, before any model loads."""
    path = Path(path)
    meta = read_header(path, backbone)
    training = dict(meta.get("training") or {})
    try:
        spec = PreferenceSpec(tuple(meta["reward_names"]), tuple(meta.get("reward_descriptions") or ()))
    except (TypeError, ValueError) as err:
        raise ParetoSliderFileError(f"{path.name}: invalid reward names in the metadata ({err}).") from None
    kind = checkpoint_kind(training)
    fixed = None
    if kind == FIXED_WEIGHTS and training.get("fixed_weights"):
        try:
            fixed = simplex_point(spec, training["fixed_weights"])
        except (TypeError, ValueError) as err:
            raise ParetoSliderFileError(f"{path.name}: its fixed_weights metadata is invalid ({err}).") from None
    return CheckpointInfo(path, meta["backbone"], spec, kind, fixed, training, meta.get("base_model") or "")


# ---------------------------------------------------------------------------------------------------- generation
def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else as torch reads it, if this machine has it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"Unknown device {device!r} ({err}); pass auto, cpu, cuda or cuda:N.") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was asked for but this machine has no usable CUDA GPU; pass cpu or auto.")
    return target


def move_pipeline(pipe: Any, device: torch.device) -> Any:
    """Put every model of a pipeline on `device` (diffusers pipelines by `.to`, plain holders module by module)."""
    if callable(getattr(pipe, "to", None)):
        return pipe.to(device)
    for value in vars(pipe).values():
        if isinstance(value, nn.Module):
            value.to(device)
    return pipe


def _per_sample_weights(slider: ParetoSlider | None, weights: Any, n: int) -> torch.Tensor | None:
    if weights is None:
        return None
    if slider is None:
        raise ValueError("The base model takes no preference weights; pass weights=None or a slider.")
    w = slider.spec.normalize(weights)
    if w.ndim == 1:
        return w.expand(n, -1)
    if w.shape[0] != n:
        raise ValueError(f"Got {w.shape[0]} weight vectors for {n} prompts; pass one vector, or one per prompt.")
    return w


@contextmanager
def active_lora(transformer: nn.Module, adapter_name: str | Mapping[str, float] | None) -> Iterator[None]:
    """Only `adapter_name`'s LoRA active (None: every LoRA off, the base model), or, given {name: scale}, those
    LoRAs together, each at its scale: base + sum_i scale_i B_i A_i x, what diffusers' `set_adapters(names, weights)`
    and ComfyUI's stacked LoRA loaders compute (a LoRA at scale 0 is left out, as ComfyUI's loader skips it; a
    LoRA soup, `pslider_core.soup`). Restores the previous state, scales included."""
    layers = [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]
    scales = None if adapter_name is None or isinstance(adapter_name, str) else {
        name: float(scale) for name, scale in adapter_name.items() if scale != 0
    }
    saved = [(layer, list(layer.active_adapters), layer.disable_adapters, dict(getattr(layer, "scaling", {})))
             for layer in layers]
    grads = [(p, p.requires_grad) for p in transformer.parameters()]  # peft's switches flip requires_grad
    try:
        for layer in layers:
            if adapter_name is None:
                layer.enable_adapters(False)
            else:
                layer.set_adapter(adapter_name if scales is None else list(scales))
                for name, scale in (scales or {}).items():
                    layer.set_scale(name, scale)
                layer.enable_adapters(True)
        yield
    finally:
        for layer, active, disabled, scaling in saved:
            layer.set_adapter(active)
            layer.enable_adapters(not disabled)
            if scaling:
                layer.scaling.update(scaling)
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)


def _lora_name(slider: ParetoSlider | None) -> str | None:
    return slider.adapter_name if slider is not None and slider.lora is not None else None


@torch.no_grad()
def generate(
    adapter: BackboneAdapter,
    pipe: Any,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int],
    slider: ParetoSlider | None = None,
    weights: Sequence[float] | Sequence[Sequence[float]] | torch.Tensor | None = None,
    lora_scales: Mapping[str, float] | None = None,
    sources: torch.Tensor | None = None,
    num_steps: int = 25,
    solver: str = "dpm2",
    height: int = 512,
    width: int = 512,
    num_frames: int = 1,
    guidance_scale: float = 1.0,
    batch_size: int = 8,
    controls: Sequence[PreferenceControl] = (),
) -> torch.Tensor:
    """Images (B, 3, H, W) or videos (B, T, 3, H, W) in [0, 1] on the CPU, one per prompt.

    slider None: the base model (every LoRA off). slider with weights: its LoRA on and the transformer conditioned
    on w, one vector for all or one per prompt (validated and put on the simplex by its spec). slider with
    weights=None: its LoRA alone, no preference hooks: a fixed-weights baseline, whose modules are untrained.
    lora_scales {adapter name: scale} in place of a slider: those LoRAs together at their scales, no preference
    hooks (a LoRA soup: `pslider_core.soup.LoraSoup.scales`).
    sources: (B, 3, H, W) in [0, 1] for editing backbones. guidance_scale > 1 adds classifier-free guidance
    against the empty prompt (the paper samples without it). The deterministic ODE runs `batch_size` samples
    at a time. controls (a slider with weights only): `pslider_core.controls` preference guidance, regional or
    per-frame weights, on the cond and the uncond velocity alike.
    """
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    n = len(prompts)
    if n == 0 or len(seeds) != n:
        raise ValueError(f"Pass at least one prompt and one seed per prompt; got {n} prompts and {len(seeds)} seeds.")
    if batch_size < 1 or num_steps < 1 or not math.isfinite(guidance_scale) or guidance_scale <= 0:
        raise ValueError(
            f"batch_size and num_steps must be >= 1 and guidance_scale > 0 (1 = no guidance); got {batch_size}, "
            f"{num_steps} and {guidance_scale}."
        )
    if adapter.needs_source != (sources is not None):
        fix = "edits a source image: pass sources" if adapter.needs_source else "takes no source images: pass None"
        raise ValueError(f"The {adapter.name} backbone {fix}.")
    if sources is not None and sources.shape[0] != n:
        raise ValueError(f"Got {sources.shape[0]} source images for {n} prompts; pass one per prompt.")
    if lora_scales is not None and slider is not None:
        raise ValueError("Pass either a slider or lora_scales (a LoRA soup), not both.")
    w = _per_sample_weights(slider, weights, n)
    controls = check_controls(controls)
    if controls and w is None:
        raise ValueError("Preference controls (guidance, regional or per-frame weights) need a slider and weights.")
    outputs = []
    with active_lora(pipe.transformer, _lora_name(slider) if lora_scales is None else lora_scales):
        for start in range(0, n, batch_size):
            pick = slice(start, min(start + batch_size, n))
            outputs.append(
                _generate_batch(
                    adapter, pipe, prompts[pick], seeds[pick], slider, None if w is None else w[pick],
                    None if sources is None else sources[pick], num_steps, solver, height, width, num_frames,
                    guidance_scale, [control.select(pick) for control in controls],
                )
            )
    return torch.cat(outputs)


def _generate_batch(
    adapter: BackboneAdapter, pipe: Any, prompts: list[str], seeds: list[int], slider: ParetoSlider | None,
    w: torch.Tensor | None, sources: torch.Tensor | None, num_steps: int, solver: str, height: int, width: int,
    num_frames: int, guidance_scale: float, controls: Sequence[PreferenceControl] = (),
) -> torch.Tensor:
    transformer = pipe.transformer
    size = {"height": height, "width": width, "num_frames": num_frames}
    cond = adapter.encode_prompts(pipe, prompts, sources, **size)
    uncond = adapter.encode_prompts(pipe, [""] * len(prompts), sources, **size) if guidance_scale != 1 else None
    noise = torch.cat([
        adapter.initial_noise(pipe, 1, height, width, torch.Generator().manual_seed(seed), num_frames)
        for seed in seeds
    ])
    sigmas = adapter.sigmas(pipe, num_steps, noise, cond)

    def predictor(c: Conditioning) -> VelocityFn:
        if controls:
            context = ControlContext(adapter, pipe, slider.spec, height, width, num_frames)
            return controlled_velocity(adapter, pipe, slider, c, w, controls, context)
        return lambda x, sigma: adapter.predict_velocity(pipe, transformer, x, sigma, c)

    velocity = guided_velocity(predictor(cond), predictor(uncond) if uncond is not None else None, guidance_scale)

    with slider.condition(w) if w is not None else nullcontext():
        x0 = ode_sample(velocity, noise, sigmas, solver=solver)
    return adapter.decode(pipe, x0, height, width, num_frames).float().clamp(0, 1).cpu()


# ---------------------------------------------------------------------------------------------------- saving
def weights_tag(weights: Sequence[float] | None) -> str:
    """File-name form of w: 'w0.3-0.7' ('base' for none)."""
    if weights is None:
        return "base"
    return "w" + "-".join(f"{float(x):.4g}" for x in weights)


def sample_name(weights: Sequence[float] | None, seed: int, prefix: str = "") -> str:
    """Stem of a sample file: '[prefix_]w0.3-0.7_seed0'."""
    return f"{prefix + '_' if prefix else ''}{weights_tag(weights)}_seed{seed}"


def to_frames(samples: torch.Tensor) -> np.ndarray:
    """Images (..., 3, H, W) in [0, 1] -> uint8 (..., H, W, 3), what PIL, imageio and the contact sheet take."""
    flat = samples.reshape(-1, *samples.shape[-3:])
    return to_uint8(flat).reshape(*samples.shape[:-3], *flat.shape[-2:], 3)


def _json_ready(metadata: Mapping[str, Any]) -> str:
    return json.dumps(dict(metadata), default=str)


def save_png(image: torch.Tensor, path: str | os.PathLike, metadata: Mapping[str, Any]) -> Path:
    """One image (3, H, W) in [0, 1] as PNG; `metadata` goes in the text chunk 'pareto_slider' (JSON), a given
    'prompt' also in the standard 'Description' chunk."""
    if image.ndim != 3:
        raise ValueError(f"save_png takes one image (3, H, W), got shape {tuple(image.shape)}.")
    info = PngInfo()
    info.add_text(METADATA_KEY, _json_ready(metadata))
    if "prompt" in metadata:
        info.add_itxt("Description", str(metadata["prompt"]))
    info.add_text("Software", "pareto-slider")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_frames(image)).save(path, pnginfo=info)
    return path


def read_png_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The settings `save_png` stored in a PNG."""
    with Image.open(path) as handle:
        raw = handle.text.get(METADATA_KEY)  # type: ignore[attr-defined]
    if raw is None:
        raise ValueError(f"{path} has no '{METADATA_KEY}' metadata; it was not written by pslider-sample.")
    return json.loads(raw)


def save_video(video: torch.Tensor, path: str | os.PathLike, metadata: Mapping[str, Any], fps: float = 24.0) -> Path:
    """One video (T, 3, H, W) in [0, 1] as .mp4 (ffmpeg through imageio) or .gif (pillow); the metadata goes to a
    side file `<path>.json`, since neither format has a portable text field."""
    if video.ndim != 4:
        raise ValueError(f"save_video takes one video (T, 3, H, W), got shape {tuple(video.shape)}.")
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in VIDEO_FORMATS:
        raise ValueError(f"Video files must end in one of {['.' + f for f in VIDEO_FORMATS]}, got {path.name!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = to_frames(video)
    if suffix == "gif":
        first, *rest = [Image.fromarray(frame) for frame in frames]
        first.save(path, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
    else:
        imageio.mimwrite(path, list(frames), fps=fps, macro_block_size=1)
    Path(f"{path}.json").write_text(_json_ready(metadata) + "\n", encoding="utf-8")
    return path


def save_sample(
    sample: torch.Tensor, directory: str | os.PathLike, stem: str, metadata: Mapping[str, Any],
    video_format: str = "mp4", fps: float = 24.0,
) -> Path:
    """An image as `<stem>.png` or a video (T, 3, H, W) as `<stem>.<video_format>`."""
    if sample.ndim == 3:
        return save_png(sample, Path(directory) / f"{stem}.png", metadata)
    return save_video(sample, Path(directory) / f"{stem}.{video_format}", metadata, fps)


def load_sample(path: str | os.PathLike) -> np.ndarray:
    """A file `save_sample` wrote, as uint8: an image (H, W, 3) or a video (T, H, W, 3)."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        with Image.open(path) as handle:
            return np.array(handle.convert("RGB"))
    return np.stack([np.asarray(frame)[..., :3] for frame in imageio.mimread(path)])
