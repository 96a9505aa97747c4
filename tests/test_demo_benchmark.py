"""The README's demo pieces and the toy benchmark run end to end, in seconds-long versions, on the shipped toy base.

The full scripts/demo.sh is not run here: its two CLI start-ups alone take ~20 s each on a loaded 2-core machine;
the benchmark test drives the same pslider-eval code in-process.
"""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pslider_core.file_format import load_pareto_slider
from pslider_core.toy.dataset import heldout_prompts, train_prompts
from trainer.cli import main as train_main
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


def _demo_prompt_step() -> str:
    """The Python the demo script runs to write its prompt files (the heredoc in scripts/demo.sh)."""
    script = (ROOT / "scripts" / "demo.sh").read_text()
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", script, re.S)
    assert match, "scripts/demo.sh no longer writes its prompts with a python heredoc; update this test"
    return match.group(1)


def test_demo_pieces_run(tmp_path: Path) -> None:
    """The demo's prompt step, then its training command (1 epoch) on the shipped toy base with toy.toml."""
    out = tmp_path / "demo"
    out.mkdir()
    subprocess.run([sys.executable, "-", str(out)], input=_demo_prompt_step(), text=True, check=True, timeout=60)
    assert (out / "train.txt").read_text().split("\n")[:-1] == train_prompts()
    assert (out / "heldout.txt").read_text().split("\n")[:-1] == heldout_prompts()
    flags = [a for k, v in TINY.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    result = CliRunner().invoke(train_main, ["--config", str(ROOT / "trainer" / "configs" / "toy.toml"),
                                             "--prompts", str(out / "train.txt"),
                                             "--output", str(out / "toy_slider.safetensors"), *flags, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert load_pareto_slider(out / "toy_slider.safetensors", "toy").reward_names == ("toy_color", "toy_sketch")


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
    assert rows == ["slider", *fixed, "base", "fixed (union of K)"]
    match = re.search(r"^hypervolume ratio: (\S+)$", text, re.M)
    assert match and math.isfinite(float(match.group(1)))
    assert float(match.group(1)) == pytest.approx(run["checks"]["hv_ratio"], abs=1e-3)
    assert run["checks"]["compute_fraction"] == pytest.approx(0.2)
    assert 0 <= run["checks"]["base_valid"] <= 1
    seed = run["per_seed"][0]
    assert set(seed["slider"]["valid"]) == {"1.0;0.0", "0.5;0.5", "0.0;1.0"}  # the slider is judged at every w
    assert all(len(seed[name]["valid"]) == 1 for name in fixed)
    assert _is_png(front) and "Command: `python benchmarks/pareto_toy.py" in text
