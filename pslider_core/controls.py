"""Preference controls beyond one w per image: guidance past the trained ends, regional and per-frame weights.

All three are affine combinations of conditioned velocities, v = sum_k c_k v(w_k), whose coefficients sum to 1 at
every state element, so they wrap any velocity function and work with every sampler (ODE, SDE, ComfyUI's):

- `PreferenceGuidance(scale, source)`: v = v(w_from) + s (v(w) - v(w_from)), w_from = `source` ("uniform", "opposite"
  or explicit weights). s = 1 is plain sampling at w (one evaluation, exactly today's computation); s > 1
  extrapolates past w, away from w_from (past a trained end when w is a corner); 0 < s < 1 mixes the two
  velocities, a step from w toward w_from.
- `RegionalWeights(mask, outside)`: v = (1 - m) v(w_outside) + m v(w), m the mask resized to the backbone's state
  layout (`BackboneAdapter.state_mask`): the sample's weights hold inside the mask, `outside` outside it; soft
  masks blend.
- `FrameWeights(last)` (video backbones): v = (1 - a) v(w) + a v(w_last), a = 0 at the first latent frame and 1 at
  the last (`BackboneAdapter.frame_mask`): the sample's weights at the first frame, `last` at the last.

Why velocity-level blends and not per-token preference vectors through the hooks (for regional and per-frame
weights): the blend needs nothing from the backbone beyond the shape of its state, so it works for every adapter and
identically in ComfyUI, where the hooks' vectors enter a global adaLN vector that is one per sample (SD3, Flux; in
LTX-2 only when the timestep is per token, which would change the velocity call and the audio stream's
cross-timestep modulation). The price: two evaluations per step (batched into one transformer call), and between
the two weights a mix of velocities rather than the velocity of mixed weights (exact where the coefficient is 0 or
1; docs/controls.md measures how close it comes in between).

Guidance composes with the other two and with classifier-free guidance: CFG combines two such controlled velocities
(cond and uncond), and since everything is affine, CFG-then-guidance equals guidance-then-CFG. One transformer
call per velocity evaluates all the (w_k) rows at once (K x batch rows; the preference hooks take one w per row).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from .preference import PreferenceSpec

if TYPE_CHECKING:
    from .backbones.base import BackboneAdapter, Conditioning
    from .slider import ParetoSlider

GUIDANCE_MAX = 10.0  # larger scales are almost surely typos (15 for 1.5); every measured use is <= 3
GUIDANCE_SOURCES = ("uniform", "opposite")

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ConditionedVelocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""v = fn(x (R, ...), sigma (R,), w (R, M)): the model's velocity with row r conditioned on w[r]; R may be any
multiple of the conditioning batch (its copies are stacked along dim 0)."""

Coefficient = float | torch.Tensor  # a scalar, or a tensor broadcastable to the state (B or 1, ...)


# ---------------------------------------------------------------------------------------------------- validation
def check_guidance_scale(scale: float, name: str = "preference guidance") -> float:
    """A finite scale in (0, GUIDANCE_MAX]; errors say what was passed and what to pass."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"The {name} scale must be a number, got {scale!r}.") from None
    if not math.isfinite(value) or value <= 0 or value > GUIDANCE_MAX:
        raise ValueError(
            f"The {name} scale must be a finite number in (0, {GUIDANCE_MAX:g}], got {scale!r}: 1 samples at w as "
            "usual, values above 1 extrapolate past w away from the guidance source (1.5-3 measured), values "
            "below 1 move toward it."
        )
    return value


def guidance_source(spec: PreferenceSpec, w: torch.Tensor, source: str | Sequence[float]) -> torch.Tensor:
    """w_from for each row of w (B, M) on the simplex.

    "uniform": (1/M, ..., 1/M). "opposite": (1 - w) / (M - 1), the mirror image of w through the uniform point for
    two rewards ((0, 1) -> (1, 0)), the centre of the opposite face for a corner of 3+ rewards. Weights: one per
    reward, put on the simplex like any w.
    """
    m = spec.num_rewards
    if isinstance(source, str):
        if source == "uniform":
            return torch.full_like(w, 1.0 / m)
        if source == "opposite":
            if m < 2:
                raise ValueError("Guidance from the opposite weights needs at least 2 rewards; this file has 1.")
            return (1.0 - w) / (m - 1)
        raise ValueError(
            f"Unknown guidance source {source!r}: pass 'uniform', 'opposite' or one weight per reward "
            f"({', '.join(spec.reward_names)}), e.g. {','.join(['1'] + ['0'] * (m - 1))}."
        )
    try:
        point = spec.normalize(list(source))
    except ValueError as err:
        raise ValueError(f"Guidance source weights: {err}") from None
    return point.to(w.device, w.dtype).expand_as(w)


def check_mask(mask: Any, height: int, width: int) -> torch.Tensor:
    """A mask at the image size as float32 (B_m, height, width) in [0, 1]; B_m = 1 (shared) or one per sample.

    Accepts (height, width) or (B_m, height, width) float or bool tensors; refuses other sizes, integer dtypes,
    values outside [0, 1] and NaN, each with the fix.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"The mask must be a torch tensor (H, W) or (B, H, W) in [0, 1], got {type(mask).__name__}.")
    if mask.dtype == torch.bool:
        mask = mask.float()
    if not mask.is_floating_point():
        raise ValueError(
            f"The mask has dtype {mask.dtype}; pass a float mask in [0, 1] (an 8-bit image mask: divide it by 255)."
        )
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[0] < 1:
        raise ValueError(f"The mask must be (H, W) or (B, H, W), got shape {tuple(mask.shape)}.")
    if tuple(mask.shape[1:]) != (height, width):
        raise ValueError(
            f"The mask is {mask.shape[2]}x{mask.shape[1]} (width x height) but the samples are {width}x{height}: "
            f"pass a mask of the sample size (resize it to {width}x{height})."
        )
    mask = mask.float()
    if not torch.isfinite(mask).all():
        raise ValueError("The mask holds NaN or infinite values; pass values in [0, 1].")
    low, high = float(mask.min()), float(mask.max())
    if low < 0 or high > 1:
        raise ValueError(
            f"Mask values must lie in [0, 1] (1 = the sample's weights, 0 = the outside weights), got "
            f"[{low:.3g}, {high:.3g}]; an 8-bit image mask: divide it by 255."
        )
    return mask


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H, W) in [0, 1] -> (B, height, width): area-averaged when shrinking (a latent cell gets the fraction of its
    pixels inside, so soft edges stay soft and an edge on the cell grid stays sharp), bilinear when growing."""
    if tuple(mask.shape[-2:]) == (height, width):
        return mask
    x = mask[:, None].float()
    if height <= mask.shape[-2] and width <= mask.shape[-1]:
        out = F.interpolate(x, size=(height, width), mode="area")
    else:
        out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return out[:, 0].clamp(0, 1)


def time_ramp(length: int) -> torch.Tensor:
    """(length,) from 0 at the first step to 1 at the last (zeros for a single step): a position along time."""
    return torch.linspace(0.0, 1.0, length) if length > 1 else torch.zeros(length)


def frame_ramp(frames: int) -> torch.Tensor:
    """(frames,) from 0 at the first frame to 1 at the last: how far each frame is from the start weights."""
    if frames < 2:
        raise ValueError(
            f"Per-frame weights need at least 2 latent frames, got {frames}: render more frames (LTX-2: num_frames "
            ">= 1 + the VAE's temporal compression, e.g. 9)."
        )
    return time_ramp(frames)


# ---------------------------------------------------------------------------------------------------- terms
@dataclass(frozen=True)
class Term:
    """One conditioned evaluation of a controlled velocity: weights (B, M) and its coefficient."""

    weights: torch.Tensor
    coefficient: Coefficient = 1.0


@dataclass(frozen=True)
class ControlContext:
    """What a control needs to lay its coefficients out in the state: the backbone, its pipeline, the sample size."""

    adapter: BackboneAdapter
    pipe: Any
    spec: PreferenceSpec
    height: int
    width: int
    num_frames: int = 1


class PreferenceControl:
    """Base class: a control rewrites the list of terms (starting from [(w, 1)])."""

    splits_tokens: ClassVar[bool] = False  # regional / per-frame: at most one per sampling run

    def expand(self, terms: list[Term], ctx: ControlContext) -> list[Term]:
        raise NotImplementedError

    def select(self, index: slice) -> PreferenceControl:
        """The control for the samples `index` of a generate() call (per-sample masks are sliced)."""
        return self

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for sample metadata."""
        raise NotImplementedError


@dataclass(frozen=True)
class PreferenceGuidance(PreferenceControl):
    """v = v(w_from) + scale (v(w) - v(w_from)) for every term; see the module docstring."""

    scale: float = 1.0
    source: str | tuple[float, ...] = "uniform"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_guidance_scale(self.scale))
        if not isinstance(self.source, str):
            object.__setattr__(self, "source", tuple(float(x) for x in self.source))
        elif self.source not in GUIDANCE_SOURCES:
            raise ValueError(f"Unknown guidance source {self.source!r}: pass 'uniform', 'opposite' or weights.")

    def expand(self, terms: list[Term], ctx: ControlContext) -> list[Term]:
        if self.scale == 1.0:
            return terms
        out = []
        for term in terms:
            w_from = guidance_source(ctx.spec, term.weights, self.source)
            out += [Term(w_from, _scaled(term.coefficient, 1.0 - self.scale)),
                    Term(term.weights, _scaled(term.coefficient, self.scale))]
        return out

    def describe(self) -> dict[str, Any]:
        return {"preference_guidance": self.scale,
                "guidance_from": self.source if isinstance(self.source, str) else list(self.source)}


@dataclass(frozen=True)
class RegionalWeights(PreferenceControl):
    """The sample's weights inside `mask` (1), `outside` where it is 0, blended where it is soft.

    mask: (H, W) or (1 | B, H, W) float in [0, 1] at the sample's pixel size (B: one per sample).
    """

    mask: torch.Tensor
    outside: tuple[float, ...]
    splits_tokens: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "outside", tuple(float(x) for x in self.outside))

    def expand(self, terms: list[Term], ctx: ControlContext) -> list[Term]:
        mask = check_mask(self.mask, ctx.height, ctx.width)
        m = ctx.adapter.state_mask(ctx.pipe, mask, ctx.height, ctx.width, ctx.num_frames)
        outside = _point(ctx.spec, self.outside, "outside")
        out = []
        for term in terms:
            out += [Term(outside.to(term.weights).expand_as(term.weights), _scaled(term.coefficient, 1 - m)),
                    Term(term.weights, _scaled(term.coefficient, m))]
        return out

    def select(self, index: slice) -> RegionalWeights:
        if self.mask.ndim == 3 and self.mask.shape[0] > 1:
            return RegionalWeights(self.mask[index], self.outside)
        return self

    def describe(self) -> dict[str, Any]:
        return {"weights_outside": list(self.outside), "mask_mean": float(self.mask.float().mean())}


@dataclass(frozen=True)
class FrameWeights(PreferenceControl):
    """The sample's weights at the first frame, `last` at the last, linearly over latent frames in between."""

    last: tuple[float, ...]
    splits_tokens: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "last", tuple(float(x) for x in self.last))

    def expand(self, terms: list[Term], ctx: ControlContext) -> list[Term]:
        a = ctx.adapter.frame_mask(ctx.pipe, ctx.height, ctx.width, ctx.num_frames)
        last = _point(ctx.spec, self.last, "last-frame")
        out = []
        for term in terms:
            out += [Term(term.weights, _scaled(term.coefficient, 1 - a)),
                    Term(last.to(term.weights).expand_as(term.weights), _scaled(term.coefficient, a))]
        return out

    def describe(self) -> dict[str, Any]:
        return {"weights_last_frame": list(self.last)}


def _point(spec: PreferenceSpec, weights: Sequence[float], what: str) -> torch.Tensor:
    try:
        return spec.normalize(list(weights))
    except ValueError as err:
        raise ValueError(f"The {what} weights: {err}") from None


def _scaled(coefficient: Coefficient, factor: Coefficient) -> Coefficient:
    return coefficient * factor


def check_controls(controls: Sequence[PreferenceControl]) -> list[PreferenceControl]:
    """Token-splitting controls first (at most one), guidance after them, so guidance applies to each region."""
    controls = list(controls)
    for control in controls:
        if not isinstance(control, PreferenceControl):
            raise TypeError(f"Controls must be PreferenceControl objects, got {type(control).__name__}.")
    splitting = [c for c in controls if c.splits_tokens]
    if len(splitting) > 1:
        raise ValueError(
            f"Pass at most one of RegionalWeights and FrameWeights per run, got {[type(c).__name__ for c in splitting]}."
        )
    if sum(isinstance(c, PreferenceGuidance) for c in controls) > 1:
        raise ValueError("Pass at most one PreferenceGuidance per run.")
    return splitting + [c for c in controls if not c.splits_tokens]


def control_terms(w: torch.Tensor, controls: Sequence[PreferenceControl], ctx: ControlContext) -> list[Term]:
    """The terms of a controlled velocity for per-sample weights w (B, M) on the simplex."""
    terms = [Term(w, 1.0)]
    for control in check_controls(controls):
        terms = control.expand(terms, ctx)
    return terms


# ---------------------------------------------------------------------------------------------------- velocities
def combined_velocity(velocity: ConditionedVelocity, terms: Sequence[Term]) -> VelocityFn:
    """v(x, sigma) = sum_k c_k velocity(x, sigma, w_k): one call of K x B rows (x stacked K times).

    A single term with coefficient 1 is the conditioned velocity itself (no extra work, bit-identical).
    """
    terms = list(terms)
    if not terms:
        raise ValueError("A combined velocity needs at least one term.")
    if len(terms) == 1 and isinstance(terms[0].coefficient, float) and terms[0].coefficient == 1.0:
        w = terms[0].weights
        return lambda x, sigma: velocity(x, sigma, w)
    k = len(terms)
    w_all = torch.cat([t.weights for t in terms])

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if w_all.shape[0] != k * batch:
            raise ValueError(f"The control terms hold {w_all.shape[0] // k} samples but the state has {batch}.")
        v = velocity(torch.cat([x] * k), torch.cat([sigma] * k), w_all.to(x.device)).chunk(k)
        out = None
        for term, part in zip(terms, v):
            c = term.coefficient
            c = c.to(part.device, part.dtype) if isinstance(c, torch.Tensor) else c
            out = c * part if out is None else out + c * part
        return out

    return fn


def conditioned_velocity(adapter: BackboneAdapter, pipe: Any, slider: ParetoSlider,
                         cond: Conditioning) -> ConditionedVelocity:
    """The slider's velocity with one w per row; rows are copies of the conditioning batch stacked along dim 0.

    w must already be on the simplex (the controls' terms are): no per-step validation or host sync.
    """
    from .backbones.base import select_conditioning

    sizes = {v.shape[0] for k, v in cond.items() if not k.startswith("shared_") and isinstance(v, torch.Tensor)}
    if len(sizes) != 1:
        raise ValueError(f"The conditioning batch has inconsistent sizes {sorted(sizes)}.")
    n = sizes.pop()
    stacked: dict[int, Any] = {1: cond}

    def fn(x: torch.Tensor, sigma: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        copies, rest = divmod(x.shape[0], n)
        if rest or w.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} rows and {w.shape[0]} weights for a conditioning batch of {n}.")
        if copies not in stacked:
            stacked[copies] = select_conditioning(cond, list(range(n)) * copies)
        with slider.adapter.condition(slider.transformer, slider.modules, w):
            return adapter.predict_velocity(pipe, pipe.transformer, x, sigma, stacked[copies])

    return fn


def controlled_velocity(adapter: BackboneAdapter, pipe: Any, slider: ParetoSlider, cond: Conditioning,
                        w: torch.Tensor, controls: Sequence[PreferenceControl], ctx: ControlContext) -> VelocityFn:
    """The slider's velocity for per-sample weights w (B, M) under `controls`, as a plain velocity function."""
    return combined_velocity(conditioned_velocity(adapter, pipe, slider, cond), control_terms(w, controls, ctx))


def describe_controls(controls: Sequence[PreferenceControl]) -> dict[str, Any]:
    """Every control's settings, merged, for sample metadata ({} without controls)."""
    out: dict[str, Any] = {}
    for control in controls:
        out.update(control.describe())
    return out


__all__ = [
    "GUIDANCE_MAX", "GUIDANCE_SOURCES", "ConditionedVelocity", "ControlContext", "FrameWeights", "PreferenceControl",
    "PreferenceGuidance", "RegionalWeights", "Term", "check_controls", "check_guidance_scale", "check_mask",
    "combined_velocity", "conditioned_velocity", "control_terms", "controlled_velocity", "describe_controls",
    "frame_ramp", "guidance_source", "resize_mask", "time_ramp",
]
