"""`pslider-eval` end to end on tiny real models: scores.csv, resuming, summary.json, front.png, grid.png, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from test_sample_cli import make_slider_file, save_tiny_base

from pslider_core.generation import FIXED_WEIGHTS, load_sample
from pslider_core.rewards import RewardBatch, get_reward
from pslider_core.toy import BASE_DIR as TOY_BASE_DIR
from trainer.eval_cli import main as eval_main

FAST = ["--steps", "2", "--height", "32", "--width", "32", "--batch-size", "4", "--device", "cpu", "--no-progress"]
GRID = [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
PROMPTS = ["a red fox", "a blue bird"]


@pytest.fixture(scope="module")
def sd3(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    fixed = {"method": FIXED_WEIGHTS, "fixed_weights": [0.7, 0.3], "objective": "nft"}
    return {
        "base": save_tiny_base("sd3", root / "base"),
        "slider": make_slider_file("sd3", root / "slider.safetensors"),
        "fixed": make_slider_file("sd3", root / "fixed07.safetensors", training=fixed, seed=2),
        "toy": make_slider_file("toy", root / "toy.safetensors"),
        "prompts": prompts,
    }


def run(args: list) -> Result:
    return CliRunner().invoke(eval_main, [str(a) for a in args])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _not_blank(path: Path) -> np.ndarray:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 5 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, f"{path} looks blank"
    return pixels


def test_eval_end_to_end_resumes_and_summarises(sd3, tmp_path):
    out = tmp_path / "eval"
    common = ["--backbone", "sd3", "--base", sd3["base"], "--checkpoint", sd3["slider"], "--checkpoint", sd3["fixed"],
              "--include-base", "--prompts", sd3["prompts"], "--judges", "colorfulness", "--grid", "3", "--out", out,
              *FAST]
    first = run([*common, "--seeds", "0"])  # --rewards left out: the checkpoints' own
    assert first.exit_code == 0, first.output
    assert "10 samples scored now, 0 already" in first.output  # (3 slider points + fixed + base) x 2 prompts
    second = run([*common, "--seeds", "0,1", "--rewards", "brightness,saturation"])
    assert second.exit_code == 0, second.output
    assert "10 samples scored now, 10 already" in second.output

    rows = _rows(out / "scores.csv")
    keys = [(r["method"], r["weights"], r["prompt"], r["seed"], r["reward"]) for r in rows]
    points = {"slider": [";".join(map(repr, w)) for w in GRID], "fixed07": ["0.7;0.3"], "base": [""]}
    expected = {(m, w, p, s, r) for m, ws in points.items() for w in ws for p in PROMPTS for s in ("0", "1")
                for r in ("brightness", "saturation", "colorfulness")}
    assert len(keys) == len(set(keys)) == 60 and set(keys) == expected

    before = (out / "scores.csv").read_bytes()
    third = run([*common, "--seeds", "0,1"])
    assert third.exit_code == 0, third.output
    assert "0 samples scored now, 20 already" in third.output
    assert (out / "scores.csv").read_bytes() == before

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rewards"] == ["brightness", "saturation"]
    assert {m: e["kind"] for m, e in summary["methods"].items()} == {
        "slider": "pareto_slider", "fixed07": "fixed_weights", "base": "base"}
    for entry in summary["methods"].values():
        assert isinstance(entry["hypervolume"], float) and entry["hypervolume"] >= 0
    assert summary["methods"]["slider"]["num_points"] == 3 and summary["methods"]["slider"]["hypervolume"] > 0
    assert "hv_ratio_vs_fixed_union" in summary["methods"]["slider"]
    assert summary["methods"]["slider"]["controllability"]["brightness"]["comparisons"] == 2
    assert summary["judges"]["rewards"] == ["colorfulness"] and set(summary["judges"]["methods"]) == set(points)
    assert summary["run"]["seeds"] == [0, 1] and summary["run"]["num_steps"] == 2
    means = summary["methods"]["base"]["points"][0]["means"]
    base_values = [float(r["value"]) for r in rows if r["method"] == "base" and r["reward"] == "brightness"]
    assert means["brightness"] == pytest.approx(np.mean(base_values))

    # the saved first-seed sample is the one that was scored (up to 8-bit rounding)
    sample = out / "samples" / "slider"
    files = sorted(sample.glob("*_w1-0_seed0.png"))
    assert len(files) == 2 and not list(sample.glob("*seed1.png"))
    image = torch.from_numpy(load_sample(files[0])).permute(2, 0, 1).float()[None] / 255
    scored = {float(r["value"]) for r in rows if r["method"] == "slider" and r["weights"] == "1.0;0.0"
              and r["seed"] == "0" and r["reward"] == "brightness"}
    value = float(get_reward("brightness")(RewardBatch(image, ["x"]))[0])
    assert min(abs(value - v) for v in scored) < 3e-3
    first_w, last_w = (load_sample(next(sample.glob(f"*_{w}_seed0.png"))).astype(float) for w in ("w1-0", "w0-1"))
    assert np.abs(first_w - last_w).mean() > 1

    front = _not_blank(out / "front.png")
    assert front.shape == (450, 450, 3)
    grid = _not_blank(out / "grid.png")
    # contact sheet: 200 px labels + 4 px pad, 3 columns (weights) and 2 rows (prompts) of 128 px cells + 4 px pad
    assert grid.shape == (32 + 4 + 2 * 132, 200 + 4 + 3 * 132, 3)
    assert "HV" in third.output and "Held-out judges" in third.output


def test_eval_judge_controllability_and_reference_point(sd3, tmp_path):
    result = run(["--backbone", "sd3", "--base", sd3["base"], "--checkpoint", sd3["slider"], "--prompts",
                  sd3["prompts"], "--judges", "colorfulness,sharpness", "--judge-components", "0,-", "--grid", "2",
                  "--ref", "0,0", "--out", tmp_path, *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reference"] == [0.0, 0.0] and summary["reference_given"]
    (x1, y1), (x2, y2) = sorted(
        (p["means"]["brightness"], p["means"]["saturation"]) for p in summary["methods"]["slider"]["points"]
    )
    union_of_boxes_from_origin = x2 * y2 + x1 * max(0.0, y1 - y2)
    assert summary["methods"]["slider"]["hypervolume"] == pytest.approx(union_of_boxes_from_origin)
    control = summary["judges"]["methods"]["slider"]["controllability"]
    assert set(control) == {"colorfulness"} and control["colorfulness"]["weight_component"] == 0
    _not_blank(tmp_path / "front_judges.png")


def _error(args: list, tmp_path: Path) -> str:
    result = run(args)
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


def test_eval_rejects_bad_input_before_loading_anything(sd3, tmp_path):
    missing = tmp_path / "no-base"  # never loaded: every error comes first
    common = ["--backbone", "sd3", "--base", missing, "--prompts", sd3["prompts"], "--out", tmp_path / "o", *FAST]
    slider = ["--checkpoint", sd3["slider"]]
    assert "trained for backbone 'toy', not 'sd3'" in _error([*common, "--checkpoint", sd3["toy"]], tmp_path)
    text = _error([*common, *slider, "--rewards", "saturation,brightness"], tmp_path)
    assert "trained on rewards ['brightness', 'saturation'] but --rewards gives ['saturation', 'brightness']" in text
    assert "--ref needs 2 finite numbers" in _error([*common, *slider, "--ref", "0.1"], tmp_path)
    assert "--ref needs 2 finite numbers" in _error([*common, *slider, "--ref", "0,nan"], tmp_path)
    assert "Nothing to evaluate" in _error(common, tmp_path)
    assert "Pass --rewards" in _error([*common, "--include-base"], tmp_path)
    assert "--judges repeats training rewards ['brightness']" in _error([*common, *slider, "--judges", "brightness"],
                                                                        tmp_path)
    assert "unknown reward 'nope'" in _error([*common, *slider, "--judges", "nope"], tmp_path)
    assert "--seeds must be distinct integers >= 0" in _error([*common, *slider, "--seeds", "0,0"], tmp_path)
    assert "--grid: n must be an int >= 2" in _error([*common, *slider, "--grid", "1"], tmp_path)
    assert "--judge-components needs one entry per judge" in _error(
        [*common, *slider, "--judges", "sharpness", "--judge-components", "0,1"], tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    text = _error(["--backbone", "sd3", "--base", missing, "--prompts", empty, *slider, "--out", tmp_path], tmp_path)
    assert "holds no prompt" in text
    twice = tmp_path / "twice.txt"
    twice.write_text("a fox\na fox\n")
    text = _error(["--backbone", "sd3", "--base", missing, "--prompts", twice, *slider, "--out", tmp_path], tmp_path)
    assert "repeats ['a fox']" in text
    assert not (tmp_path / "o").exists()


def test_eval_refuses_to_mix_runs_in_one_folder(sd3, tmp_path):
    common = ["--backbone", "sd3", "--base", sd3["base"], "--checkpoint", sd3["slider"], "--prompts", sd3["prompts"],
              "--grid", "2", "--out", tmp_path, *FAST]
    assert run([*common, "--seeds", "0"]).exit_code == 0
    before = (tmp_path / "scores.csv").read_bytes()
    text = _error([*common, "--seeds", "1"], tmp_path)  # seed 0's scores would be summarised with seed 1's
    assert "holds 4 samples this run does not plan" in text and "use a new --out" in text
    assert (tmp_path / "scores.csv").read_bytes() == before


def test_eval_video_backbone_draws_strips(tmp_path):
    base = save_tiny_base("ltx2", tmp_path / "base")
    checkpoint = make_slider_file("ltx2", tmp_path / "video.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a wave\n")
    result = run(["--backbone", "ltx2", "--base", base, "--checkpoint", checkpoint, "--prompts", prompts,
                  "--grid", "2", "--num-frames", "5", "--video-format", "gif", "--out", tmp_path / "out", *FAST])
    assert result.exit_code == 0, result.output
    strips = list((tmp_path / "out" / "strips" / "video").glob("*.png"))
    assert len(strips) == 1
    _not_blank(strips[0])
    _not_blank(tmp_path / "out" / "grid.png")
    assert len(_rows(tmp_path / "out" / "scores.csv")) == 2 * 2  # 2 weights x 2 rewards, 1 prompt and seed


def test_eval_editing_backbone_with_sources_and_a_lower_is_better_judge(tmp_path):
    base = save_tiny_base("fluxkontext", tmp_path / "base")
    checkpoint = make_slider_file("fluxkontext", tmp_path / "edit.safetensors")
    rng = np.random.default_rng(0)
    for name in ("cat.png", "dog.png"):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    prompts = tmp_path / "edits.jsonl"
    prompts.write_text('{"prompt": "make it blue", "image": "cat.png"}\n{"prompt": "make it blue", "image": "dog.png"}\n')
    result = run(["--backbone", "fluxkontext", "--base", base, "--checkpoint", checkpoint, "--prompts", prompts,
                  "--judges", "mse", "--grid", "2", "--out", tmp_path / "out", *FAST])
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "out" / "scores.csv")
    assert {r["prompt"] for r in rows} == {"make it blue [cat.png]", "make it blue [dog.png]"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["lower_is_better_negated"] == ["mse"]  # maximised like every reward: -mse
    point = summary["judges"]["methods"]["edit"]["points"][0]
    errors = [float(r["value"]) for r in rows if r["reward"] == "mse" and r["weights"] == "1.0;0.0"]
    assert min(errors) > 0 and point["means"]["mse"] == pytest.approx(-np.mean(errors))


@pytest.mark.parametrize("shipped", [False, True], ids=["saved-tiny-base", "shipped-base"])
def test_eval_toy_backbone(tmp_path, shipped):
    from pslider_core import get_backbone

    if shipped and not (TOY_BASE_DIR / "toy_base.json").is_file():
        pytest.skip("the shipped toy base (pslider_core/toy/assets/base) is not built in this checkout")
    adapter = get_backbone("toy")
    base = []
    if shipped:
        pipe = adapter.load_pipeline(None)
    else:
        pipe = adapter.tiny_pipeline(seed=0)
        pipe.save_pretrained(tmp_path / "base")
        base = ["--base", tmp_path / "base"]
    checkpoint = make_slider_file("toy", tmp_path / "toy.safetensors", pipe=pipe)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    result = run(["--backbone", "toy", *base, "--checkpoint", checkpoint, "--include-base", "--prompts", prompts,
                  "--grid", "3", "--out", tmp_path / "out", *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["methods"]) == {"toy", "base"}
    assert len(_rows(tmp_path / "out" / "scores.csv")) == (3 + 1) * 2 * 2


def test_checkpoints_recording_different_base_folders_need_an_explicit_base(tmp_path):
    """Without --base, pslider-eval loads the base the files record; two different ones are refused before any
    model loads, naming both."""
    bases = [save_tiny_base("toy", tmp_path / name) for name in ("base_a", "base_b")]
    files = [make_slider_file("toy", tmp_path / f"{b.name}.safetensors", base_model=str(b)) for b in bases]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    result = run(["--backbone", "toy", "--checkpoint", files[0], "--checkpoint", files[1], "--prompts", prompts,
                  "--grid", "2", "--out", tmp_path / "out", *FAST])
    assert result.exit_code == 2
    assert f"trained on different base models ({bases[0]}, {bases[1]}); pass --base" in result.output
