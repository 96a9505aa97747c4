"""Procedural "toy world" data: one filled shape of a named colour on a grey background, with its prompt.

Why: real backbones cannot run here, so the method is demonstrated and tested on a world small enough to pretrain
on a CPU. Every image is a pure function of (index, seed), so data, tests and judges are reproducible without files.

Each image shows the prompt's colour and shape. Things the prompt does NOT name vary from image to image, the way
style varies in a real text-to-image model's data, and they are what the toy rewards steer:
- tint t ~ U(0, 1): the interior is mix(colour, white, t), from a solid fill (t = 0) to a white, line-drawing look
  (t = 1);
- a thin rim of a dark shade of the colour (width 1 to 1.8 px) always outlines the shape, so the colour stays
  visible even at t = 1;
- size, and position within JITTER pixels of the centre (the shape never touches the 2-pixel border). A tiny
  transformer learns centred shapes in minutes; the judge trains with positions anywhere on the canvas
  (`jitter=None`) so it does not depend on that.
A few colour/shape combinations (HELDOUT) never appear in pretraining: the base must compose them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

IMAGE_SIZE = 32
BACKGROUND = (0.5, 0.5, 0.5)
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.75, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.6, 0.2, 0.85),
    "orange": (1.0, 0.55, 0.05),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
HELDOUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "circle"),
    ("blue", "cross"),
    ("yellow", "square"),
    ("purple", "diamond"),
)
RIM_SHADE = 0.55  # rim colour = RIM_SHADE * colour
BORDER = 2  # pixels at the edge that always stay background
SIZE_RANGE = (6.5, 10.5)  # shape scale r in pixels (a circle's radius)
RIM_RANGE = (1.0, 1.8)
JITTER = 1.0  # pixels: largest offset of the shape's centre from the image centre
# half-extent of each shape in units of r (how far it reaches from its centre), used to keep it off the border
_EXTENT = {"circle": 1.0, "square": 0.85, "triangle": 1.2, "diamond": 1.15, "cross": 1.0}


def prompt_for(color: str, shape: str) -> str:
    """The one prompt template of the toy world: 'a red circle', 'an orange square'."""
    article = "an" if color[0] in "aeiou" else "a"
    return f"{article} {color} {shape}"


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(colour, shape) named by a toy prompt; raises with the accepted vocabulary otherwise."""
    words = prompt.lower().replace(".", " ").split()
    colors = [w for w in words if w in COLORS]
    shapes = [w for w in words if w in SHAPES]
    if len(colors) != 1 or len(shapes) != 1:
        raise ValueError(
            f"Toy prompt {prompt!r} must name exactly one colour and one shape; write it like 'a red circle' with "
            f"a colour from {sorted(COLORS)} and a shape from {list(SHAPES)}."
        )
    return colors[0], shapes[0]


def _combos(split: str) -> list[tuple[str, str]]:
    every = [(c, s) for c in COLORS for s in SHAPES]
    if split == "all":
        return every
    if split == "train":
        return [cs for cs in every if cs not in HELDOUT]
    if split == "heldout":
        return list(HELDOUT)
    raise ValueError(f"Unknown toy split {split!r}; use 'train', 'heldout' or 'all'.")


def train_prompts() -> list[str]:
    """Prompts seen in pretraining (all colour/shape pairs except HELDOUT)."""
    return [prompt_for(c, s) for c, s in _combos("train")]


def heldout_prompts() -> list[str]:
    """Prompts whose colour/shape pair never appears in pretraining."""
    return [prompt_for(c, s) for c, s in _combos("heldout")]


def sample_params(index: int, seed: int = 0, split: str = "train", jitter: float | None = JITTER) -> dict:
    """The random choices behind image `index` of `split` for `seed` (a pure function of its arguments).

    `jitter` bounds the centre's offset in pixels; None lets the shape go anywhere short of the border.
    """
    combos = _combos(split)
    color, shape = combos[index % len(combos)]
    rng = np.random.default_rng([seed, index, len(combos)])
    size = rng.uniform(*SIZE_RANGE)
    room = IMAGE_SIZE / 2 - BORDER - _EXTENT[shape] * size - 0.5
    room = room if jitter is None else min(room, jitter)
    cx, cy = IMAGE_SIZE / 2 + rng.uniform(-room, room, size=2)
    return {
        "color": color,
        "shape": shape,
        "size": float(size),
        "center": (float(cx), float(cy)),
        "tint": float(rng.uniform(0.0, 1.0)),
        "rim": float(rng.uniform(*RIM_RANGE)),
    }


def shape_sdf(shape: str, dx: torch.Tensor, dy: torch.Tensor, size: float | torch.Tensor) -> torch.Tensor:
    """Signed distance in pixels (negative inside) of `shape` centred at the origin; y points down.

    `size` may be a tensor that broadcasts against dx and dy (the size reward fits many scales at once).
    """
    if shape == "circle":
        return torch.sqrt(dx**2 + dy**2) - size
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - 0.85 * size
    if shape == "diamond":
        return (dx.abs() + dy.abs() - 1.15 * size) / math.sqrt(2.0)
    if shape == "triangle":  # equilateral, apex up, circumradius 1.2 * size, centroid at the origin
        radius = 1.2 * size
        c30 = math.sqrt(3.0) / 2
        edges = torch.stack([dy, c30 * dx - 0.5 * dy, -c30 * dx - 0.5 * dy])
        return edges.amax(0) - radius / 2
    if shape == "cross":  # plus sign: two bars of half-length size and half-width 0.35 * size
        arm, half = size, 0.35 * size
        bar_h = torch.maximum(dx.abs() - arm, dy.abs() - half)
        bar_v = torch.maximum(dy.abs() - arm, dx.abs() - half)
        return torch.minimum(bar_h, bar_v)
    raise ValueError(f"Unknown toy shape {shape!r}; use one of {list(SHAPES)}.")


def render(params: dict, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Anti-aliased image (3, S, S) in [0, 1] for one parameter dict from `sample_params`."""
    coords = torch.arange(image_size, dtype=torch.float32) + 0.5
    dy, dx = torch.meshgrid(coords - params["center"][1], coords - params["center"][0], indexing="ij")
    sdf = shape_sdf(params["shape"], dx, dy, params["size"])
    cover = (0.5 - sdf).clamp(0, 1)  # fraction of the pixel inside the shape
    fill = (0.5 - sdf - params["rim"]).clamp(0, 1)  # inside, deeper than the rim
    rim = cover - fill
    color = torch.tensor(COLORS[params["color"]]).view(3, 1, 1)
    fill_color = color * (1 - params["tint"]) + params["tint"]
    background = torch.tensor(BACKGROUND).view(3, 1, 1)
    image = background * (1 - cover) + rim * (RIM_SHADE * color) + fill * fill_color
    return image.clamp(0, 1)


def make_batch(
    indices: range | list[int], seed: int = 0, split: str = "train", jitter: float | None = JITTER
) -> tuple[torch.Tensor, list[str]]:
    """Images (N, 3, S, S) in [0, 1] and their prompts for the given indices of `split`."""
    params = [sample_params(i, seed, split, jitter) for i in indices]
    images = torch.stack([render(p) for p in params])
    return images, [prompt_for(p["color"], p["shape"]) for p in params]


class ToyShapesDataset(torch.utils.data.Dataset):
    """Map-style dataset over `make_batch`; item i is (image (3, S, S), prompt)."""

    def __init__(self, split: str = "train", seed: int = 0, length: int = 10_000):
        _combos(split)  # validate early
        self.split, self.seed, self.length = split, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        params = sample_params(index, self.seed, self.split)
        return render(params), prompt_for(params["color"], params["shape"])
