"""Preference guidance, regional and per-frame weights in ComfyUI: one APPLY_MODEL wrapper, any sampler, with CFG.

The same affine combinations as `pslider_core.controls`: the wrapper evaluates the model once per term, each time
under that term's preference policy (the `PreferenceWrapper` hooks), and returns sum_k c_k out_k. `apply_model`
returns the denoised latent, x - sigma v for ComfyUI's flow models: affine in v with the same x and sigma, so a
combination whose coefficients sum to 1 is the same combination of velocities. CFG is untouched: ComfyUI batches
the cond and uncond rows into the call, every row gets the combination, and CFG then mixes them as usual (affine
too, so the order does not matter).

Each term is its own model call (same rows, another w), not a doubled batch: ComfyUI's model inputs carry
backbone-specific extras (reference latents, masks, control hints) that a wrapper cannot safely double, and
ComfyUI sized the call for the memory it has. The compute is the same; packs that cache per step (keyed on the
sigma) see the same step twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..pslider_core.conditioning import tile_to_batch
from ..pslider_core.controls import check_guidance_scale, frame_ramp, guidance_source, resize_mask, time_ramp
from ..pslider_core.preference import PreferenceSpec
from .families import HookPoints
from .files import LoadedSlider
from .patching import PreferenceWrapper, _transformer_options
from .reward_ranks import RewardRanks
from .weights import WeightPolicy

Coefficient = Callable[[torch.Tensor, int, int], "torch.Tensor | float"]
"""c(output part, part index, chunks): the term's coefficient for one output tensor of the model call (LTX-2 returns
[video, audio]), a float or a tensor broadcastable to the part."""


@dataclass(frozen=True)
class ControlTerm:
    policy: WeightPolicy
    coefficient: Coefficient


def constant(value: float) -> Coefficient:
    return lambda _part, _index, _chunks: value


def product(a: Coefficient, b: Coefficient) -> Coefficient:
    return lambda part, index, chunks: a(part, index, chunks) * b(part, index, chunks)


@dataclass(frozen=True)
class GuidanceSource:
    """The w_from of each row of another policy: uniform, or that row's opposite (1 - w) / (M - 1)."""

    policy: WeightPolicy
    spec: PreferenceSpec
    source: str

    def rows(self, sigma: torch.Tensor, chunks: int, transformer_options: dict, base_model: Any) -> torch.Tensor:
        return guidance_source(self.spec, self.policy.rows(sigma, chunks, transformer_options, base_model),
                               self.source)


def guided(terms: Sequence[ControlTerm], scale: float, source: str, spec: PreferenceSpec) -> list[ControlTerm]:
    """Every term t becomes (w_from(t), c_t (1 - s)) and (t, c_t s); unchanged at s = 1."""
    scale = check_guidance_scale(scale)
    if scale == 1.0:
        return list(terms)
    out = []
    for term in terms:
        out.append(ControlTerm(GuidanceSource(term.policy, spec, source),
                               product(term.coefficient, constant(1.0 - scale))))
        out.append(ControlTerm(term.policy, product(term.coefficient, constant(scale))))
    return out


def mask_coefficient(mask: torch.Tensor) -> Coefficient:
    """ComfyUI MASK (B_m, H, W) in [0, 1] resized to the latent (soft edges kept), for the image or video part;
    other parts (LTX-2 audio) get 0: the outside weights. B_m is 1 (every latent) or the latent batch."""
    mask = mask.detach().float()
    if mask.ndim == 2:
        mask = mask[None]

    def coefficient(part: torch.Tensor, index: int, chunks: int) -> torch.Tensor | float:
        if index > 0:
            return 0.0
        batch = part.shape[0] // chunks
        if mask.shape[0] not in (1, batch):
            raise ValueError(
                f"The MASK holds {mask.shape[0]} masks but the latent batch has {batch} images: pass one mask (for "
                f"every image) or one per image."
            )
        grid = resize_mask(mask, part.shape[-2], part.shape[-1]).to(part.device, part.dtype)
        grid = tile_to_batch(grid.flatten(1), part.shape[0]).view(-1, *grid.shape[1:]) if grid.shape[0] > 1 else grid
        return grid.view(grid.shape[0], *([1] * (part.ndim - 3)), *grid.shape[1:])

    return coefficient


def frame_coefficient(part: torch.Tensor, index: int, chunks: int) -> torch.Tensor:
    """0 at the first latent frame, 1 at the last: video (rows, C, F, H, W) along F; audio (rows, C, T, ...) along
    its time axis (dim 2), so the sound's clock runs with the picture's."""
    if part.ndim < 4:
        raise ValueError(f"Per-frame weights need video latents; the model returned a {part.ndim}-D output.")
    length = part.shape[2]
    ramp = frame_ramp(length) if index == 0 else time_ramp(length)
    return ramp.to(part.device, part.dtype).view(1, 1, length, *([1] * (part.ndim - 3)))


def split(first: WeightPolicy, second: WeightPolicy, coefficient: Coefficient) -> list[ControlTerm]:
    """(first, 1 - c) and (second, c): regional (outside, inside; c = mask), per-frame (start, end; c = ramp)."""
    return [ControlTerm(first, lambda part, index, chunks: 1.0 - coefficient(part, index, chunks)),
            ControlTerm(second, coefficient)]


class ControlWrapper:
    """APPLY_MODEL wrapper: one model call per term under its policy, outputs combined as sum_k c_k out_k."""

    def __init__(self, loaded: LoadedSlider, points: HookPoints, terms: Sequence[ControlTerm],
                 ranks: RewardRanks | None = None) -> None:
        self.terms = list(terms)
        self.points = points
        self.calls = [PreferenceWrapper(loaded, term.policy, points, ranks) for term in self.terms]

    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        chunks = len(_transformer_options(args, kwargs).get("cond_or_uncond") or [0])
        outputs = [call(executor, *args, **kwargs) for call in self.calls]
        return _combine(outputs, [term.coefficient for term in self.terms], chunks)


def _combine(outputs: list[Any], coefficients: list[Coefficient], chunks: int, index: int = 0) -> Any:
    first = outputs[0]
    if isinstance(first, (list, tuple)):
        parts = [_combine([out[i] for out in outputs], coefficients, chunks, i) for i in range(len(first))]
        return type(first)(parts)
    total = None
    for out, coefficient in zip(outputs, coefficients):
        term = coefficient(out, index, chunks) * out
        total = term if total is None else total + term
    return total.to(first.dtype)
