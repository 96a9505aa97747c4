"""Model-free rewards order synthetic images the way their names promise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.filters import gaussian_blur2d

from pslider_core.rewards import RewardBatch, get_reward

torch.set_num_threads(1)


def scene(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth colourful regions plus fine texture: something between a photo and noise."""
    gen = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(n, 3, 4, 4, generator=gen), size=(size, size), mode="bilinear")
    texture = (torch.rand(n, 1, size, size, generator=gen) - 0.5) * 0.3
    return (smooth + texture).clamp(0, 1)


def score(spec: str, images: torch.Tensor, sources: torch.Tensor | None = None) -> torch.Tensor:
    prompts = ["a photo"] * images.shape[0]
    return get_reward(spec)(RewardBatch(images=images, prompts=prompts, sources=sources))


def test_brightness_is_mean_luma():
    levels = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1, 1).expand(3, 3, 8, 8)
    torch.testing.assert_close(score("brightness", levels), torch.tensor([0.1, 0.5, 0.9]))
    img = scene()
    assert (score("brightness", img * 0.5) < score("brightness", img)).all()


def test_grey_is_less_saturated_and_less_colorful():
    img = scene()
    grey = rgb_to_grayscale(img).expand(-1, 3, -1, -1)
    for spec in ["saturation", "colorfulness"]:
        colour, flat = score(spec, img), score(spec, grey)
        assert (flat < colour).all(), spec
        torch.testing.assert_close(flat, torch.zeros(2), atol=1e-4, rtol=0)
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1
    torch.testing.assert_close(score("saturation", red), torch.ones(1))


def test_blur_lowers_sharpness_and_edges():
    img = scene()
    blurred = gaussian_blur2d(img, (9, 9), (2.0, 2.0))
    assert (score("sharpness", blurred) < 0.5 * score("sharpness", img)).all()
    assert (score("edge_density", blurred) < score("edge_density", img)).all()


def test_edge_density_finds_line_drawings():
    drawing = torch.ones(1, 3, 64, 64)
    drawing[..., ::8, :] = 0
    drawing[..., :, ::8] = 0
    flat = torch.full((1, 3, 64, 64), 0.7)
    dense, none = score("edge_density", drawing), score("edge_density", flat)
    assert none.item() == 0 and dense.item() > 0.1


def test_jpeg_rewards_prefer_flat_or_detailed_images():
    flat = torch.full((1, 3, 64, 64), 0.4)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    images = torch.cat([flat, noise])
    compress, incompress = score("jpeg_compressibility", images), score("jpeg_incompressibility", images)
    assert compress[0] > compress[1] and incompress[1] > incompress[0]
    torch.testing.assert_close(compress, -incompress)
    assert incompress[1] > 5 * incompress[0]  # kB of a 64x64 noise JPEG vs a flat one
    low_quality = score("jpeg_incompressibility(quality=30)", noise)
    assert low_quality < incompress[1]
    with pytest.raises(ValueError, match="quality must be in 1..100"):
        get_reward("jpeg_compressibility(quality=0)")


def test_source_itself_has_the_highest_fidelity():
    source = scene(n=1, seed=3)
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn(source.shape, generator=gen)
    candidates = torch.cat([source, (source + 0.05 * noise).clamp(0, 1), (source + 0.3 * noise).clamp(0, 1)])
    sources = source.expand(3, -1, -1, -1)
    ssim, psnr, mse = (score(spec, candidates, sources) for spec in ["ssim", "psnr", "mse"])
    assert ssim[0] > ssim[1] > ssim[2] and psnr[0] > psnr[1] > psnr[2] and mse[0] < mse[1] < mse[2]
    torch.testing.assert_close(ssim[0], torch.tensor(1.0))
    assert psnr[0].item() == 100.0 and mse[0].item() == 0.0
    torch.testing.assert_close(psnr[1:], -10 * torch.log10(mse[1:]))
    assert not get_reward("mse").higher_is_better and get_reward("ssim").higher_is_better


def test_fidelity_resizes_sources_and_requires_them():
    source = scene(n=1, size=64, seed=5)
    small = F.interpolate(source, size=(32, 32), mode="bilinear", antialias=True)
    assert score("ssim", small, source) > score("ssim", small, source.flip(-1))
    with pytest.raises(ValueError, match=r"reward 'ssim' compares each sample with its source.*sources="):
        score("ssim", source)
    with pytest.raises(ValueError, match="odd number"):
        get_reward("ssim(window_size=4)")


def test_temporal_consistency_prefers_steady_video():
    frame = scene(n=1, seed=6)[0]
    static = frame.expand(1, 5, -1, -1, -1)
    drifting = torch.stack([torch.roll(frame, shifts=i, dims=-1) for i in range(5)]).unsqueeze(0)
    flicker = torch.rand(1, 5, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    videos = torch.cat([static, drifting, flicker])
    scores = get_reward("temporal_consistency")(RewardBatch(images=videos, prompts=["v"] * 3))
    assert scores[0] > scores[1] > scores[2]
    torch.testing.assert_close(scores[0], torch.tensor(1.0))
    with pytest.raises(ValueError, match="at least 2 frames"):
        get_reward("temporal_consistency")(RewardBatch(images=videos[:, :1], prompts=["v"] * 3))
    with pytest.raises(ValueError, match="metric must be one of ssim, clip, dinov2"):
        get_reward("temporal_consistency(metric=lpips)")


def test_image_rewards_score_videos_per_frame():
    frames = scene(n=4, seed=8)
    video = frames.view(2, 2, 3, 64, 64)
    per_frame = score("sharpness", frames).view(2, 2).mean(dim=1)
    torch.testing.assert_close(score("sharpness", video), per_frame)
