"""Rewards of the toy world: prompt-colour fill vs a white line-drawing ("sketch") look, plus shape size.

Design (why these and not two pixel statistics): a zero-sum pair such as "redness" vs "whiteness" of the whole image
is maximised by flooding the canvas, so every fixed-weight run collapses to a corner and the content is destroyed.
Here every reward is measured on the shape the image shows and depends on the prompt:
- The shape is found as the pixels that differ from the known grey background (soft mask); its interior is the
  mask eroded by one pixel and its boundary band the rest.
- `toy_color`: how close the interior is to the prompt's colour (a solid fill scores high).
- `toy_sketch`: how white the interior is, times how well the boundary is inked in a dark shade of the prompt's
  colour (a white shape with a coloured outline, like a coloured-pencil sketch; a white blob without outline or
  with the wrong colour scores low).
- `toy_size`: the scale of the prompt's shape fitted to the foreground, from the smallest to the largest size in
  the data, times how well that template fits (its IoU with the foreground). Area alone was earned by bulging the
  shapes (a cross swelling into a blob reaches areas no clean cross has); a fitted scale saturates at the data's
  largest clean shape and a deformed one fits worse, so only clean growth pays.
- `toy_vivid` / `toy_pale` (a second pair, whose front is curved): where each fill pixel sits on the line from the
  prompt's colour (tint 0) to white (tint 1), scored 1 - t^2 (vivid) and 1 - (1 - t)^2 (pale), off-line pixels
  counting less. Both are soft, so a half-tinted fill scores 0.75 on each (sum 1.5) where a solid or a white fill
  scores 1 on one and 0 on the other (sum 1): every trade-off point is a distinct pastel, a weighted sum a w_0 +
  (1 - a) w_1 is best at tint 1 - w_0, and fixed-weights runs spread along the front instead of collapsing to its
  corners, which tests the interior of a slider's front.
The first two conflict genuinely: the interior cannot be both the colour and white, so the trade-off is the fill
tint, which the base model's data varies freely (dataset.py). Both extremes exist in the data and keep the
prompt's colour and shape, so each reward is achievable without destroying content. Every reward is multiplied by
a content gate: the 2-pixel border must stay background (no flooding) and the interior must be at least as large
as the smallest shape in the data (no vanishing). Colour and sketch never read the shape; `toy_size` reads the
prompt's shape the way a detector-based size reward would, through an analytic template, not the held-out judge's
classifier. All scores lie in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..rewards.base import Reward, RewardBatch
from ..rewards.registry import register_reward
from .dataset import BACKGROUND, BORDER, COLORS, RIM_SHADE, SIZE_RANGE, parse_prompt, shape_sdf

COLOR_TOLERANCE = 0.35  # RGB distance scale of the colour similarities
INK_TOLERANCE = 0.15  # tighter scale that tells outline ink from fill
MIN_FILL = 20.0  # pixels; the smallest fill in the data is about 24
FIT_SCALES = torch.arange(3.0, 14.01, 0.25)  # candidate shape scales r in pixels (the data's are SIZE_RANGE)
FIT_FLOOR = 0.7  # template IoU that earns no size: about a disc in place of a cross (clean shapes fit at 0.87-1.0)


def _check(images: torch.Tensor, prompts: list[str]) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(prompts):
        raise ValueError(
            f"Toy rewards take images (N, 3, H, W) in [0, 1] with one prompt each, got {tuple(images.shape)} and "
            f"{len(prompts)} prompts."
        )


def prompt_colors(prompts: list[str], device: torch.device | None = None) -> torch.Tensor:
    """(N, 3) RGB of each prompt's colour."""
    return torch.tensor([COLORS[parse_prompt(p)[0]] for p in prompts], device=device)


def similarity(images: torch.Tensor, rgb: torch.Tensor, tolerance: float = COLOR_TOLERANCE) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1]: Gaussian similarity of every pixel to the per-image colour rgb (N, 3)."""
    dist2 = (images - rgb.view(-1, 3, 1, 1)).pow(2).sum(1, keepdim=True)
    return torch.exp(-dist2 / (2 * tolerance**2))


def foreground(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) soft mask of pixels that differ from the grey background (0 below RGB distance 0.15, 1 above 0.25)."""
    background = torch.tensor(BACKGROUND, device=images.device).view(1, 3, 1, 1)
    return (((images - background).norm(dim=1, keepdim=True) - 0.15) / 0.1).clamp(0, 1)


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Soft erosion of the mask by one pixel (3x3 minimum)."""
    return -F.max_pool2d(-mask, 3, stride=1, padding=1)


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum((1, 2, 3)) / weights.sum((1, 2, 3)).clamp(min=1e-6)


class ShapeRegions:
    """The regions every toy reward reads: foreground, fill (interior minus ink pixels), outline band, gate."""

    def __init__(self, images: torch.Tensor, prompts: list[str]):
        _check(images, prompts)
        self.images = images
        self.color = prompt_colors(prompts, images.device)
        self.ink_color = RIM_SHADE * self.color
        self.mask = foreground(images)
        inside = interior(self.mask)
        self.outline = (self.mask - inside).clamp(min=0)
        # the fill is the interior without pixels of the outline's ink, so a thick rim counts for neither look
        self.fill = inside * (1 - similarity(images, self.ink_color, INK_TOLERANCE))
        ring = torch.ones_like(self.mask)
        ring[..., BORDER:-BORDER, BORDER:-BORDER] = 0
        border_clear = 1 - _masked_mean(self.mask, ring)
        big_enough = (self.fill.sum((1, 2, 3)) / MIN_FILL).clamp(max=1)
        self.gate = border_clear * big_enough

    def fill_similarity(self, rgb: torch.Tensor) -> torch.Tensor:
        return _masked_mean(similarity(self.images, rgb), self.fill)


def color_fidelity(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(N,) similarity of the shape's fill to the prompt's colour, times the content gate."""
    regions = ShapeRegions(images, prompts)
    return regions.fill_similarity(regions.color) * regions.gate


def sketch_look(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(N,) whiteness of the fill times the prompt-coloured ink of the outline, times the content gate."""
    regions = ShapeRegions(images, prompts)
    white = regions.fill_similarity(torch.ones_like(regions.color))
    ink = _masked_mean(similarity(images, regions.ink_color), regions.outline)
    return white * ink * regions.gate


def tint_profile(images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, ShapeRegions]:
    """Per pixel (N, 1, H, W): t, the position on the line from the prompt's colour (0) to white (1), clamped to
    [0, 1], and how close the pixel lies to that line (Gaussian of its distance, COLOR_TOLERANCE); and the regions."""
    regions = ShapeRegions(images, prompts)
    color = regions.color.view(-1, 3, 1, 1)
    direction = 1 - color
    t = ((images - color) * direction).sum(1, keepdim=True) / direction.pow(2).sum(1, keepdim=True).clamp(min=1e-6)
    t = t.clamp(0, 1)
    off = (images - color - t * direction).pow(2).sum(1, keepdim=True)
    return t, torch.exp(-off / (2 * COLOR_TOLERANCE**2)), regions


def _tint_score(
    images: torch.Tensor, prompts: list[str], score: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """(N,) mean over the fill of score(t), off-line pixels counting less, times the gate."""
    t, on_line, regions = tint_profile(images, prompts)
    return _masked_mean(score(t) * on_line, regions.fill) * regions.gate


def vivid_fill(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(N,) mean over the fill of 1 - t^2 (a solid fill of the prompt's colour scores 1), times the gate."""
    return _tint_score(images, prompts, lambda t: 1 - t.square())


def pale_fill(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(N,) mean over the fill of 1 - (1 - t)^2 (a white fill scores 1, a half tint 0.75), times the gate."""
    return _tint_score(images, prompts, lambda t: 1 - (1 - t).square())


def fit_shape(mask: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, IoU), each (N,): the best-fitting template of each prompt's shape, centred on the mask's centroid.

    The foreground mask is nearly binary, so the template is too (a quarter-pixel edge ramp); the soft IoU then
    measures shape, not anti-aliasing.
    """
    coords = torch.arange(mask.shape[-1], dtype=mask.dtype, device=mask.device) + 0.5
    scales = FIT_SCALES.to(mask.device, mask.dtype).view(-1, 1, 1)
    best_scale, best_iou = [], []
    for m, prompt in zip(mask[:, 0], prompts):
        total = m.sum().clamp(min=1e-6)
        cy, cx = (m.sum(1) * coords).sum() / total, (m.sum(0) * coords).sum() / total
        dy, dx = torch.meshgrid(coords - cy, coords - cx, indexing="ij")
        template = (0.5 - 4 * shape_sdf(parse_prompt(prompt)[1], dx, dy, scales)).clamp(0, 1)
        iou = torch.minimum(template, m).sum((1, 2)) / torch.maximum(template, m).sum((1, 2)).clamp(min=1e-6)
        best = iou.argmax()
        best_scale.append(scales.flatten()[best])
        best_iou.append(iou[best])
    return torch.stack(best_scale), torch.stack(best_iou)


def shape_size(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(N,) fitted scale of the prompt's shape, from the data's smallest (0) to largest (1), times fit and gate."""
    regions = ShapeRegions(images, prompts)
    scale, iou = fit_shape(regions.mask, prompts)
    low, high = SIZE_RANGE
    size = ((scale - low) / (high - low)).clamp(0, 1)
    fit = ((iou - FIT_FLOOR) / (1 - FIT_FLOOR)).clamp(0, 1)
    return size * fit * regions.gate


class _ToyReward(Reward):
    """Shared wrapper: the toy rewards are plain functions of (images, prompts)."""

    batch_size = 256
    fn: Callable[[torch.Tensor, list[str]], torch.Tensor]

    def score(self, batch: RewardBatch) -> torch.Tensor:
        return self.fn(batch.images.to(self.device, torch.float32), batch.prompts)


@register_reward("toy_color")
class ToyColor(_ToyReward):
    name = "toy_color"
    description = "toy world: the shape's interior is the prompt's colour (solid fill), in [0, 1]"
    fn = staticmethod(color_fidelity)


@register_reward("toy_sketch")
class ToySketch(_ToyReward):
    name = "toy_sketch"
    description = "toy world: white interior with an outline in a dark shade of the prompt's colour, in [0, 1]"
    fn = staticmethod(sketch_look)


@register_reward("toy_size")
class ToySize(_ToyReward):
    name = "toy_size"
    description = "toy world: fitted size of the prompt's shape, smallest (0) to largest (1) in the data, times fit"
    fn = staticmethod(shape_size)


@register_reward("toy_vivid")
class ToyVivid(_ToyReward):
    name = "toy_vivid"
    description = "toy world: fill towards the prompt's full colour, 1 - tint^2 (soft: a half tint scores 0.75), in [0, 1]"
    fn = staticmethod(vivid_fill)


@register_reward("toy_pale")
class ToyPale(_ToyReward):
    name = "toy_pale"
    description = "toy world: fill towards white, 1 - (1 - tint)^2 (soft: a half tint scores 0.75), in [0, 1]"
    fn = staticmethod(pale_fill)
