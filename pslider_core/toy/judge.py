"""Held-out judge of the toy world: a small CNN that names the colour and the shape an image shows.

Why: the toy rewards are hand-written image statistics that RL can exploit; the judge is an independent check,
trained only on procedural data and used only for evaluation, never as a reward. A sample is *valid* when the judge
sees the prompt's colour AND the prompt's shape. Besides the real classes each head has a "none" class, trained on
distractors (blank or noisy canvases, elongated ellipses and bars, soft blobs without edges, two shapes at once),
so an image without a clear single shape is not forced into the nearest class. Noise, blur and colour-jitter
augmentation make it robust to the imperfections of generated samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .dataset import BACKGROUND, COLORS, IMAGE_SIZE, JITTER, SHAPES, make_batch, parse_prompt, render, sample_params

ASSETS_DIR = Path(__file__).parent / "assets"
JUDGE_WEIGHTS = "judge.safetensors"
JUDGE_CONFIG = "judge.json"
NONE = "none"


class ToyJudge(nn.Module):
    """CNN with two heads: colour (palette + none) and shape (shapes + none)."""

    def __init__(self, colors: list[str], shapes: list[str], width: int = 24, image_size: int = IMAGE_SIZE):
        super().__init__()
        self.colors, self.shapes, self.width, self.image_size = list(colors), list(shapes), width, image_size
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        flat = 2 * w * (image_size // 8) ** 2
        self.head = nn.Sequential(nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, len(colors) + len(shapes) + 2))

    @property
    def config(self) -> dict:
        return {"colors": self.colors, "shapes": self.shapes, "width": self.width, "image_size": self.image_size}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(colour logits (N, C+1), shape logits (N, S+1)) for images (N, 3, S, S) in [0, 1]; last class = none."""
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"The toy judge takes images (N, 3, {self.image_size}, {self.image_size}) in [0, 1], got "
                f"{tuple(images.shape)}; resize or decode toy samples to that size first."
            )
        out = self.head(self.features(images * 2 - 1))
        return out[:, : len(self.colors) + 1], out[:, len(self.colors) + 1 :]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[list[str], list[str]]:
        """Named colour and shape per image ("none" when the judge sees no valid one)."""
        param = next(self.parameters())
        color_logits, shape_logits = self(images.to(param.device, param.dtype))
        colors = [(self.colors + [NONE])[i] for i in color_logits.argmax(1).tolist()]
        shapes = [(self.shapes + [NONE])[i] for i in shape_logits.argmax(1).tolist()]
        return colors, shapes

    def validity(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Bool (N,): the sample shows the prompt's colour and the prompt's shape."""
        if len(prompts) != len(images):
            raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts; pass one prompt per image.")
        colors, shapes = self.predict(images)
        wanted = [parse_prompt(p) for p in prompts]
        return torch.tensor([(c, s) == w for c, s, w in zip(colors, shapes, wanted)])

    def valid_image_rate(self, images: torch.Tensor, prompts: list[str]) -> float:
        """Fraction of samples that show the prompt's colour and shape."""
        return float(self.validity(images, prompts).float().mean())


def save_judge(judge: ToyJudge, directory: str | os.PathLike = ASSETS_DIR, metrics: dict | None = None) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(path / JUDGE_WEIGHTS))
    (path / JUDGE_CONFIG).write_text(json.dumps({**judge.config, "metrics": metrics or {}}, indent=1))


def load_judge(directory: str | os.PathLike | None = None) -> ToyJudge:
    """The judge shipped in `pslider_core/toy/assets` (or one saved by `save_judge` in `directory`), in eval mode."""
    path = Path(directory) if directory is not None else ASSETS_DIR
    if not (path / JUDGE_WEIGHTS).is_file() or not (path / JUDGE_CONFIG).is_file():
        raise FileNotFoundError(
            f"No toy judge in {path} (need {JUDGE_WEIGHTS} and {JUDGE_CONFIG}); train one with "
            f"`python scripts/train_toy_judge.py`."
        )
    config = json.loads((path / JUDGE_CONFIG).read_text())
    config.pop("metrics", None)
    judge = ToyJudge(**config)
    judge.load_state_dict(load_file(str(path / JUDGE_WEIGHTS)))
    return judge.eval()


_DEFAULT_JUDGE: ToyJudge | None = None


def _shipped_judge() -> ToyJudge:
    global _DEFAULT_JUDGE
    if _DEFAULT_JUDGE is None:
        _DEFAULT_JUDGE = load_judge()
    return _DEFAULT_JUDGE


def validity(images: torch.Tensor, prompts: list[str], judge: ToyJudge | None = None) -> torch.Tensor:
    """Bool (N,) per image (N, 3, S, S) in [0, 1]: shows its prompt's colour and shape (shipped judge by default)."""
    return (judge if judge is not None else _shipped_judge()).validity(images, prompts)


def valid_image_rate(images: torch.Tensor, prompts: list[str], judge: ToyJudge | None = None) -> float:
    """Fraction of images (N, 3, S, S) in [0, 1] showing their prompt's colour and shape (shipped judge by default)."""
    return (judge if judge is not None else _shipped_judge()).valid_image_rate(images, prompts)


# ------------------------------------------------------------------------------------------------ training data
def _distractor(kind: int, gen: torch.Generator) -> tuple[torch.Tensor, int | None]:
    """An image without one valid shape, and its colour index (None for colourless ones)."""
    u = lambda lo, hi: float(torch.empty(()).uniform_(lo, hi, generator=gen))
    color = int(torch.randint(len(COLORS), (), generator=gen))
    rgb = torch.tensor(list(COLORS.values())[color]).view(3, 1, 1)
    background = torch.tensor(BACKGROUND).view(3, 1, 1).expand(3, IMAGE_SIZE, IMAGE_SIZE)
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    dy, dx = torch.meshgrid(coords - u(10, 22), coords - u(10, 22), indexing="ij")
    if kind == 0:  # blank canvas
        return background.clone(), None
    if kind == 1:  # noise
        return (background + u(0.1, 0.5) * torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)).clamp(0, 1), None
    if kind == 2:  # elongated ellipse or bar, horizontal or vertical
        a, b = u(7, 13), u(1.5, 3.5)
        if u(0, 1) < 0.5:
            dx, dy = dy, dx
        sdf = (
            (torch.sqrt((dx / a) ** 2 + (dy / b) ** 2) - 1) * b
            if u(0, 1) < 0.5
            else torch.maximum(dx.abs() - a, dy.abs() - b)
        )
        cover = (0.5 - sdf).clamp(0, 1)
    elif kind == 3:  # soft blob without edges
        cover = torch.exp(-(dx**2 + dy**2) / (2 * u(3, 6) ** 2))
    else:  # two shapes at once
        params = [sample_params(int(torch.randint(10**6, (), generator=gen)), 0, "all", None) for _ in range(2)]
        first, second = params[0], {**params[1], "color": params[0]["color"]}
        for p, (cx, cy) in zip((first, second), ((u(8, 11), u(8, 24)), (u(21, 24), u(8, 24)))):
            p["size"], p["center"] = u(4, 5.5), (cx, cy)
        a, b = render(first), render(second)
        mixed = torch.where((b - background).abs().sum(0, keepdim=True) > 0.05, b, a)
        return mixed, list(COLORS).index(first["color"])
    tint = u(0, 0.6)
    return background * (1 - cover) + cover * (rgb * (1 - tint) + tint), color


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Pixel noise, occasional blur and a small per-channel shift: what generated samples look like."""
    n = images.shape[0]
    kernel = torch.tensor([0.25, 0.5, 0.25])
    kernel = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    blur = (torch.rand(n, 1, 1, 1, generator=gen) < 0.3).float()
    images = blur * blurred + (1 - blur) * images
    images = images + 0.04 * (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1)
    noise = torch.rand(n, 1, 1, 1, generator=gen) * 0.08
    return (images + noise * torch.randn(images.shape, generator=gen)).clamp(0, 1)


def judge_batch(
    step: int, batch_size: int, seed: int, distractor_fraction: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augmented training batch: images, colour labels, shape labels (len(palette) / len(SHAPES) = none)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    images, prompts = make_batch(range(step * batch_size, (step + 1) * batch_size), seed, "all", jitter=None)
    labels = [parse_prompt(p) for p in prompts]
    colors = torch.tensor([list(COLORS).index(c) for c, _ in labels])
    shapes = torch.tensor([SHAPES.index(s) for _, s in labels])
    for i in range(batch_size):
        if float(torch.rand((), generator=gen)) < distractor_fraction:
            kind = int(torch.randint(5, (), generator=gen))
            images[i], color = _distractor(kind, gen)
            colors[i] = len(COLORS) if color is None else color
            shapes[i] = len(SHAPES)
    return augment(images, gen), colors, shapes


def train_judge(
    steps: int = 3000, batch_size: int = 64, lr: float = 2e-3, seed: int = 1, log: Callable[[str], None] = print
) -> ToyJudge:
    """Train a fresh judge on procedural data (all colour/shape pairs; seeds disjoint from evaluation seeds)."""
    torch.manual_seed(seed)
    judge = ToyJudge(list(COLORS), list(SHAPES))
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        images, colors, shapes = judge_batch(step, batch_size, seed)
        color_logits, shape_logits = judge(images)
        loss = F.cross_entropy(color_logits, colors) + F.cross_entropy(shape_logits, shapes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"judge step {step:5d}  loss {loss.item():.4f}")
    return judge.eval()


@torch.no_grad()
def judge_accuracy(
    judge: ToyJudge,
    n: int = 500,
    seed: int = 777,
    split: str = "heldout",
    noise: bool = True,
    jitter: float | None = JITTER,
) -> dict:
    """Accuracy on fresh procedural images of `split` (optionally with the training augmentation)."""
    images, prompts = make_batch(range(n), seed, split, jitter)
    if noise:
        images = augment(images, torch.Generator().manual_seed(seed))
    colors, shapes = judge.predict(images)
    wanted = [parse_prompt(p) for p in prompts]
    color_acc = sum(c == w[0] for c, w in zip(colors, wanted)) / n
    shape_acc = sum(s == w[1] for s, w in zip(shapes, wanted)) / n
    return {"color": color_acc, "shape": shape_acc, "valid": judge.valid_image_rate(images, prompts)}


@torch.no_grad()
def distractor_rejection(judge: ToyJudge, n: int = 200, seed: int = 555) -> float:
    """Fraction of fresh distractor images the judge calls invalid for every prompt (shape "none" or wrong)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.stack([_distractor(i % 5, gen)[0] for i in range(n)])
    _, shapes = judge.predict(images)
    return sum(s == NONE for s in shapes) / n


__all__ = [
    "ToyJudge",
    "distractor_rejection",
    "judge_accuracy",
    "load_judge",
    "save_judge",
    "train_judge",
    "valid_image_rate",
    "validity",
]
