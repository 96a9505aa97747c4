"""Preference guidance (ParetoSliderApply's optional inputs), regional weights (ParetoSliderRegional) and per-frame
weights (ParetoSliderSchedule over frames) on the fakes: each output is the stated combination of plain Apply
outputs under CFG batching, the mask is resized to the latent with soft values kept, and bad input is a clear error."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import fakes
import pytest
import torch
from fakes.tiny import Library, tiny_model
from test_nodes_patching import cfg_conds, no_hooks_left, sliders, step

PACK = fakes.load_pack()
Apply, Schedule, Regional = (PACK.nodes[n] for n in ("ParetoSliderApply", "ParetoSliderSchedule",
                                                     "ParetoSliderRegional"))

import folder_paths  # noqa: E402  (fakes, installed by load_pack)

BACKBONES = ["sd3", "fluxkontext", "ltx2"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture
def library():
    lib = Library(Path(folder_paths.models_dir), f"t{uuid.uuid4().hex[:8]}")
    yield lib
    lib.remove()


def apply(model, name, *w, **extra):
    return Apply.execute(model=model, file=name, strength=1.0, **sliders(*w), **extra)


def regional(model, name, mask, inside, outside, **extra):
    return Regional.execute(model=model, file=name, strength=1.0, mask=mask, **sliders(*inside, prefix="inside_w"),
                            **sliders(*outside, prefix="outside_w"), **extra)


def parts(outputs) -> list[list[torch.Tensor]]:
    """Per cond, the output tensors (LTXAV: video and audio)."""
    return [[o] if isinstance(o, torch.Tensor) else list(o) for o in outputs]


def render(model, family, x, sigma, conds):
    return parts(step(model, family, x, sigma, conds))


# ---------------------------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("family", BACKBONES)
def test_guidance_is_w_from_plus_s_times_the_difference_under_cfg(family, library):
    name = library.add("f.safetensors", family)
    model = tiny_model(family)
    x, sigma, conds = cfg_conds(family, 2)
    at_w = render(apply(model, name, 0.0, 1.0)[0], family, x, sigma, conds)
    for source, w_from in (("uniform", (0.5, 0.5)), ("opposite", (1.0, 0.0))):
        out = apply(model, name, 0.0, 1.0, preference_guidance=2.5, guidance_from=source)
        assert out.ui["text"] == ["photo 0 · sketch 1", f"preference guidance 2.5 from {source}"]
        got = render(out[0], family, x, sigma, conds)
        base = render(apply(model, name, *w_from)[0], family, x, sigma, conds)
        for g, a, b in zip(got, base, at_w):
            for g_part, a_part, b_part in zip(g, a, b):
                # a few float32 ulps of the two renders (|values| up to ~110 on the tiny LTX-2) survive the
                # extrapolation: tolerate them at the renders' scale, not at the (possibly cancelling) result's
                scale = max(1.0, float(a_part.abs().max()), float(b_part.abs().max()))
                torch.testing.assert_close(g_part, a_part + 2.5 * (b_part - a_part), atol=TOL["atol"] * scale,
                                           rtol=TOL["rtol"])
    assert no_hooks_left(out[0])


def test_guidance_one_is_the_plain_node_and_guidance_extrapolates_past_the_end(library):
    name = library.add("f.safetensors", "sd3")
    model = tiny_model("sd3")
    x, sigma, conds = cfg_conds("sd3", 1)
    plain = apply(model, name, 0.3, 0.7)
    off = apply(model, name, 0.3, 0.7, preference_guidance=1.0, guidance_from="opposite")
    assert type(off[0].get_wrappers("apply_model", "pareto_slider")[0]).__name__ == "PreferenceWrapper"
    assert off.ui == plain.ui
    assert torch.equal(render(off[0], "sd3", x, sigma, conds)[0][0], render(plain[0], "sd3", x, sigma, conds)[0][0])
    # s < 1 lands between w_from and w
    half = render(apply(model, name, 0.0, 1.0, preference_guidance=0.5, guidance_from="opposite")[0], "sd3", x,
                  sigma, conds)[0][0]
    ends = [render(apply(model, name, *w)[0], "sd3", x, sigma, conds)[0][0] for w in ((1.0, 0.0), (0.0, 1.0))]
    torch.testing.assert_close(half, (ends[0] + ends[1]) / 2, **TOL)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"preference_guidance": math.nan}, "preference_guidance = nan: ParetoSlider inputs must be finite"),
        ({"preference_guidance": math.inf}, "set preference_guidance to a number from 0.05 to 10"),
        ({"preference_guidance": 0.0}, "preference_guidance = 0.0: set it to a number from 0.05 to 10"),
        ({"preference_guidance": 11.0}, "from 0.05 to 10"),
        ({"preference_guidance": 2.0, "guidance_from": "base"}, "guidance_from = 'base': pick one of uniform, opposite"),
    ],
)
def test_bad_guidance_settings_are_node_errors_naming_the_input(extra, message, library):
    name = library.add("f.safetensors", "sd3", lora=False)
    with pytest.raises(ValueError, match=message):
        apply(tiny_model("sd3"), name, 0.0, 1.0, **extra)


# ---------------------------------------------------------------------------------------------- regional
def half_mask(size: int, batch: int = 1) -> torch.Tensor:
    mask = torch.zeros(batch, size, size)
    mask[:, :, : size // 2] = 1.0
    return mask


@pytest.mark.parametrize("family", BACKBONES)
def test_regional_blends_inside_and_outside_renders_by_the_mask_resized_to_the_latent(family, library):
    name = library.add("f.safetensors", family)
    model = tiny_model(family)
    x, sigma, conds = cfg_conds(family, 2)
    mask = half_mask(16)  # pixel-sized mask; the fakes' latents are 4x4 (sd3/flux) or 2x2 (ltx2)
    mask[:, 0, :] = 0.25  # a soft top row
    out = regional(model, name, mask, (0.0, 1.0), (1.0, 0.0))
    assert out.ui["text"] == ["inside: photo 0 · sketch 1", "outside: photo 1 · sketch 0"]
    got = render(out[0], family, x, sigma, conds)
    inside = render(apply(model, name, 0.0, 1.0)[0], family, x, sigma, conds)
    outside = render(apply(model, name, 1.0, 0.0)[0], family, x, sigma, conds)
    for g, i, o in zip(got, inside, outside):
        video = g[0]
        h, w = video.shape[-2:]
        m = torch.nn.functional.interpolate(mask[:, None], size=(h, w), mode="area")[0, 0]
        assert ((m > 0) & (m < 1)).any()  # the soft row survives the resize
        torch.testing.assert_close(video, o[0] + m * (i[0] - o[0]), **TOL)
        assert (video - o[0]).abs().amax() > 1e-3 and (video - i[0]).abs().amax() > 1e-3
        for extra_g, extra_o in zip(g[1:], o[1:]):  # LTX-2 audio: the outside weights
            torch.testing.assert_close(extra_g, extra_o, **TOL)
    assert no_hooks_left(out[0])


def test_regional_takes_one_mask_per_latent_and_composes_with_guidance(library):
    name = library.add("f.safetensors", "sd3")
    model = tiny_model("sd3")
    x, sigma, conds = cfg_conds("sd3", 2)
    masks = torch.stack([torch.ones(4, 4), torch.zeros(4, 4)])
    got = render(regional(model, name, masks, (0.0, 1.0), (1.0, 0.0))[0], "sd3", x, sigma, conds)
    inside = render(apply(model, name, 0.0, 1.0)[0], "sd3", x, sigma, conds)
    outside = render(apply(model, name, 1.0, 0.0)[0], "sd3", x, sigma, conds)
    for g, i, o in zip(got, inside, outside):  # latent 0 entirely inside, latent 1 entirely outside
        torch.testing.assert_close(g[0][0], i[0][0], **TOL)
        torch.testing.assert_close(g[0][1], o[0][1], **TOL)
    guided = render(regional(model, name, half_mask(4), (0.0, 1.0), (1.0, 0.0), preference_guidance=2.0,
                             guidance_from="uniform")[0], "sd3", x, sigma, conds)
    uniform = render(apply(model, name, 0.5, 0.5)[0], "sd3", x, sigma, conds)
    m = half_mask(4)[0]
    for g, i, o, u in zip(guided, inside, outside, uniform):
        expected = m * (u[0] + 2 * (i[0] - u[0])) + (1 - m) * (u[0] + 2 * (o[0] - u[0]))
        torch.testing.assert_close(g[0], expected, **TOL)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.ones(4, 4, dtype=torch.uint8), "expected a ComfyUI MASK, a float tensor"),
        (torch.full((1, 4, 4), 1.5), r"values must be finite and in \[0, 1\], got \[1.5, 1.5\]"),
        (torch.full((1, 4, 4), math.nan), "values must be finite"),
        ("mask.png", "expected a ComfyUI MASK"),
    ],
)
def test_bad_masks_are_node_errors_naming_the_fix(mask, message, library):
    name = library.add("f.safetensors", "sd3", lora=False)
    with pytest.raises(ValueError, match=message):
        regional(tiny_model("sd3"), name, mask, (0.0, 1.0), (1.0, 0.0))


def test_a_mask_batch_that_fits_no_latent_batch_is_refused_at_sampling(library):
    name = library.add("f.safetensors", "sd3", lora=False)
    patched = regional(tiny_model("sd3"), name, half_mask(4, batch=3), (0.0, 1.0), (1.0, 0.0))[0]
    x, sigma, conds = cfg_conds("sd3", 2)
    with pytest.raises(ValueError, match="MASK holds 3 masks but the latent batch has 2 images"):
        step(patched, "sd3", x, sigma, conds)
    assert no_hooks_left(patched)


def test_regional_names_a_bad_slider(library):
    name = library.add("f.safetensors", "sd3", lora=False)
    with pytest.raises(ValueError, match="outside_w3 = 0.2"):
        regional(tiny_model("sd3"), name, half_mask(4), (0.0, 1.0), (1.0, 0.0, 0.2))
    with pytest.raises(ValueError, match="outside_w1 = nan: ParetoSlider inputs must be finite"):
        regional(tiny_model("sd3"), name, half_mask(4), (0.0, 1.0), (math.nan, 0.0))


# ---------------------------------------------------------------------------------------------- per-frame
def schedule(model, name, start, end, **extra):
    return Schedule.execute(model=model, file=name, strength=1.0, **sliders(*start, prefix="start_w"),
                            **sliders(*end, prefix="end_w"), **extra)


def test_schedule_over_frames_moves_the_weights_from_the_first_frame_to_the_last(library):
    name = library.add("f.safetensors", "ltx2")
    model = tiny_model("ltx2")
    x, sigma, conds = cfg_conds("ltx2", 1)
    out = schedule(model, name, (1.0, 0.0), (0.0, 1.0), over="frames")
    assert out.ui["text"] == ["first frame: photo 1 · sketch 0", "last frame: photo 0 · sketch 1"]
    got = render(out[0], "ltx2", x, sigma, conds)
    start = render(apply(model, name, 1.0, 0.0)[0], "ltx2", x, sigma, conds)
    end = render(apply(model, name, 0.0, 1.0)[0], "ltx2", x, sigma, conds)
    for g, s, e in zip(got, start, end):
        for part_g, part_s, part_e in zip(g, s, e):  # video (B, C, F, H, W) and audio (B, C, T, bins) over dim 2
            frames = part_g.shape[2]
            for f in range(frames):
                a = f / (frames - 1)
                torch.testing.assert_close(part_g[:, :, f], (1 - a) * part_s[:, :, f] + a * part_e[:, :, f], **TOL)
        assert (g[0][:, :, 0] - e[0][:, :, 0]).abs().amax() > 1e-3
    # over sampling (the default) is the sigma schedule, unchanged
    assert type(schedule(model, name, (1.0, 0.0), (0.0, 1.0))[0].get_wrappers("apply_model", "pareto_slider")[0]
                ).__name__ == "PreferenceWrapper"


def test_schedule_over_frames_refuses_image_models_and_unknown_modes(library):
    name = library.add("f.safetensors", "sd3", lora=False)
    with pytest.raises(ValueError, match="over = frames moves the weights over a video's frames"):
        schedule(tiny_model("sd3"), name, (1.0, 0.0), (0.0, 1.0), over="frames")
    with pytest.raises(ValueError, match="over = 'steps': pick one of sampling, frames"):
        schedule(tiny_model("sd3"), name, (1.0, 0.0), (0.0, 1.0), over="steps")
