"""pslider-sample's --preference-guidance / --guidance-from / --mask / --weights-inside / --weights-outside /
--first-frame-weights / --last-frame-weights and pslider-eval's guidance options, on the toy base (and a tiny LTX-2
for per-frame weights): files, metadata and pixels match the library, bad values are usage errors naming the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_sample_cli import make_slider_file, save_tiny_base

from pslider_core import ParetoSlider, get_backbone
from pslider_core.controls import PreferenceGuidance, RegionalWeights
from pslider_core.generation import generate, load_sample, read_png_metadata
from trainer.eval_cli import main as eval_main
from trainer.sample_cli import main as sample_main

TRAINED = {"config": {"height": 32, "width": 32, "num_steps": 2}}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_controls")
    adapter = get_backbone("toy")
    path = make_slider_file("toy", root / "slider.safetensors", pipe=adapter.load_pipeline(None), training=TRAINED)
    half = np.zeros((32, 32), np.uint8)
    half[:, :16] = 255
    Image.fromarray(half).save(root / "half.png")
    Image.fromarray(half[:16]).save(root / "small.png")
    (root / "prompts.txt").write_text("a red circle\n")
    return {"root": root, "slider": path, "mask": root / "half.png", "small": root / "small.png",
            "prompts": root / "prompts.txt"}


def run(main, *args):
    return CliRunner().invoke(main, [str(a) for a in args])


def sample(toy, *args):
    return run(sample_main, "--backbone", "toy", "--checkpoint", toy["slider"], "--prompt", "a red circle",
               "--device", "cpu", "--num-threads", "1", *args)


def library(toy, weights, controls):
    adapter = get_backbone("toy")
    pipe = adapter.load_pipeline(None)
    slider = ParetoSlider.from_file(toy["slider"], pipe.transformer, "toy")
    return generate(adapter, pipe, ["a red circle"], seeds=[0], slider=slider, weights=weights, num_steps=2,
                    height=32, width=32, controls=controls)[0]


def pixels(path):
    return torch.from_numpy(load_sample(path)).permute(2, 0, 1).float() / 255


def test_guidance_and_regional_files_are_what_the_library_draws(toy, tmp_path):
    result = sample(toy, "--weights", "0,1", "--preference-guidance", "2", "--guidance-from", "opposite",
                    "--out", tmp_path)
    assert result.exit_code == 0, result.output
    path = tmp_path / "a_red_circle_pg2-opposite_w0-1_seed0.png"
    assert result.output.split() == [str(path)]
    meta = read_png_metadata(path)
    assert (meta["preference_guidance"], meta["guidance_from"], meta["weights"]) == (2.0, "opposite", [0.0, 1.0])
    expected = library(toy, [0.0, 1.0], [PreferenceGuidance(2.0, "opposite")])
    assert (pixels(path) - expected).abs().max() <= 1 / 255 + 1e-6

    result = sample(toy, "--mask", toy["mask"], "--weights-inside", "0,1", "--weights-outside", "1,0",
                    "--out", tmp_path)
    assert result.exit_code == 0, result.output
    path = tmp_path / "a_red_circle_region-out1-0_w0-1_seed0.png"
    meta = read_png_metadata(path)
    assert meta["weights"] == [0.0, 1.0] and meta["weights_outside"] == [1.0, 0.0] and meta["mask_mean"] == 0.5
    mask = torch.zeros(32, 32)
    mask[:, :16] = 1
    expected = library(toy, [0.0, 1.0], [RegionalWeights(mask, (1.0, 0.0))])
    assert (pixels(path) - expected).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "0,1", "--preference-guidance", "0"], "must be a finite number in (0, 10], got 0.0"),
        (["--weights", "0,1", "--preference-guidance", "nan"], "got nan"),
        (["--weights", "0,1", "--preference-guidance", "12"], "got 12.0"),
        (["--weights", "0,1", "--preference-guidance", "2", "--guidance-from", "0,1,0"],
         "--guidance-from '0,1,0': pass uniform, opposite or one weight per reward (brightness, saturation)"),
        (["--weights", "0,1", "--preference-guidance", "2", "--guidance-from", "sideways"], "pass uniform, opposite"),
        (["--mask", "MASK", "--weights-inside", "0,1"], "need all of --mask PNG, --weights-inside W and"),
        (["--mask", "MASK", "--weights-inside", "0,1", "--weights-outside", "1,0", "--weights", "1,1"],
         "--weights-inside sets the sample's weights: drop --weights"),
        (["--mask", "SMALL", "--weights-inside", "0,1", "--weights-outside", "1,0"],
         "The mask is 32x16 (width x height) but the samples are 32x32"),
        (["--mask", "MASK", "--weights-inside", "0,1", "--weights-outside", "-1,0"], "--weights-outside -1,0: Weights "
         "must be non-negative"),
        (["--first-frame-weights", "0,1", "--last-frame-weights", "1,0"], "Per-frame weights need a video backbone"),
        (["--first-frame-weights", "0,1"], "need both --first-frame-weights and --last-frame-weights"),
    ],
)
def test_bad_control_options_are_usage_errors_naming_the_fix(toy, tmp_path, args, message):
    args = [{"MASK": toy["mask"], "SMALL": toy["small"]}.get(a, a) for a in args]
    result = sample(toy, *args, "--out", tmp_path)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not list(tmp_path.iterdir())


def test_a_fixed_weights_file_takes_no_controls(toy, tmp_path):
    fixed = make_slider_file("toy", tmp_path / "fixed.safetensors", pipe=get_backbone("toy").load_pipeline(None),
                             training={**TRAINED, "method": "fixed_weights", "fixed_weights": [1, 0]})
    result = run(sample_main, "--backbone", "toy", "--checkpoint", fixed, "--prompt", "a red circle",
                 "--preference-guidance", "2", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "need a ParetoSlider --checkpoint" in result.output


def test_eval_guidance_names_the_guided_method_and_refuses_to_mix_with_other_settings(toy, tmp_path):
    out = tmp_path / "eval"
    common = ["--backbone", "toy", "--checkpoint", toy["slider"], "--prompts", toy["prompts"], "--grid", "2",
              "--seeds", "0", "--no-progress", "--num-threads", "1", "--out", out]
    result = run(eval_main, *common, "--preference-guidance", "1.5", "--guidance-from", "opposite")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["slider@pg1.5-opposite"]
    assert (summary["run"]["preference_guidance"], summary["run"]["guidance_from"]) == (1.5, "opposite")
    sample_file = out / "samples" / "slider@pg1.5-opposite"
    expected = library(toy, [0.0, 1.0], [PreferenceGuidance(1.5, "opposite")])
    drawn = [p for p in sample_file.iterdir() if "w0-1_" in p.name]
    assert len(drawn) == 1 and (pixels(drawn[0]) - expected).abs().max() <= 1 / 255 + 1e-6
    again = run(eval_main, *common)  # unguided into the same folder: its rows belong to another method
    assert again.exit_code == 2 and "holds 2 samples this run does not plan" in again.output, again.output
    bad = run(eval_main, *common[:-1], tmp_path / "other", "--preference-guidance", "-1")
    assert bad.exit_code == 2 and "--preference-guidance" in bad.output


def test_per_frame_weights_on_a_tiny_ltx2(tmp_path):
    base = save_tiny_base("ltx2", tmp_path / "base")
    slider = make_slider_file("ltx2", tmp_path / "slider.safetensors")
    args = ["--backbone", "ltx2", "--base", base, "--checkpoint", slider, "--prompt", "a red circle", "--steps", "2",
            "--height", "32", "--width", "32", "--num-frames", "9", "--video-format", "gif", "--device", "cpu",
            "--num-threads", "1", "--out", tmp_path / "out"]
    result = run(sample_main, *args, "--first-frame-weights", "1,0", "--last-frame-weights", "0,1")
    assert result.exit_code == 0, result.output
    path = tmp_path / "out" / "a_red_circle_frames-last0-1_w1-0_seed0.gif"
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["weights"] == [1.0, 0.0] and meta["weights_last_frame"] == [0.0, 1.0]
    frames = load_sample(path).astype(np.float32)
    ends = {}
    for w in ("1,0", "0,1"):
        assert run(sample_main, *args, "--weights", w).exit_code == 0
        ends[w] = load_sample(tmp_path / "out" / f"a_red_circle_w{w.replace(',', '-')}_seed0.gif").astype(np.float32)
    first, last = np.abs(frames - ends["1,0"]).mean((1, 2, 3)), np.abs(frames - ends["0,1"]).mean((1, 2, 3))
    assert first[0] < last[0] and last[-1] < first[-1], (first, last)  # starts at the first weights, ends at the last
