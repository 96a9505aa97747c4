"""Front plot, contact sheet and video strip: real PNG files of the expected size and content."""

import numpy as np
import pytest
from PIL import Image

from pslider_core.evaluation import MethodMeans, contact_sheet, method_colours, plot_front, video_strip, weight_grid


def read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def assert_not_blank(pixels):
    assert pixels.std() > 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1


def means_for(rewards, weights, values):
    values = np.asarray(values, dtype=float)
    return MethodMeans(tuple(rewards), tuple(weights), values, np.ones(values.shape, dtype=int))


def test_two_reward_front(tmp_path):
    grid = weight_grid(2, 5)
    means = {
        "slider": means_for("ab", grid, [[w0, 1 - w0**2] for w0, _ in grid]),
        "fixed": means_for("ab", [(0.75, 0.25), (0.25, 0.75)], [[0.6, 0.3], [0.2, 0.8]]),
        "base": means_for("ab", [None], [[0.1, 0.1]]),
    }
    kinds = {"slider": "pareto_slider", "fixed": "fixed_weights", "base": "base"}
    path = plot_front(means, kinds, tmp_path / "plots" / "front.png", panel_px=300, dpi=100)
    pixels = read(path)
    assert pixels.shape == (300, 300, 3)
    assert_not_blank(pixels)
    # Each method is drawn in its own colour (marker interiors are exactly that colour).
    for colour in method_colours(list(means)).values():
        target = np.round(np.array(colour) * 255).astype(np.uint8)
        assert np.all(pixels == target, axis=-1).sum() > 20


@pytest.mark.parametrize(("num_rewards", "size"), [(3, (200, 600)), (4, (400, 600))])
def test_pairwise_panels_for_three_or_more_rewards(tmp_path, num_rewards, size):
    grid = np.array(weight_grid(num_rewards, 3))
    rewards = [f"r{index}" for index in range(num_rewards)]
    means = {
        "slider": means_for(rewards, [tuple(w) for w in grid], grid + 0.1),
        "base": means_for(rewards, [None], [[0] * num_rewards]),
    }
    path = plot_front(means, {"slider": "pareto_slider", "base": "base"}, tmp_path / "front.png", panel_px=200)
    pixels = read(path)
    assert pixels.shape[:2] == size  # 3 panels in one row; 6 panels in two rows of 3
    assert_not_blank(pixels)


def test_front_input_checks(tmp_path):
    one = {"m": means_for("a", [None], [[1.0]])}
    with pytest.raises(ValueError, match="at least 2 rewards"):
        plot_front(one, {"m": "base"}, tmp_path / "x.png")
    two = {"m": means_for("ab", [None], [[1.0, 2.0]])}
    with pytest.raises(ValueError, match="kind None; give it one of"):
        plot_front(two, {}, tmp_path / "x.png")


def solid(colour, width, height):
    return np.full((height, width, 3), colour, dtype=np.uint8)


def test_contact_sheet_size_and_cells(tmp_path):
    colours = [[(200, 0, 0), (0, 200, 0), (0, 0, 200)], [(200, 200, 0), (0, 200, 200), (120, 0, 120)]]
    images = [
        [solid(colours[0][0], 40, 30), Image.fromarray(solid(colours[0][1], 32, 20)), solid(colours[0][2], 40, 30)],
        [solid(colours[1][0], 24, 36), solid(colours[1][1], 40, 30), solid(colours[1][2], 40, 30)],
    ]
    prompts = ["a photo of a very long prompt that needs wrapping over several lines", "short"]
    path = contact_sheet(images, prompts, ["w=(1, 0)", "w=(.5, .5)", "w=(0, 1)"], tmp_path / "grid.png",
                         label_width=120, header_height=24, pad=3, font_size=10)
    pixels = read(path)
    cell_w, cell_h = 40, 36  # largest image in each direction
    assert pixels.shape == (24 + 3 + 2 * (cell_h + 3), 120 + 3 + 3 * (cell_w + 3), 3)
    for r in range(2):
        for c in range(3):
            centre = (24 + 3 + r * (cell_h + 3) + cell_h // 2, 120 + 3 + c * (cell_w + 3) + cell_w // 2)
            assert tuple(pixels[centre]) == colours[r][c]
    # A smaller image is centred in its cell: the 32x20 one sits 4 px right of and 8 px below the cell corner.
    top, left = 24 + 3, 120 + 3 + (cell_w + 3)
    assert tuple(pixels[top, left]) == (255, 255, 255)
    assert tuple(pixels[top + 8, left + 4]) == colours[0][1] != tuple(pixels[top + 7, left + 4])
    assert np.any(pixels[:, :120] < 128)  # row labels drawn
    assert np.any(pixels[:24, 120:] < 128)  # column labels drawn


def test_contact_sheet_thumbnails_and_errors(tmp_path):
    images = [[solid((10, 20, 30), 100, 50)]]
    path = contact_sheet(images, ["p"], ["w"], tmp_path / "grid.png", thumb=20, label_width=0, header_height=0, pad=0)
    pixels = read(path)
    assert pixels.shape == (10, 20, 3)
    assert tuple(pixels[5, 10]) == (10, 20, 30)
    with pytest.raises(ValueError, match=r"astype\(np.uint8\)"):
        contact_sheet([[np.zeros((8, 8, 3))]], ["p"], ["w"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="one image per column label"):
        contact_sheet([[solid((0, 0, 0), 8, 8)]], ["p"], ["w1", "w2"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="one row label per row"):
        contact_sheet([[solid((0, 0, 0), 8, 8)]], [], ["w"], tmp_path / "bad.png")


def test_video_strip_samples_frames_evenly(tmp_path):
    frames = np.stack([solid((50 * t, 0, 255 - 50 * t), 16, 12) for t in range(5)])  # frame t: red = 50 t
    path = video_strip([frames, list(frames[::-1])], ["w=(1, 0)", "w=(0, 1)"], tmp_path / "strip.png",
                       num_frames=3, label_width=60, header_height=20, pad=2)
    pixels = read(path)
    assert pixels.shape == (20 + 2 + 2 * (12 + 2), 60 + 2 + 3 * (16 + 2), 3)
    reds = [[pixels[20 + 2 + r * 14 + 6, 60 + 2 + c * 18 + 8, 0] for c in range(3)] for r in range(2)]
    assert reds == [[0, 100, 200], [200, 100, 0]]  # frames 0, 2, 4 (reversed in the second video)
    assert_not_blank(pixels)
