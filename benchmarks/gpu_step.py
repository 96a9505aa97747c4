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

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import click
import torch

from real_runs import CONFIGS, RealConfig, detach_lora, epoch_trainer, parse_configs  # first: repository on sys.path
from trainer.policies import CURRENT, OLD, REFERENCE
from trainer.trainer import ParetoSliderTrainer


def _trainer(pipe: Any, real: RealConfig, folder: Path, args: dict[str, Any], fixed: bool, tiny: bool,
             device: str) -> ParetoSliderTrainer:
    size = real.adapter().tiny_sample_size if tiny else {}
    overrides: dict[str, Any] = {
        **size, "device": device, "output": str(folder / f"{real.name}-{'fixed' if fixed else 'slider'}.safetensors"),
        "num_steps": args["steps"], "train_timesteps": args["timesteps"], "epochs": 2,
    }
    if tiny:
        overrides.update(max_sequence_length=16, mixed_precision="no")
    if fixed:
        overrides["fixed_weights"] = "0.5,0.5"
    return epoch_trainer(pipe, real, folder, overrides)


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
    cuda = torch.device(device).type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if tiny:
            adapter = real.adapter()
            pipe = adapter.tiny_pipeline(seed=0)
            for name in adapter.text_encoder_names:
                setattr(pipe, name, None)
        else:
            pipe = real.pipeline(device)
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
            detach_lora(pipe)
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
    try:
        chosen = parse_configs(configs)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--configs") from None
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
    for real in chosen:
        r = run(real, args, tiny, device)
        print(f"{real.name:<12} {r['rollout_s']:>10.2f} {r['reward_s']:>9.2f} {r['train_s']:>8.2f} "
              f"{r['epoch_s']:>8.2f} {r['peak_gib']:>9.1f} {r['ratio']:>12.3f} {r['tflops']:>13.3g} {r['syncs']:>6d}")


if __name__ == "__main__":
    main()
