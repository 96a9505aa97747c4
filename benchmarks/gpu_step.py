"""One training epoch per real configuration on a GPU, random weights, no downloads: seconds, memory, TFLOP/s.

For SD3.5 Medium, SD3.5 Large, FLUX.1 Kontext dev and LTX-2, the base pipeline is built on the GPU from the shipped
real configs (`pslider_core/backbones/real_configs/`) with random weights; the text encoders are not built: every
prompt's conditioning is precomputed random embeddings of the real shapes (`BackboneAdapter.random_conditioning`),
put in the trainer's prompt cache as the trainer would after encoding. Rewards are model-free (brightness,
saturation), so the table measures the diffusion side. Each configuration runs its shipped preset
(`trainer/configs/*.toml`) at the preset's resolution, frames and settings (bf16, gradient checkpointing, LoRA,
both preference paths) with reduced counts (prompts, rollouts, steps, trained timesteps), as a ParetoSlider and as
a `--fixed-weights` run of the same size: a warm-up epoch, then one timed epoch each.

Columns: seconds of the rollout / reward / optimisation stages of the timed ParetoSlider epoch, its peak
`torch.cuda.max_memory_allocated`, the ParetoSlider / fixed-weights epoch time ratio, the optimisation stage's
achieved TFLOP/s (FLOPs of one loss pass counted by `torch.utils.flop_counter`, times the passes, over the stage's
seconds) and the host synchronisations CUDA reported during the timed epoch (`torch.cuda.set_sync_debug_mode`).

    python benchmarks/gpu_step.py [--configs sd35-medium,sd35-large,kontext,ltx2] [--steps 4] [--timesteps 2]
    python benchmarks/gpu_step.py --tiny --device cpu      # the same code on the tiny pipelines (the suite runs it)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pslider_core import get_backbone  # noqa: E402
from pslider_core.memory import build_pipeline, config_folder  # noqa: E402
from trainer.config import read_toml, resolve_config  # noqa: E402
from trainer.policies import CURRENT, OLD, REFERENCE  # noqa: E402
from trainer.trainer import ParetoSliderTrainer  # noqa: E402


@dataclass(frozen=True)
class RealConfig:
    name: str
    preset: str  # trainer/configs/<preset>.toml
    base: str  # hub id whose configs are shipped


CONFIGS = {
    c.name: c for c in (
        RealConfig("sd35-medium", "sd3", "stabilityai/stable-diffusion-3.5-medium"),
        RealConfig("sd35-large", "sd3", "stabilityai/stable-diffusion-3.5-large"),
        RealConfig("kontext", "fluxkontext", "black-forest-labs/FLUX.1-Kontext-dev"),
        RealConfig("ltx2", "ltx2", "Lightricks/LTX-2"),
    )
}
PROMPTS = ["a lighthouse at dusk", "a red fox in the snow"]


def _prompts(folder: Path, needs_source: bool, height: int, width: int) -> Path:
    if not needs_source:
        path = folder / "prompts.txt"
        path.write_text("\n".join(PROMPTS) + "\n")
        return path
    rng = np.random.default_rng(0)
    lines = []
    for i, prompt in enumerate(PROMPTS):
        Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "prompt": prompt}))
    path = folder / "edits.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _trainer(pipe: Any, real: RealConfig, folder: Path, args: dict[str, Any], fixed: bool, tiny: bool,
             device: str) -> ParetoSliderTrainer:
    shipped = read_toml(REPO / "trainer" / "configs" / f"{real.preset}.toml")
    adapter = get_backbone(shipped["backbone"])
    size = adapter.tiny_sample_size if tiny else {}
    height, width = size.get("height", shipped.get("height", 512)), size.get("width", shipped.get("width", 512))
    overrides = {
        "base": real.base, "rewards": "brightness,saturation", "device": device, "progress": False,
        "prompts": str(_prompts(folder, adapter.needs_source, height, width)), "height": height, "width": width,
        "output": str(folder / f"{real.name}-{'fixed' if fixed else 'slider'}.safetensors"), "checkpoint_every": 0,
        "prompts_per_epoch": 1, "slots_per_prompt": 1, "images_per_prompt": 2, "batch_size": 2,
        "num_steps": args["steps"], "train_timesteps": args["timesteps"], "epochs": 2,
    }
    if tiny:
        overrides.update(num_frames=size.get("num_frames", 1), max_sequence_length=16, mixed_precision="no")
    if fixed:
        overrides["fixed_weights"] = "0.5,0.5"
    config = resolve_config(shipped, overrides)
    cond = adapter.random_conditioning(  # in place of the text encoders, which are not built
        pipe, len(PROMPTS), height=config.height, width=config.width, num_frames=config.num_frames,
        generator=torch.Generator().manual_seed(0),
    )
    return ParetoSliderTrainer(config, pipeline=pipe, conditioning=cond)


def _detach(pipe: Any) -> None:
    """Delete the trainer's LoRA adapters so the next trainer starts from the bare base (the preference hooks stay:
    inactive outside a conditioned forward, they are reused)."""
    transformer = pipe.transformer
    with warnings.catch_warnings():  # peft warns that the active adapter goes: that is the point
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        transformer.delete_adapters(list(transformer.peft_config))


def _loss_pass_flops(trainer: ParetoSliderTrainer) -> float:
    """FLOPs per sample of one nft loss pass: reference and old velocities, the current one and its backward
    (checkpointed blocks recomputed), counted by torch.utils.flop_counter on a micro-batch of the run's size."""
    from torch.utils.flop_counter import FlopCounterMode

    config, adapter, pipe = trainer.config, trainer.adapter, trainer.pipe
    device, batch = trainer.accelerator.device, config.batch_size
    cond = trainer.prompt_cache.get([0] * batch, device)
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([adapter.initial_noise(pipe, 1, config.height, config.width, generator, config.num_frames)
                   for _ in range(batch)])
    sigma = torch.full((batch,), 0.5, device=device)
    w = torch.full((batch, trainer.inputs.spec.num_rewards), 1 / trainer.inputs.spec.num_rewards, device=device)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            trainer.model(x, sigma, cond, None, REFERENCE)
            trainer.model(x, sigma, cond, w, OLD)
        trainer.model(x, sigma, cond, w, CURRENT).float().square().mean().backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def _timed_epoch(trainer: ParetoSliderTrainer, epoch: int, cuda: bool) -> tuple[dict[str, float], int]:
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.set_sync_debug_mode("warn")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = trainer.train_epoch(epoch)
    if cuda:
        torch.cuda.set_sync_debug_mode("default")
    metrics["wall"] = time.perf_counter() - start
    metrics["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return metrics, syncs


def run(real: RealConfig, args: dict[str, Any], tiny: bool, device: str) -> dict[str, float]:
    adapter = get_backbone(read_toml(REPO / "trainer" / "configs" / f"{real.preset}.toml")["backbone"])
    cuda = torch.device(device).type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if tiny:
            pipe = adapter.tiny_pipeline(seed=0)
            for name in adapter.text_encoder_names:
                setattr(pipe, name, None)
        else:
            pipe = build_pipeline(adapter, config_folder(real.base), dtype=torch.bfloat16, device=device,
                                  skip=adapter.text_encoder_names)
        out: dict[str, float] = {}
        for fixed in (False, True):
            trainer = _trainer(pipe, real, folder, args, fixed, tiny, device)
            trainer.train_epoch(0)  # warm-up: kernels, allocator, autotuning
            metrics, syncs = _timed_epoch(trainer, 1, cuda)
            if not fixed:
                flops = _loss_pass_flops(trainer) * trainer.num_samples * trainer.config.train_timesteps
                out.update({
                    "rollout_s": metrics.get("time/rollout", 0.0), "reward_s": metrics.get("time/reward", 0.0),
                    "train_s": metrics.get("time/optimisation", 0.0), "peak_gib": metrics["peak_gib"],
                    "epoch_s": metrics["wall"], "syncs": syncs,
                    "tflops": flops / metrics.get("time/optimisation", float("nan")) / 1e12,
                })
            else:
                out["ratio"] = out["epoch_s"] / metrics["wall"]
            _detach(pipe)
            del trainer
        del pipe
        if cuda:
            torch.cuda.empty_cache()
    return out


@click.command()
@click.option("--configs", default=",".join(CONFIGS), show_default=True, help="Comma-separated configurations.")
@click.option("--steps", default=4, show_default=True, help="Sampler steps per rollout (the presets use 20-25).")
@click.option("--timesteps", default=2, show_default=True, help="Trained timesteps per sample.")
@click.option("--tiny", is_flag=True, help="The backbones' tiny pipelines instead of the real configs (smoke test).")
@click.option("--device", default="cuda", show_default=True)
def main(configs: str, steps: int, timesteps: int, tiny: bool, device: str) -> None:
    """Print seconds per stage, peak memory, the ParetoSlider / fixed-weights ratio and achieved TFLOP/s."""
    names = configs.split(",")
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise click.BadParameter(f"unknown configurations {unknown}; choose from {sorted(CONFIGS)}.")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("No CUDA GPU here: run on a GPU machine, or pass --tiny --device cpu for a smoke test.")
    card = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu"
    print(f"{card}; random weights; 1 prompt x 2 rollouts, {steps} steps, {timesteps} trained timesteps; "
          f"{'tiny pipelines' if tiny else 'real configs at the presets resolution'}")
    header = (f"{'config':<12} {'rollout s':>10} {'reward s':>9} {'train s':>8} {'epoch s':>8} {'peak GiB':>9} "
              f"{'slider/fixed':>12} {'train TFLOP/s':>13} {'syncs':>6}")
    print(header)
    print("-" * len(header))
    args = {"steps": steps, "timesteps": timesteps}
    for name in names:
        r = run(CONFIGS[name], args, tiny, device)
        print(f"{name:<12} {r['rollout_s']:>10.2f} {r['reward_s']:>9.2f} {r['train_s']:>8.2f} {r['epoch_s']:>8.2f} "
              f"{r['peak_gib']:>9.1f} {r['ratio']:>12.3f} {r['tflops']:>13.2f} {r['syncs']:>6d}")


if __name__ == "__main__":
    main()
