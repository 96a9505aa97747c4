"""Time per training epoch, split into rollout / reward / optimisation, on the backbones' tiny models.

For each backbone a ParetoSlider trainer and a `--fixed-weights` trainer of the same size run side by side in one
process, epochs interleaved (so machine load affects both alike). The table reports median wall seconds per epoch
and stage, the median CPU seconds per epoch (this process only: robust to other programs on a shared machine), and
the ratio ParetoSlider / fixed weights of both (target: at most 1.10, i.e. preference conditioning costs under 10%).

    python benchmarks/train_step.py [--backbones sd3,fluxkontext,ltx2] [--epochs 5] [--objective nft] [--profile]
        [--prompt-cache]

`--prompt-cache` also times a ParetoSlider run whose prompt cache holds nothing (`--cache-max-gb` 1e-12: every epoch
encodes its prompts and the text encoders stay, as before the cache existed) side by side with a normal one, and
gives the pipeline weights each keeps on the training device.

`--profile` also runs the ParetoSlider epochs under cProfile and prints the share of the epoch spent in per-forward
bookkeeping: reading diffusers' `.dtype` / `.device` (each walks every parameter), setting up the preference hooks
and switching between the trained, old and reference adapters.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import diffusers
import numpy as np
import torch
import transformers
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pslider_core import get_backbone  # noqa: E402
from trainer.config import resolve_config  # noqa: E402
from trainer.trainer import ParetoSliderTrainer  # noqa: E402

STAGES = ("rollout", "reward", "optimisation")
COLUMNS = (*STAGES, "total", "cpu")
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow cross"]


def _prompts(folder: Path, backbone: str) -> Path:
    if not get_backbone(backbone).needs_source:
        (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        return folder / "prompts.txt"
    rng = np.random.default_rng(0)
    lines = []
    for i, prompt in enumerate(PROMPTS):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "prompt": prompt}))
    (folder / "edits.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "edits.jsonl"


def _trainer(folder: Path, backbone: str, base: Path, objective: str, name: str, **extra) -> ParetoSliderTrainer:
    config = resolve_config({}, {
        "backbone": backbone, "preset": "tiny", "base": str(base), "rewards": "brightness,saturation",
        "prompts": str(_prompts(folder, backbone)), "output": str(folder / f"{name}.safetensors"),
        "objective": objective, "images_per_prompt": 8, "slots_per_prompt": 2, "prompts_per_epoch": 2,
        "num_steps": 4, "train_timesteps": 3, "batch_size": 8, "progress": False, "epochs": 1000, **extra,
    })
    return ParetoSliderTrainer(config)


def _epoch_seconds(trainer: ParetoSliderTrainer, epoch: int) -> dict[str, float]:
    cpu = time.process_time()
    metrics = trainer.train_epoch(epoch)
    times = {stage: metrics.get(f"time/{stage}", 0.0) for stage in STAGES}
    times["total"] = sum(times.values())
    times["cpu"] = time.process_time() - cpu
    times["weights_mb"] = metrics["memory/weights_gb"] * 1e3
    return times


# (file, function) of the per-forward bookkeeping `--profile` reports, by what it is
OVERHEADS = {
    "diffusers .dtype/.device": [("modeling_utils.py", "dtype"), ("modeling_utils.py", "device")],
    "preference hook set-up": [("conditioning.py", "preference_conditioning")],
    "adapter switching": [("policies.py", "_switch")],
}


def overhead_shares(backbone: str, epochs: int, objective: str) -> dict[str, float]:
    """Share of the ParetoSlider epochs' time (cumulative, under cProfile) in each kind of bookkeeping."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        get_backbone(backbone).tiny_pipeline(seed=0).save_pretrained(folder / "base")
        trainer = _trainer(folder, backbone, folder / "base", objective, "slider")
        trainer.train_epoch(0)
        profile = cProfile.Profile()
        profile.enable()
        for epoch in range(1, epochs + 1):
            trainer.train_epoch(epoch)
        profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(tottime for _, _, tottime, _, _ in stats.values())

    def cumulative(targets: list[tuple[str, str]]) -> float:
        return sum(v[3] for (file, _, name), v in stats.items() if any(file.endswith(f) and name == n
                                                                        for f, n in targets))

    return {kind: cumulative(targets) / total for kind, targets in OVERHEADS.items()}


def benchmark(backbone: str, epochs: int, objective: str, **variants: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Median seconds per epoch and stage, epochs interleaved, of trainers of the same size on one backbone: the
    ParetoSlider and each of `variants` (name -> extra settings), and the weights (MB) each keeps on the device."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = folder / "base"
        get_backbone(backbone).tiny_pipeline(seed=0).save_pretrained(base)
        runs = {"paretoslider": _trainer(folder, backbone, base, objective, "slider"),
                **{name: _trainer(folder, backbone, base, objective, name, **extra) for name, extra in variants.items()}}
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
        for epoch in range(epochs + 1):  # epoch 0 warms caches up and is not counted
            for name, trainer in runs.items():
                seconds = _epoch_seconds(trainer, epoch)
                if epoch:
                    samples[name].append(seconds)
    return {
        name: {key: statistics.median(s[key] for s in values) for key in (*COLUMNS, "weights_mb")}
        for name, values in samples.items()
    }


@click.command()
@click.option("--backbones", default="sd3,fluxkontext,ltx2", show_default=True, help="Comma-separated backbones.")
@click.option("--epochs", default=5, show_default=True, help="Timed epochs per trainer (after one warm-up epoch).")
@click.option("--objective", type=click.Choice(["nft", "grpo"]), default="nft", show_default=True)
@click.option("--profile", is_flag=True, help="Also print the share of per-forward bookkeeping (cProfile).")
@click.option("--prompt-cache", is_flag=True, help="Also compare with a run that encodes its prompts every epoch.")
def main(backbones: str, epochs: int, objective: str, profile: bool, prompt_cache: bool) -> None:
    """Print seconds per epoch by stage and the ParetoSlider / fixed-weights ratio."""
    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    header = (f"{'backbone':<12} {'method':<14} " + " ".join(f"{s:>12}" for s in COLUMNS)
              + f" {'wall ratio':>10} {'cpu ratio':>10}")
    trained = "3 of 4 grid timesteps trained" if objective == "nft" else "all 4 SDE steps trained"
    print(f"objective {objective}: 2 prompts x 8 rollouts, 4 steps, {trained}; median seconds per epoch over "
          f"{epochs} epochs")
    print(header)
    print("-" * len(header))
    for backbone in backbones.split(","):
        result = benchmark(backbone, epochs, objective, fixed_weights={"fixed_weights": "0.5,0.5"})
        slider, fixed = result["paretoslider"], result["fixed_weights"]
        ratios = f"{slider['total'] / fixed['total']:>10.3f} {slider['cpu'] / fixed['cpu']:>10.3f}"
        for name, times in result.items():
            cells = " ".join(f"{times[s]:>12.3f}" for s in COLUMNS)
            print(f"{backbone:<12} {name:<14} {cells} {ratios if name == 'paretoslider' else ''}")
    if prompt_cache:
        print(f"\nprompt cache: median seconds per epoch over {epochs} epochs; MB of pipeline weights on the device")
        print(f"{'backbone':<12} {'run':<22} {'rollout':>8} {'total':>8} {'cpu':>8} {'weights MB':>11} {'cpu ratio':>10}")
        for backbone in backbones.split(","):
            result = benchmark(backbone, epochs, objective, uncached={"cache_max_gb": 1e-12})
            cached, uncached = result["paretoslider"], result["uncached"]
            for name, label in ((cached, "cached, encoders freed"), (uncached, "encoded every epoch")):
                ratio = f"{cached['cpu'] / uncached['cpu']:>10.3f}" if name is cached else ""
                print(f"{backbone:<12} {label:<22} {name['rollout']:>8.3f} {name['total']:>8.3f} {name['cpu']:>8.3f} "
                      f"{name['weights_mb']:>11.3f} {ratio}")
    if profile:
        print(f"\nshare of the ParetoSlider epoch (cProfile, {epochs} epochs)")
        print(f"{'backbone':<12} " + " ".join(f"{kind:>26}" for kind in OVERHEADS))
        for backbone in backbones.split(","):
            shares = overhead_shares(backbone, epochs, objective)
            print(f"{backbone:<12} " + " ".join(f"{shares[kind]:>25.1%} " for kind in OVERHEADS))


if __name__ == "__main__":
    main()
