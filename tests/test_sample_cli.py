"""pslider_core.generation and `pslider-sample` on tiny real models saved to disk and loaded back like a user's.

The ParetoSlider files get random LoRA and module weights, so the preference visibly changes the output; the
fixed-weights file also gets random modules, to show they are never hooked in.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from helpers import randomize_
from PIL import Image

from pslider_core import LoraSpec, ParetoSlider, get_backbone
from pslider_core.generation import (
    FIXED_WEIGHTS,
    describe_checkpoint,
    generate,
    load_sample,
    read_png_metadata,
    save_png,
    save_video,
)
from pslider_core.toy import BASE_DIR as TOY_BASE_DIR
from trainer.sample_cli import main as sample_main

REWARDS = ["brightness", "saturation"]
FAST = ["--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"]


def make_slider_file(backbone: str, path: Path, *, pipe=None, training: dict | None = None, seed: int = 1,
                     base_model: str = "") -> Path:
    """A ParetoSlider file with random weights for a tiny (or given) pipeline of `backbone`."""
    adapter = get_backbone(backbone)
    pipe = pipe if pipe is not None else adapter.tiny_pipeline(seed=0)
    slider = ParetoSlider.attach(pipe.transformer, backbone, REWARDS, lora=LoraSpec(4, 4, adapter.lora_target_modules),
                                 base_model=base_model)
    randomize_(slider.trainable_parameters(), seed=seed, std=0.2)
    return slider.save(path, training=training)


def save_tiny_base(backbone: str, directory: Path) -> Path:
    get_backbone(backbone).tiny_pipeline(seed=0).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sd3(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny SD3 base, a ParetoSlider for it, a fixed-weights baseline for it and a toy-backbone file."""
    root = tmp_path_factory.mktemp("sd3")
    fixed = {"method": FIXED_WEIGHTS, "fixed_weights": [7.0, 3.0], "objective": "nft"}
    return {
        "base": save_tiny_base("sd3", root / "base"),
        "slider": make_slider_file("sd3", root / "slider.safetensors"),
        "fixed": make_slider_file("sd3", root / "fixed.safetensors", training=fixed, seed=2),
        "toy": make_slider_file("toy", root / "toy.safetensors"),
    }


@pytest.fixture(scope="module")
def loaded(sd3):
    adapter = get_backbone("sd3")
    pipe = adapter.load_pipeline(sd3["base"])
    slider = ParetoSlider.from_file(sd3["slider"], pipe.transformer, "sd3")
    with warnings.catch_warnings():  # peft warns that a second adapter joins the first: that is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        fixed = ParetoSlider.from_file(sd3["fixed"], pipe.transformer, "sd3", adapter_name="fixed")
    return adapter, pipe, slider, fixed


def run(args: list) -> Result:
    return CliRunner().invoke(sample_main, [str(a) for a in args])


def _gen(loaded, **kwargs) -> torch.Tensor:
    adapter, pipe = loaded[:2]
    prompts = kwargs.pop("prompts", ["a red fox", "a blue bird"])
    options = {"seeds": [0, 1], "num_steps": 2, "height": 32, "width": 32, **kwargs}
    return generate(adapter, pipe, prompts, **options)


# ---------------------------------------------------------------------------------------------------- library
def test_generate_is_deterministic_per_seed_whatever_the_batch(loaded):
    _, _, slider, _ = loaded
    prompts, seeds = ["a red fox", "a blue bird", "a red fox"], [3, 4, 3]
    w = [[1.0, 0.0], [0.25, 0.75], [1.0, 0.0]]
    together = _gen(loaded, prompts=prompts, seeds=seeds, slider=slider, weights=w, batch_size=3)
    alone = _gen(loaded, prompts=prompts, seeds=seeds, slider=slider, weights=w, batch_size=1)
    assert together.shape == (3, 3, 32, 32) and 0 <= together.min() and together.max() <= 1
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(together[0], together[2], atol=1e-5, rtol=0)  # same prompt, seed and w
    assert (together[0] - together[1]).abs().max() > 1e-2


def test_weights_steer_the_slider_and_the_base_stays_the_base(loaded, sd3):
    adapter, pipe, slider, _ = loaded
    flags = [p.requires_grad for p in pipe.transformer.parameters()]
    first = _gen(loaded, slider=slider, weights=[1.0, 0.0])
    second = _gen(loaded, slider=slider, weights=[0.0, 1.0])
    scaled = _gen(loaded, slider=slider, weights=[3.0, 0.0])  # normalised like the ComfyUI node and the CLI
    base = _gen(loaded)
    assert (first - second).abs().mean() > 1e-3
    torch.testing.assert_close(first, scaled)
    assert (first - base).abs().mean() > 1e-3
    # with the slider's LoRA loaded but switched off, the transformer is the pristine base model
    pristine = adapter.load_pipeline(sd3["base"])
    torch.testing.assert_close(base, generate(adapter, pristine, ["a red fox", "a blue bird"], seeds=[0, 1],
                                              num_steps=2, height=32, width=32), atol=1e-5, rtol=0)
    assert [p.requires_grad for p in pipe.transformer.parameters()] == flags  # peft's switches were undone


def test_fixed_weights_file_uses_its_lora_without_preference_hooks(loaded, sd3):
    _, _, slider, fixed = loaded
    info = describe_checkpoint(sd3["fixed"], "sd3")
    assert info.kind == FIXED_WEIGHTS and info.fixed_weights == pytest.approx((0.7, 0.3))
    assert describe_checkpoint(sd3["slider"]).kind == "pareto_slider"
    lora_only = _gen(loaded, slider=fixed)
    hooked = _gen(loaded, slider=fixed, weights=[0.7, 0.3])  # its modules are random here: hooks would show
    assert (lora_only - _gen(loaded)).abs().mean() > 1e-3  # its LoRA is on
    assert (lora_only - hooked).abs().mean() > 1e-3
    assert (lora_only - _gen(loaded, slider=slider, weights=[0.7, 0.3])).abs().mean() > 1e-3  # not the other LoRA


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": [0.5, 0.5]}, "base model takes no preference"),
        ({"slider": True, "weights": [0.2, 0.3, 0.5]}, "Got 3 weights but the model has 2 rewards"),
        ({"slider": True, "weights": [-1.0, 2.0]}, "non-negative"),
        ({"slider": True, "weights": [[1.0, 0.0]] * 3}, "3 weight vectors for 2 prompts"),
        ({"seeds": [0]}, "one seed per prompt"),
        ({"sources": torch.rand(2, 3, 32, 32)}, "takes no source images"),
    ],
)
def test_generate_rejects_bad_input(loaded, kwargs, message):
    if kwargs.get("slider") is True:
        kwargs = {**kwargs, "slider": loaded[2]}
    with pytest.raises(ValueError, match=message):
        _gen(loaded, **kwargs)


def test_png_and_video_files_round_trip(tmp_path):
    image = torch.rand(3, 24, 40)
    path = save_png(image, tmp_path / "a.png", {"prompt": "a fox", "seed": 3, "weights": [0.3, 0.7]})
    assert read_png_metadata(path) == {"prompt": "a fox", "seed": 3, "weights": [0.3, 0.7]}
    with Image.open(path) as handle:
        assert handle.text["Description"] == "a fox"
    assert np.abs(load_sample(path).astype(float) - image.permute(1, 2, 0).numpy() * 255).max() <= 0.5 + 1e-4
    video = torch.rand(5, 3, 32, 48)
    for suffix in ("mp4", "gif"):
        saved = save_video(video, tmp_path / f"v.{suffix}", {"weights": [1.0, 0.0]}, fps=8)
        frames = load_sample(saved)
        assert frames.shape == (5, 32, 48, 3) and frames.dtype == np.uint8
        assert Path(f"{saved}.json").read_text().strip() == '{"weights": [1.0, 0.0]}'
    with pytest.raises(ValueError, match="must end in one of"):
        save_video(video, tmp_path / "v.avi", {})


# ---------------------------------------------------------------------------------------------------- pslider-sample
def _pixels(path: Path) -> np.ndarray:
    return load_sample(path).astype(np.int16)


def test_sample_cli_writes_one_png_per_weights_and_seed(sd3, tmp_path):
    args = ["--backbone", "sd3", "--base", sd3["base"], "--checkpoint", sd3["slider"], "--prompt", "a red fox",
            "--weights", "3,1", "--weights", "1,0", "--sweep", "3", "--seed", "0", "--seed", "5", *FAST]
    result = run([*args, "--out", tmp_path / "a"])
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.split()]
    names = sorted(p.name for p in paths)
    expected = [f"a_red_fox_{w}_seed{s}.png" for w in ("w0-1", "w0.5-0.5", "w0.75-0.25", "w1-0") for s in (0, 5)]
    assert names == sorted(expected)  # (1,0) given and in the sweep: drawn once
    meta = read_png_metadata(tmp_path / "a" / "a_red_fox_w0.75-0.25_seed5.png")
    assert meta["prompt"] == "a red fox" and meta["seed"] == 5 and meta["weights"] == [0.75, 0.25]
    assert meta["reward_names"] == REWARDS and meta["checkpoint"] == str(sd3["slider"]) and meta["num_steps"] == 2
    a = tmp_path / "a"
    assert np.abs(_pixels(a / "a_red_fox_w1-0_seed0.png") - _pixels(a / "a_red_fox_w0-1_seed0.png")).mean() > 1
    assert np.abs(_pixels(a / "a_red_fox_w1-0_seed0.png") - _pixels(a / "a_red_fox_w1-0_seed5.png")).mean() > 1
    again = run([*args[:10], "--out", tmp_path / "b", *FAST])  # the same (w, seed) alone in its batch
    assert again.exit_code == 0, again.output
    assert np.array_equal(_pixels(tmp_path / "b" / "a_red_fox_w0.75-0.25_seed0.png"),
                          _pixels(a / "a_red_fox_w0.75-0.25_seed0.png"))


def test_sample_cli_fixed_weights_file_needs_no_weights(sd3, tmp_path):
    base = ["--backbone", "sd3", "--base", sd3["base"], "--checkpoint", sd3["fixed"], "--prompt", "a fox", *FAST]
    result = run([*base, "--out", tmp_path])
    assert result.exit_code == 0, result.output
    assert [Path(p).name for p in result.stdout.split()] == ["a_fox_w0.7-0.3_seed0.png"]
    assert read_png_metadata(tmp_path / "a_fox_w0.7-0.3_seed0.png")["kind"] == FIXED_WEIGHTS
    refused = run([*base, "--out", tmp_path, "--weights", "0.5,0.5"])
    assert refused.exit_code == 2 and "fixed-weights baseline" in refused.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "0.2,0.3,0.5"], "Got 3 weights but the model has 2 rewards (brightness, saturation)"),
        (["--weights", "-1,2"], "Weights must be non-negative"),
        (["--weights", "nan,1"], "Weights must be finite"),
        (["--weights", "0,0"], "must not all be zero"),
        (["--weights", "a,b"], "not a comma-separated list of numbers"),
        ([], "Pass --weights with one weight per reward (brightness, saturation)"),
        (["--sweep", "1"], "--sweep: n must be an int >= 2"),
        (["--weights", "1,0", "--source", __file__], "takes no source image; drop --source"),
        (["--weights", "1,0", "--backbone", "toy"], "was trained for backbone 'sd3', not 'toy'"),
        (["--weights", "1,0", "--num-frames", "3"], "makes images; drop --num-frames"),
    ],
)
def test_sample_cli_rejects_bad_input_before_loading_anything(sd3, tmp_path, extra, message):
    # --base does not exist: each error must come before the model would load
    result = run(["--backbone", "sd3", "--base", tmp_path / "missing", "--checkpoint", sd3["slider"], "--prompt",
                  "a fox", "--out", tmp_path / "out", *FAST, *extra])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_sample_cli_refuses_a_checkpoint_for_another_backbone(sd3, tmp_path):
    result = run(["--backbone", "sd3", "--checkpoint", sd3["toy"], "--prompt", "a fox", "--weights", "1,0",
                  "--out", tmp_path])
    assert result.exit_code == 2
    assert "trained for backbone 'toy', not 'sd3'" in result.output and "--backbone toy" in result.output


def test_sample_cli_edits_a_source_image_with_fluxkontext(tmp_path):
    base = save_tiny_base("fluxkontext", tmp_path / "base")
    checkpoint = make_slider_file("fluxkontext", tmp_path / "kontext.safetensors")
    source = tmp_path / "source.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(source)
    args = ["--backbone", "fluxkontext", "--base", base, "--checkpoint", checkpoint, "--prompt", "make it blue",
            "--weights", "1,0", "--weights", "0,1", "--out", tmp_path / "out", *FAST]
    missing = run(args)
    assert missing.exit_code == 2 and "pass --source IMAGE" in missing.output
    result = run([*args, "--source", source])
    assert result.exit_code == 0, result.output
    first, second = (tmp_path / "out" / f"make_it_blue_{w}_seed0.png" for w in ("w1-0", "w0-1"))
    assert load_sample(first).shape == (32, 32, 3) and np.abs(_pixels(first) - _pixels(second)).mean() > 1
    assert read_png_metadata(first)["source"] == str(source)


@pytest.mark.parametrize("video_format", ["mp4", "gif"])
def test_sample_cli_writes_videos_for_ltx2(tmp_path, video_format):
    base = save_tiny_base("ltx2", tmp_path / "base")
    checkpoint = make_slider_file("ltx2", tmp_path / "video.safetensors")
    result = run(["--backbone", "ltx2", "--base", base, "--checkpoint", checkpoint, "--prompt", "a wave",
                  "--weights", "0.5,0.5", "--num-frames", "5", "--video-format", video_format, "--out", tmp_path,
                  *FAST])
    assert result.exit_code == 0, result.output
    path = tmp_path / f"a_wave_w0.5-0.5_seed0.{video_format}"
    assert result.stdout.split() == [str(path)]
    assert load_sample(path).shape == (5, 32, 32, 3)
    assert '"weights": [0.5, 0.5]' in Path(f"{path}.json").read_text()


@pytest.mark.skipif(not (TOY_BASE_DIR / "toy_base.json").is_file(),
                    reason="the shipped toy base (pslider_core/toy/assets/base) is not built in this checkout")
def test_sample_cli_toy_backbone_with_the_shipped_base(tmp_path):
    pipe = get_backbone("toy").load_pipeline(None)
    checkpoint = make_slider_file("toy", tmp_path / "toy.safetensors", pipe=pipe)
    result = run(["--backbone", "toy", "--checkpoint", checkpoint, "--prompt", "a red circle", "--sweep", "2",
                  "--out", tmp_path / "out", *FAST])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.split()) == 2


@pytest.mark.skipif(not (TOY_BASE_DIR / "toy_base.json").is_file(),
                    reason="the shipped toy base (pslider_core/toy/assets/base) is not built in this checkout")
def test_without_base_the_folder_recorded_in_the_file_is_loaded_while_it_exists(tmp_path):
    """A file trained on a local base (e.g. the tiny preset's saved base) samples without --base; once that folder
    is gone, the backbone's default base is loaded, and stderr says which it took."""
    base = Path(shutil.copytree(TOY_BASE_DIR, tmp_path / "base"))
    checkpoint = make_slider_file("toy", tmp_path / "toy.safetensors", pipe=get_backbone("toy").load_pipeline(base),
                                  base_model=str(base))
    args = ["--backbone", "toy", "--checkpoint", checkpoint, "--prompt", "a red circle", "--weights", "1,0", *FAST]
    recorded = run([*args, "--out", tmp_path / "recorded"])
    assert recorded.exit_code == 0, recorded.output
    assert f"--base not given: loading {base}, the base recorded in the checkpoint." in recorded.stderr
    assert read_png_metadata(recorded.stdout.strip())["base"] == str(base)
    shutil.rmtree(base)
    default = run([*args, "--out", tmp_path / "default"])
    assert default.exit_code == 0, default.output
    assert f"records base {str(base)!r}, which is no folder here; loading the backbone's default" in default.stderr
    assert read_png_metadata(default.stdout.strip())["base"] == str(TOY_BASE_DIR)


def test_sample_cli_toy_backbone_with_a_saved_tiny_base(tmp_path):
    base = tmp_path / "base"
    get_backbone("toy").tiny_pipeline(seed=0).save_pretrained(base)
    checkpoint = make_slider_file("toy", tmp_path / "toy.safetensors")
    result = run(["--backbone", "toy", "--base", base, "--checkpoint", checkpoint, "--prompt", "a red circle",
                  "--sweep", "2", "--out", tmp_path / "out", *FAST])
    assert result.exit_code == 0, result.output
    assert sorted(Path(p).name for p in result.stdout.split()) == [
        "a_red_circle_w0-1_seed0.png", "a_red_circle_w1-0_seed0.png"]


def test_num_threads_option_sets_torch_threads_and_rejects_zero(sd3, tmp_path):
    args = ["--backbone", "sd3", "--base", sd3["base"], "--checkpoint", sd3["slider"], "--prompt", "a red fox",
            "--weights", "1,0", *FAST, "--out", tmp_path]
    before = torch.get_num_threads()
    try:
        result = run([*args, "--num-threads", "2"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    bad = run([*args, "--num-threads", "0"])
    assert bad.exit_code == 2 and "must be at least 1" in bad.output
