"""pslider_core.controls on every backbone's tiny real model: preference guidance, regional and per-frame weights are
the stated combinations of conditioned velocities, computed in one transformer call, laid out in each adapter's
state; s = 1 is exactly today's sampling; bad settings are clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import randomize_, transformer_inputs

from pslider_core import LoraSpec, ParetoSlider, PreferenceSpec, get_backbone
from pslider_core.controls import (
    ControlContext,
    FrameWeights,
    PreferenceGuidance,
    RegionalWeights,
    check_guidance_scale,
    check_mask,
    controlled_velocity,
    guidance_source,
    resize_mask,
)
from pslider_core.generation import generate

SPEC = PreferenceSpec(("brightness", "saturation"))
TOL = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def sliders():
    """One tiny pipeline per backbone with a random (non-zero) ParetoSlider on it."""
    cache = {}

    def get(name):
        if name not in cache:
            adapter = get_backbone(name)
            pipe = adapter.tiny_pipeline(seed=0)
            slider = ParetoSlider.attach(pipe.transformer, name, SPEC.reward_names,
                                         lora=LoraSpec(4, 4, adapter.lora_target_modules))
            randomize_(slider.trainable_parameters(), seed=1, std=0.2)
            cache[name] = (adapter, pipe, slider)
        return cache[name]

    return get


def size_of(adapter) -> dict[str, int]:
    size = {"num_frames": 1, **adapter.tiny_sample_size}
    if adapter.modality == "video":
        size["num_frames"] = 9  # 5 latent frames
    return size


def plain_velocity(adapter, pipe, slider, x, sigma, cond, w):
    with slider.condition(w):
        return adapter.predict_velocity(pipe, pipe.transformer, x, sigma, cond)


def inputs(adapter, pipe, size, batch=2):
    x, sigma, cond = transformer_inputs(adapter.name, pipe, ["a red circle", "a blue square"][:batch])
    if size["num_frames"] != adapter.tiny_sample_size.get("num_frames", 1):
        cond = adapter.encode_prompts(pipe, ["a red circle", "a blue square"][:batch], None, **size)
        x = adapter.initial_noise(pipe, batch, size["height"], size["width"], torch.Generator().manual_seed(0),
                                  size["num_frames"])
    return x, sigma, cond


# ---------------------------------------------------------------------------------------------- velocities
def test_guidance_is_one_transformer_call_and_the_stated_combination(backbone, sliders):
    adapter, pipe, slider = sliders(backbone)
    size = size_of(adapter)
    x, sigma, cond = inputs(adapter, pipe, size)
    w = torch.tensor([[0.0, 1.0], [0.3, 0.7]])
    ctx = ControlContext(adapter, pipe, SPEC, **size)
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda _m, args, kwargs: calls.append(
        (args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True)
    try:
        with torch.no_grad():
            got = controlled_velocity(adapter, pipe, slider, cond, w, [PreferenceGuidance(2.0, "opposite")],
                                      ctx)(x, sigma)
    finally:
        handle.remove()
    assert calls == [4], "w_from and w rows of both samples in one call"
    with torch.no_grad():
        at_w = plain_velocity(adapter, pipe, slider, x, sigma, cond, w)
        at_from = plain_velocity(adapter, pipe, slider, x, sigma, cond, 1 - w)
    torch.testing.assert_close(got, at_from + 2.0 * (at_w - at_from), **TOL)
    assert (at_w - at_from).abs().amax() > 1e-4


def test_regional_velocity_blends_per_state_element_and_per_frame_follows_the_frames(backbone, sliders):
    adapter, pipe, slider = sliders(backbone)
    size = size_of(adapter)
    x, sigma, cond = inputs(adapter, pipe, size)
    ctx = ControlContext(adapter, pipe, SPEC, **size)
    inside, outside = torch.tensor([[0.0, 1.0]] * 2), torch.tensor([[1.0, 0.0]] * 2)
    mask = torch.zeros(size["height"], size["width"])
    mask[:, : size["width"] // 2] = 1.0
    m = adapter.state_mask(pipe, mask[None], size["height"], size["width"], size["num_frames"])
    assert m.ndim == x.ndim and torch.broadcast_shapes(m.shape, x.shape) == x.shape
    assert 0.3 < float(m.mean()) <= 0.5 and set(m.unique().tolist()) == {0.0, 1.0}
    with torch.no_grad():
        got = controlled_velocity(adapter, pipe, slider, cond, inside, [RegionalWeights(mask, (1.0, 0.0))],
                                  ctx)(x, sigma)
        v_in = plain_velocity(adapter, pipe, slider, x, sigma, cond, inside)
        v_out = plain_velocity(adapter, pipe, slider, x, sigma, cond, outside)
    torch.testing.assert_close(got, v_out + m * (v_in - v_out), **TOL)
    if adapter.modality != "video":
        with pytest.raises(ValueError, match="Per-frame weights need a video backbone"):
            controlled_velocity(adapter, pipe, slider, cond, inside, [FrameWeights((1.0, 0.0))], ctx)
        return
    a = adapter.frame_mask(pipe, size["height"], size["width"], size["num_frames"])
    layout = adapter.layout(pipe, size["height"], size["width"], size["num_frames"])
    video = a[0, : layout.video_tokens, 0].view(layout.latent_frames, -1)
    assert torch.equal(video[:, 0], torch.linspace(0, 1, layout.latent_frames)) and (video == video[:, :1]).all()
    assert float(a[0, layout.video_tokens, 0]) == 0.0 and float(a[0, -1, 0]) == 1.0  # audio: its own clock
    assert (m[0, layout.video_tokens:] == 0).all(), "audio tokens take the outside weights"
    with torch.no_grad():
        got = controlled_velocity(adapter, pipe, slider, cond, inside, [FrameWeights((1.0, 0.0))], ctx)(x, sigma)
    torch.testing.assert_close(got, v_in + a * (v_out - v_in), **TOL)


def test_state_masks_of_image_backbones_average_the_pixels_of_each_latent_cell(sliders):
    adapter, pipe, _ = sliders("sd3")
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :5] = 1.0  # 5 px: two and a half latent cells of 2 px
    m = adapter.state_mask(pipe, mask, 32, 32)
    assert m.shape == (1, 1, 16, 16)
    assert m[0, 0, 0, :4].tolist() == [1.0, 1.0, 0.5, 0.0]
    torch.testing.assert_close(resize_mask(torch.rand(2, 64, 64), 16, 16).mean(), torch.tensor(0.5), atol=0.02,
                               rtol=0)
    assert resize_mask(torch.ones(1, 2, 2), 4, 4).shape == (1, 4, 4)  # smaller masks grow (bilinear)


# ---------------------------------------------------------------------------------------------- generate
def test_generate_with_guidance_one_is_bit_identical_and_other_scales_change_the_image(sliders):
    adapter, pipe, slider = sliders("toy")
    kwargs = dict(seeds=[0, 1], slider=slider, weights=[0.0, 1.0], num_steps=2, height=32, width=32)
    plain = generate(adapter, pipe, ["a red circle"] * 2, **kwargs)
    same = generate(adapter, pipe, ["a red circle"] * 2, controls=[PreferenceGuidance(1.0)], **kwargs)
    assert torch.equal(plain, same)
    pushed = generate(adapter, pipe, ["a red circle"] * 2, controls=[PreferenceGuidance(3.0)], **kwargs)
    assert (pushed - plain).abs().amax() > 1e-3
    adapter, pipe, slider = sliders("sd3")  # the toy text encoder has no empty prompt for CFG
    kwargs["slider"] = slider
    cfg = generate(adapter, pipe, ["a red circle"] * 2, guidance_scale=2.0, **kwargs)
    with_cfg = generate(adapter, pipe, ["a red circle"] * 2, controls=[PreferenceGuidance(3.0)], guidance_scale=2.0,
                        **kwargs)
    assert torch.isfinite(with_cfg).all() and (with_cfg - cfg).abs().amax() > 1e-3


def test_generate_slices_per_sample_masks_across_batches(sliders):
    adapter, pipe, slider = sliders("toy")
    masks = torch.stack([torch.ones(32, 32), torch.zeros(32, 32)])
    kwargs = dict(seeds=[0, 1], slider=slider, weights=[0.0, 1.0], num_steps=2, height=32, width=32)
    got = generate(adapter, pipe, ["a red circle"] * 2, controls=[RegionalWeights(masks, (1.0, 0.0))], batch_size=1,
                   **kwargs)
    inside = generate(adapter, pipe, ["a red circle"] * 2, **kwargs)
    outside = generate(adapter, pipe, ["a red circle"] * 2, **{**kwargs, "weights": [1.0, 0.0]})
    torch.testing.assert_close(got[0], inside[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], outside[1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="need a slider and weights"):
        generate(adapter, pipe, ["a red circle"], seeds=[0], slider=slider, num_steps=1, height=32, width=32,
                 controls=[PreferenceGuidance(2.0)])
    with pytest.raises(ValueError, match="at most one of RegionalWeights and FrameWeights"):
        generate(adapter, pipe, ["a red circle"], **{**kwargs, "seeds": [0]},
                 controls=[RegionalWeights(masks[:1], (1, 0)), FrameWeights((1, 0))])


# ---------------------------------------------------------------------------------------------- validation
def test_guidance_sources():
    w = torch.tensor([[0.0, 1.0], [0.25, 0.75]])
    assert guidance_source(SPEC, w, "uniform").tolist() == [[0.5, 0.5]] * 2
    assert guidance_source(SPEC, w, "opposite").tolist() == [[1.0, 0.0], [0.75, 0.25]]
    three = PreferenceSpec(("a", "b", "c"))
    assert guidance_source(three, torch.tensor([[0.0, 0.0, 1.0]]), "opposite").tolist() == [[0.5, 0.5, 0.0]]
    assert guidance_source(SPEC, w, (3, 1)).tolist() == [[0.75, 0.25]] * 2
    with pytest.raises(ValueError, match="Guidance source weights: Got 3 weights but the model has 2 rewards"):
        guidance_source(SPEC, w, (1, 0, 0))
    with pytest.raises(ValueError, match="Unknown guidance source 'base'"):
        PreferenceGuidance(2.0, "base")


@pytest.mark.parametrize("scale", [0, -1, math.nan, math.inf, 10.5, "two"])
def test_out_of_range_guidance_scales_are_errors_saying_what_to_pass(scale):
    with pytest.raises(ValueError, match=r"must be (a finite number in \(0, 10\]|a number)"):
        check_guidance_scale(scale)
    assert check_guidance_scale(0.5) == 0.5 and check_guidance_scale(10) == 10.0


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.ones(16, 32), r"The mask is 32x16 \(width x height\) but the samples are 32x32: .*resize it to 32x32"),
        (torch.ones(32, 32, dtype=torch.uint8), "dtype torch.uint8; pass a float mask in \\[0, 1\\] .*divide it by 255"),
        (torch.full((32, 32), 255.0), r"Mask values must lie in \[0, 1\] .*got \[255, 255\]; .*divide it by 255"),
        (torch.full((32, 32), math.nan), "NaN or infinite"),
        (torch.ones(1, 1, 32, 32), r"must be \(H, W\) or \(B, H, W\), got shape \(1, 1, 32, 32\)"),
        ([[1.0]], "must be a torch tensor"),
    ],
)
def test_bad_masks_are_errors_naming_the_fix(mask, message):
    with pytest.raises((ValueError, TypeError), match=message):
        check_mask(mask, 32, 32)


def test_masks_accept_bool_and_batches():
    assert check_mask(torch.ones(32, 32, dtype=torch.bool), 32, 32).dtype == torch.float32
    assert check_mask(torch.zeros(3, 32, 32), 32, 32).shape == (3, 32, 32)
