"""Pictures of an evaluation: the reward front, a prompts x weights contact sheet, video strips.

matplotlib is used through Figure + the Agg canvas directly (no pyplot), so plotting never switches
the global backend or leaves figures open for other users of matplotlib in the same process.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from .scores import MethodMeans
from .summary import SWEPT, check_means

ImageLike = np.ndarray | Image.Image


def method_colours(methods: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One tab10 colour per method, in the given order (cycling after ten)."""
    palette = colormaps["tab10"]
    return {method: tuple(palette(index % 10)[:3]) for index, method in enumerate(methods)}


def _weights_label(weights: Sequence[float]) -> str:
    return "(" + ", ".join(f"{value:.2g}" for value in weights) + ")"


def _line_mask(weights: np.ndarray, pair: tuple[int, int], num_rewards: int) -> np.ndarray:
    """Sweep points drawn as a connected line in the panel of reward pair `pair`.

    2 weights: the whole sweep (a 1-D path). 3+ weights that match the rewards one to one: the edge
    of the simplex where only the pair's two weights are non-zero. Otherwise none (points only).
    """
    if weights.shape[1] == 2:
        return np.ones(len(weights), dtype=bool)
    if weights.shape[1] != num_rewards:
        return np.zeros(len(weights), dtype=bool)
    others = [axis for axis in range(num_rewards) if axis not in pair]
    return np.all(weights[:, others] == 0, axis=1)


def plot_front(
    means: Mapping[str, MethodMeans],
    kinds: Mapping[str, str],
    path: str | os.PathLike[str],
    *,
    panel_px: int = 450,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Mean reward vector of every method at every sweep point, on shared axes.

    ParetoSlider runs are lines through their weights in sweep order (a few weights annotated; LoRA soups dashed),
    fixed-weight runs are squares, the base model a star. With 3+ rewards: one panel per reward
    pair, up to 3 per row. The image is (columns x panel_px) by (rows x panel_px) pixels.
    """
    rewards, _ = check_means(means, kinds)
    if len(rewards) < 2:
        raise ValueError(f"a front needs at least 2 rewards, got {list(rewards)}")
    if panel_px < 100 or dpi < 10:
        raise ValueError(f"panel_px must be >= 100 and dpi >= 10, got {panel_px} and {dpi}")

    pairs = list(itertools.combinations(range(len(rewards)), 2))
    columns = min(3, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    figure = Figure(figsize=(columns * panel_px / dpi, rows * panel_px / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colours = method_colours(list(means))
    for panel, (axis, pair) in enumerate(zip(axes, pairs)):
        x, y = pair
        for method, method_means in means.items():
            label = method if panel == 0 else None
            colour, values, kind = colours[method], method_means.values, kinds[method]
            if kind in SWEPT:
                weights = np.asarray(method_means.weights)
                on_line = _line_mask(weights, pair, len(rewards))
                line = np.flatnonzero(on_line)
                style = "-o" if kind == "pareto_slider" else "--D"  # a soup: dashed, diamonds
                if len(line):
                    axis.plot(values[line, x], values[line, y], style, color=colour, lw=2, ms=6, label=label)
                    label = None
                    for index in sorted({line[0], line[len(line) // 2], line[-1]}):
                        axis.annotate(_weights_label(weights[index]), (values[index, x], values[index, y]),
                                      textcoords="offset points", xytext=(5, 5), fontsize=7, color=colour)
                axis.plot(values[~on_line, x], values[~on_line, y], "o", color=colour, ms=4, alpha=0.5, label=label)
            elif kind == "fixed_weights":
                axis.plot(values[:, x], values[:, y], "s", color=colour, ms=8, mec="black", label=label)
                for weights, value in zip(method_means.weights, values):
                    if weights is not None:
                        axis.annotate(_weights_label(weights), (value[x], value[y]), textcoords="offset points",
                                      xytext=(5, -10), fontsize=7, color=colour)
            else:
                axis.plot(values[:, x], values[:, y], "*", color=colour, ms=16, mec="black", label=label)
        axis.margins(0.12)  # room for the weight annotations
        axis.set_xlabel(rewards[x])
        axis.set_ylabel(rewards[y])
        axis.grid(alpha=0.3)
    for axis in axes[len(pairs):]:
        axis.set_visible(False)
    axes[0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=dpi)
    return target


def _to_image(image: ImageLike, where: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"{where} must be a PIL image or a uint8 array shaped (H, W, 3), got dtype {array.dtype} shape "
            f"{array.shape}; convert floats in [0, 1] with (x * 255).round().clip(0, 255).astype(np.uint8)"
        )
    return Image.fromarray(array, "RGB")


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> str:
    """Greedy word wrap into `width` pixels, at most `max_lines` lines, '...' marking a cut."""

    def fits(candidate: str) -> bool:
        return draw.textlength(candidate, font=font) <= width

    pieces = []
    for word in text.split():
        while len(word) > 1 and not fits(word):  # hard-break a word wider than a line
            low, high = 1, len(word) - 1  # longest prefix that fits, by bisection
            while low < high:
                middle = (low + high + 1) // 2
                low, high = (middle, high) if fits(word[:middle]) else (low, middle - 1)
            pieces.append(word[:low])
            word = word[low:]
        pieces.append(word)
    lines: list[str] = []
    for piece in pieces:
        if lines and fits(f"{lines[-1]} {piece}"):
            lines[-1] = f"{lines[-1]} {piece}"
        else:
            lines.append(piece)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        if lines:
            last = lines[-1]
            while last and not fits(last + "..."):
                last = last[:-1]
            lines[-1] = last + "..."
    return "\n".join(lines)


def contact_sheet(
    images: Sequence[Sequence[ImageLike]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | os.PathLike[str],
    *,
    thumb: int | None = None,
    label_width: int = 200,
    header_height: int = 32,
    pad: int = 4,
    font_size: int = 14,
) -> Path:
    """Grid of images (rows: prompts, columns: weights) with a label band on the left and on top.

    images[r][c] is a uint8 (H, W, 3) array or a PIL image; with `thumb`, each is shrunk (aspect kept)
    to fit thumb x thumb. Cells are as large as the largest image, which is centred in its cell. Size:
    width = label_width + pad + columns * (cell_w + pad), height = header_height + pad + rows * (cell_h + pad).
    """
    if len(images) != len(row_labels) or not images:
        raise ValueError(
            f"need at least one image row and one row label per row, got {len(row_labels)} labels "
            f"for {len(images)} rows"
        )
    columns = len(col_labels)
    if columns == 0 or any(len(row) != columns for row in images):
        raise ValueError(
            f"every row must have one image per column label ({columns}), got rows of {[len(row) for row in images]}"
        )
    if thumb is not None and thumb < 8:
        raise ValueError(f"thumb must be >= 8 pixels or None, got {thumb}")
    if label_width < 0 or header_height < 0 or pad < 0 or font_size < 4:
        raise ValueError("label_width, header_height and pad must be >= 0 and font_size >= 4")
    cells = []
    for r, row in enumerate(images):
        converted = []
        for c, image in enumerate(row):
            picture = _to_image(image, f"images[{r}][{c}]")
            if thumb is not None:
                picture.thumbnail((thumb, thumb))
            converted.append(picture)
        cells.append(converted)
    cell_w = max(picture.width for row in cells for picture in row)
    cell_h = max(picture.height for row in cells for picture in row)
    size = (label_width + pad + columns * (cell_w + pad), header_height + pad + len(cells) * (cell_h + pad))
    sheet = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=font_size)
    line_height = font_size + 4
    for c, label in enumerate(col_labels):
        left = label_width + pad + c * (cell_w + pad)
        if header_height >= line_height:
            text = _fit_text(draw, str(label), font, cell_w, 1)
            draw.text((left, (header_height - font_size) // 2), text, fill="black", font=font)
    for r, (row, label) in enumerate(zip(cells, row_labels)):
        top = header_height + pad + r * (cell_h + pad)
        if label_width > 2 * pad and cell_h >= line_height:
            text = _fit_text(draw, str(label), font, label_width - 2 * pad, cell_h // line_height)
            draw.multiline_text((pad, top), text, fill="black", font=font, spacing=4)
        for c, picture in enumerate(row):
            left = label_width + pad + c * (cell_w + pad)
            sheet.paste(picture, (left + (cell_w - picture.width) // 2, top + (cell_h - picture.height) // 2))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(target)
    return target


def video_strip(
    videos: Sequence[np.ndarray | Sequence[ImageLike]],
    row_labels: Sequence[str],
    path: str | os.PathLike[str],
    *,
    num_frames: int = 4,
    **sheet_options: object,
) -> Path:
    """One prompt's videos (one row per weight), `num_frames` evenly spaced frames side by side.

    Each video is a uint8 (T, H, W, 3) array or a list of frames. Columns are labelled with the
    frame's position in the clip (t=0 first frame, t=1 last). Layout options as contact_sheet.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rows = []
    for index, video in enumerate(videos):
        frames = list(video)
        if not frames:
            raise ValueError(f"video {index} has no frames")
        picks = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
        rows.append([frames[pick] for pick in picks])
    positions = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    return contact_sheet(rows, row_labels, [f"t={t:.2f}" for t in positions], path, **sheet_options)
