"""The README's demo (scripts/demo.sh, twice in a row) and the toy benchmark run end to end, in seconds-long
versions, on the shipped toy base."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pslider_core.file_format import load_pareto_slider
from pslider_core.toy.dataset import heldout_prompts, train_prompts
from trainer.config import read_toml, resolve_config, to_toml

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(epochs=1, prompts_per_epoch=2, images_per_prompt=4, slots_per_prompt=2, num_steps=2, train_timesteps=1)


@pytest.fixture(scope="module")
def pareto_toy():
    """benchmarks/pareto_toy.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("pareto_toy", ROOT / "benchmarks" / "pareto_toy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pareto_toy"] = module  # pslider-eval imports the judge scorer 'pareto_toy:toy_valid' by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("pareto_toy", None)


def _is_png(path: Path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and min(image.size) > 0


def _flags(settings: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())


def test_demo_script_runs_twice_in_a_row(tmp_path: Path) -> None:
    """The README's main command, as a user runs it, twice in the same folder: the second run says that it starts
    afresh and does, with the seconds-long settings the script documents (PSLIDER_TRAIN_ARGS / PSLIDER_EVAL_ARGS)."""
    out = tmp_path / "demo"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PSLIDER_TRAIN_ARGS": f"{_flags(TINY)} --no-progress",
           "PSLIDER_EVAL_ARGS": "--grid 3 --seeds 0 --no-progress"}
    runs = [subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), str(out)], env=env, capture_output=True,
                           text=True, timeout=600, check=False) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert f"== done: {out}/toy_slider.safetensors" in run.stdout
        assert "the base recorded in the checkpoint" in run.stderr  # pslider-eval took the file's base
    assert "earlier demo run" not in runs[0].stdout
    assert (f"== {out}/ holds an earlier demo run: removing its toy_slider.safetensors toy_slider.checkpoints "
            "toy_slider.logs eval front.png grid.png to start afresh") in runs[1].stdout
    points = 3 * len(heldout_prompts()) + len(heldout_prompts())  # the slider's grid, and the base model
    assert f"{points} samples scored now, 0 already in" in runs[1].stdout  # nothing reused from the first run
    assert (out / "train.txt").read_text().split("\n")[:-1] == train_prompts()
    assert (out / "heldout.txt").read_text().split("\n")[:-1] == heldout_prompts()
    assert load_pareto_slider(out / "toy_slider.safetensors", "toy").reward_names == ("toy_color", "toy_sketch")
    assert _is_png(out / "front.png") and _is_png(out / "grid.png")


def test_benchmark_pipeline_end_to_end(tmp_path: Path, pareto_toy) -> None:
    torch.set_num_threads(1)
    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(resolve_config(read_toml(pareto_toy.CONFIG), dict(TINY, progress=False))))
    results, front = tmp_path / "RESULTS.md", tmp_path / "front.png"
    run = pareto_toy.main(["--steps", "1", "--seeds", "0", "--eval-seeds", "1", "--grid", "3", "--config", str(config),
                           "--out", str(tmp_path / "bench"), "--results", str(results), "--front", str(front)])
    text = results.read_text()
    rows = [line.split("|")[1].strip() for line in run["table"].splitlines()[2:]]
    fixed = [f"fixed_{a:.2f}-{1 - a:.2f}" for a in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert rows == ["slider", "soup", *fixed, "base", "fixed (union of K)"]
    assert [line.split("|")[1:3] for line in run["seed_table"].splitlines()[2:]] == [[" 0 ", " slider "],
                                                                                   [" 0 ", " soup "]]
    found = run["checks"]
    assert found["compute_fraction"] == pytest.approx(0.2) and found["soup_compute_fraction"] == pytest.approx(0.4)
    assert 0 <= found["base_valid"] <= 1
    assert all(0 <= share <= 1 for share in found["covered"]) and len(found["extent"]) == 1
    seed = run["per_seed"][0]
    assert set(seed["slider"]["valid"]) == set(seed["soup"]["valid"]) == {"1.0;0.0", "0.5;0.5", "0.0;1.0"}
    assert all(len(seed[name]["valid"]) == 1 for name in fixed)
    # the soup holds the corner runs themselves: at its ends it is each of them, sample for sample
    means = pareto_toy.read_means(tmp_path / "bench" / "seed0" / "eval" / "scores.csv")
    soup = means["soup_fixed_1.00-0.00+fixed_0.00-1.00"]
    assert soup["1.0;0.0"] == means["fixed_1.00-0.00"]["1.0;0.0"]
    assert soup["0.0;1.0"] == means["fixed_0.00-1.00"]["0.0;1.0"]
    assert seed["soup"]["covered"] >= 0.4  # the corner runs are 2 of the 5 fixed points
    for reward, corner in (("toy_color", "fixed_1.00-0.00"), ("toy_sketch", "fixed_0.00-1.00")):
        assert seed["soup"]["extent"][reward] >= seed[corner]["extent"][reward]
        assert seed["soup"]["extent_ratio"][reward] == pytest.approx(
            seed["soup"]["extent"][reward] / seed["fixed (union of K)"]["extent"][reward])
    assert seed["slider"]["hv_vs_soup"] is None or seed["slider"]["hv_vs_soup"] >= 0
    for label in ("worst end's extent ratio", "weakly dominated (tolerance 0.01)", "hypervolume slider / soup",
                  "worst Spearman", "valid-rate gap"):
        assert re.search(rf"^- [^\n]*{re.escape(label)}[^\n]*: (met|MISSED by \d)", text, re.M), label
    assert _is_png(front) and "Command: `python benchmarks/pareto_toy.py" in text

    # a second benchmark reuses those fixed-weights runs and trains only its slider, from its own config
    slider_config = tmp_path / "slider.toml"
    slider_config.write_text(to_toml(resolve_config(read_toml(config), {"advantage_std": "pooled"})))
    again = ["--steps", "1", "--seeds", "0", "--eval-seeds", "1", "--grid", "3", "--config", str(config),
             "--fixed-from", str(tmp_path / "bench"), "--out", str(tmp_path / "again")]
    second = pareto_toy.main([*again, "--slider-config", str(slider_config)])
    reused = second["per_seed"][0]
    for name in fixed:
        assert (tmp_path / "again" / "seed0" / f"{name}.safetensors").read_bytes() == (
            tmp_path / "bench" / "seed0" / f"{name}.safetensors").read_bytes()
        assert reused[name]["wall"] == seed[name]["wall"] and reused[name]["extent"] == seed[name]["extent"]
    slider = load_pareto_slider(tmp_path / "again" / "seed0" / "slider.safetensors", "toy")
    assert slider.training["config"]["advantage_std"] == "pooled"
    with pytest.raises(SystemExit, match=r"\(epochs: file 1, now 2\)\. Pass a --fixed-from folder of the same rewards"):
        pareto_toy.main([*again[:1], "2", *again[2:]])
    # any setting that changes the fixed runs' math is checked, not only the ones a benchmark passes
    other = tmp_path / "other.toml"
    steps = read_toml(config)["optimizer_steps_per_epoch"]
    other.write_text(to_toml(resolve_config(read_toml(config), {"optimizer_steps_per_epoch": steps + 1})))
    with pytest.raises(SystemExit, match=rf"\(optimizer_steps_per_epoch: file {steps}, now {steps + 1}\)"):
        pareto_toy.main([*again[:-6], "--config", str(other), *again[-4:]])


def test_controls_benchmark_end_to_end(tmp_path: Path, pareto_toy) -> None:
    """benchmarks/controls_toy.py in seconds: every table row, timings, the pictures."""
    spec = importlib.util.spec_from_file_location("controls_toy", ROOT / "benchmarks" / "controls_toy.py")
    controls_toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(controls_toy)
    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(resolve_config(read_toml(pareto_toy.CONFIG), dict(TINY, progress=False))))
    results = tmp_path / "controls.md"
    run = controls_toy.main(["--steps", "1", "--seeds", "0", "--eval-seeds", "1", "--config", str(config),
                             "--out", str(tmp_path / "bench"), "--results", str(results),
                             "--pictures", str(tmp_path / "pictures")])
    seed = run["per_seed"][0]
    assert len(seed["guidance"]) == 2 * (1 + 3 * 2)  # 2 ends x (s = 1, then 3 scales x 2 sources)
    assert all(0 <= row["valid"] <= 1 and row["seconds"] > 0 for row in seed["guidance"].values())
    assert {f"single {end}" for end in controls_toy.ENDS} <= set(seed["regional"])
    assert len([key for key in seed["regional"] if key.startswith("in ")]) == 4
    assert set(seed["blend"]) == {"velocity mix 0.5 of (0, 1) and (1, 0)", "w = (0.5, 0.5)"}
    text = results.read_text()
    assert "### Preference guidance" in text and "### Regional weights" in text and "### A blend" in text
    assert text.count("\n| (0.0, 1.0) |") == 7 and "| fixed-weights (0, 1) run |" in text
    assert _is_png(tmp_path / "pictures" / "controls_guidance.png")
    assert _is_png(tmp_path / "pictures" / "controls_regional.png")
