"""LoRA soups on tiny SD3 models: exact at the corners, the averaged delta-W at (0.5, 0.5), checked before loading,
and through `pslider-eval --soup` (scores.csv, summary.json, resume) and `pslider-sample --soup`."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_sample_cli import make_slider_file, save_tiny_base

from pslider_core import ParetoSlider, get_backbone
from pslider_core.file_format import ParetoSliderFileError, load_pareto_slider
from pslider_core.generation import FIXED_WEIGHTS, generate, read_png_metadata
from pslider_core.lora import lora_modules
from pslider_core.soup import SOUP, LoraSoup, describe_soup
from trainer.eval_cli import main as eval_main
from trainer.sample_cli import main as sample_main

FAST = ["--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"]
DRAW = {"seeds": [0, 1], "num_steps": 2, "height": 32, "width": 32}
PROMPTS = ["a red fox", "a blue bird"]


def _fixed(weights: list[float]) -> dict:
    return {"method": FIXED_WEIGHTS, "fixed_weights": weights, "objective": "nft"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("soup")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return {
        "base": save_tiny_base("sd3", root / "base"),
        "a": make_slider_file("sd3", root / "fixed_a.safetensors", training=_fixed([1.0, 0.0]), seed=2),
        "b": make_slider_file("sd3", root / "fixed_b.safetensors", training=_fixed([0.0, 1.0]), seed=3),
        "slider": make_slider_file("sd3", root / "slider.safetensors"),
        "prompts": prompts,
        "root": root,
    }


@pytest.fixture(scope="module")
def loaded(files):
    adapter = get_backbone("sd3")
    pipe = adapter.load_pipeline(files["base"])
    with warnings.catch_warnings():  # peft warns when a second adapter joins the first: that is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        alone = ParetoSlider.from_file(files["a"], pipe.transformer, "sd3", adapter_name="alone")
        soup = LoraSoup.load(describe_soup([files["a"], files["b"]], "sd3"), pipe.transformer)
    return adapter, pipe, alone, soup


def test_soup_at_a_corner_is_that_file_alone_exactly(loaded):
    adapter, pipe, alone, soup = loaded
    expected = generate(adapter, pipe, PROMPTS, slider=alone, **DRAW)
    assert torch.equal(generate(adapter, pipe, PROMPTS, lora_scales=soup.scales([1, 0]), **DRAW), expected)
    assert torch.equal(generate(adapter, pipe, PROMPTS, lora_scales=soup.scales([3, 0]), **DRAW), expected)
    other = generate(adapter, pipe, PROMPTS, lora_scales=soup.scales([0, 1]), **DRAW)
    assert (other - expected).abs().mean() > 1e-3


def test_soup_at_the_middle_is_the_averaged_delta_w(loaded, files):
    """Against a plain base model whose Linear weights have 0.5 B_a A_a + 0.5 B_b A_b merged in (no peft at all)."""
    adapter, pipe, _, soup = loaded
    merged = adapter.load_pipeline(files["base"])
    for path in (files["a"], files["b"]):
        data = load_pareto_slider(path, "sd3")
        for module, (a, b) in lora_modules(data.lora_state, adapter.lora_key_prefix).items():
            with torch.no_grad():
                merged.transformer.get_submodule(module).weight += 0.5 * b @ a  # B carries the LoRA's scale
    blended = generate(adapter, pipe, PROMPTS, lora_scales=soup.scales([0.5, 0.5]), **DRAW)
    torch.testing.assert_close(blended, generate(adapter, merged, PROMPTS, **DRAW), atol=1e-5, rtol=0)


def test_scales_are_restored_after_a_soup(loaded):
    adapter, pipe, alone, soup = loaded
    before = generate(adapter, pipe, PROMPTS, slider=alone, **DRAW)
    generate(adapter, pipe, PROMPTS, lora_scales=soup.scales([0.25, 0.75]), **DRAW)
    assert torch.equal(generate(adapter, pipe, PROMPTS, slider=alone, **DRAW), before)
    with pytest.raises(ValueError, match="either a slider or lora_scales"):
        generate(adapter, pipe, PROMPTS, slider=alone, lora_scales=soup.scales([1, 0]), **DRAW)


@pytest.mark.parametrize(("lambdas", "message"), [
    ([1.0], "Got 1 soup weights for 2 files"),
    ([float("nan"), 1.0], "finite"),
    ([-1.0, 2.0], "non-negative"),
    ([0.0, 0.0], "not all be zero"),
])
def test_soup_weights_are_checked(files, lambdas, message):
    with pytest.raises(ValueError, match=message):
        describe_soup([files["a"], files["b"]]).weights(lambdas)


def test_soup_weights_go_on_the_simplex(files):
    assert describe_soup([files["a"], files["b"]]).weights([3, 1]) == (0.75, 0.25)


def test_soup_files_are_checked_before_loading(files, tmp_path):
    no_lora = ParetoSlider.attach(get_backbone("sd3").tiny_pipeline(seed=0).transformer, "sd3",
                                  ["brightness", "saturation"]).save(tmp_path / "plain.safetensors", _fixed([1, 0]))
    other_base = make_slider_file("sd3", tmp_path / "other.safetensors", training=_fixed([0, 1]),
                                  base_model="someone/else")
    cases = [
        ([files["a"]], "blends two or more files, got 1"),
        ([files["a"], files["a"]], "lists fixed_a.safetensors twice"),
        ([files["a"], files["slider"]], "slider.safetensors is a ParetoSlider"),
        ([files["a"], no_lora], "plain.safetensors holds no LoRA"),
        ([files["a"], other_base], "other.safetensors on sd3 base 'someone/else'"),
    ]
    for paths, message in cases:
        with pytest.raises(ParetoSliderFileError, match=message):
            describe_soup(paths, "sd3")
    with pytest.raises(ParetoSliderFileError, match="backbone"):
        describe_soup([files["a"], files["b"]], "toy")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_eval_soup_is_a_method_that_resumes(files, tmp_path):
    soup = f"{files['a']},{files['b']}"
    args = ["--backbone", "sd3", "--base", files["base"], "--checkpoint", files["slider"], "--checkpoint", files["a"],
            "--checkpoint", files["b"], "--soup", soup, "--prompts", files["prompts"], "--grid", "3", "--seeds", "0",
            "--out", tmp_path, "--batch-size", "4", "--no-progress", *FAST]
    first = CliRunner().invoke(eval_main, [str(a) for a in args])
    assert first.exit_code == 0, first.output
    assert "16 samples scored now, 0 already" in first.output  # (3 slider + 1 + 1 fixed + 3 soup points) x 2 prompts
    name = "soup_fixed_a+fixed_b"
    rows = [r for r in _rows(tmp_path / "scores.csv") if r["method"] == name]
    assert {r["weights"] for r in rows} == {"1.0;0.0", "0.5;0.5", "0.0;1.0"} and len(rows) == 3 * 2 * 2
    corner = {(r["prompt"], r["reward"]): r["value"] for r in rows if r["weights"] == "1.0;0.0"}
    fixed_a = {(r["prompt"], r["reward"]): r["value"] for r in _rows(tmp_path / "scores.csv")
               if r["method"] == "fixed_a"}
    assert corner == fixed_a  # the soup's (1, 0) is fixed_a itself
    summary = json.loads((tmp_path / "summary.json").read_text())
    entry = summary["methods"][name]
    assert entry["kind"] == SOUP and entry["num_points"] == 3
    assert entry["vs_fixed_union"]["dominated_share"] == 1.0  # it holds both fixed points
    assert entry["vs_fixed_union"]["extent"] == {"brightness": 1.0, "saturation": 1.0}
    assert set(summary["methods"]["slider"]["vs_soups"]) == {name}
    assert summary["run"]["soups"] == {name: [str(files["a"]), str(files["b"])]}
    again = CliRunner().invoke(eval_main, [str(a) for a in args])
    assert again.exit_code == 0, again.output
    assert "0 samples scored now, 16 already" in again.output


def test_eval_soup_needs_one_file_per_reward(files, tmp_path):
    third = make_slider_file("sd3", tmp_path / "fixed_c.safetensors", training=_fixed([0.5, 0.5]), seed=4)
    args = ["--backbone", "sd3", "--soup", f"{files['a']},{files['b']},{third}", "--prompts", files["prompts"],
            "--out", tmp_path / "out", *FAST]
    result = CliRunner().invoke(eval_main, [str(a) for a in args])
    assert result.exit_code == 2 and "one file per training reward (2: brightness, saturation)" in result.output


def test_sample_soup_writes_the_strengths_it_drew(files, tmp_path):
    args = ["--backbone", "sd3", "--base", files["base"], "--soup", f"{files['a']},{files['b']}", "--prompt",
            "a red fox", "--weights", "3,1", "--seed", "0", "--seed", "1", "--out", tmp_path, *FAST]
    result = CliRunner().invoke(sample_main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert sorted(Path(p).name for p in result.stdout.split()) == ["a_red_fox_w0.75-0.25_seed0.png",
                                                                  "a_red_fox_w0.75-0.25_seed1.png"]
    meta = read_png_metadata(tmp_path / "a_red_fox_w0.75-0.25_seed1.png")
    assert meta["kind"] == SOUP and meta["weights"] == [0.75, 0.25]
    assert meta["soup"] == [str(files["a"]), str(files["b"])] and "checkpoint" not in meta
    both = CliRunner().invoke(sample_main, [str(a) for a in [*args, "--checkpoint", files["a"]]])
    assert both.exit_code == 2 and "one of the two" in both.output
    short = CliRunner().invoke(sample_main, [str(a) for a in [*args[:6], "--prompt", "a fox", "--out", tmp_path,
                                                               *FAST]])
    assert short.exit_code == 2 and "one strength per soup file (fixed_a.safetensors, fixed_b.safetensors)" in \
        short.output
