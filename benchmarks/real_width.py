"""Real-width checks on CPU: the real transformer configs with 2 blocks train one NFT step; at full depth on meta,
what the trainer would train and write, and which of its LoRA keys stock ComfyUI applies.

For SD3.5 Medium, SD3.5 Large, FLUX.1 Kontext dev and LTX-2 the configs are the shipped copies in
`pslider_core/backbones/real_configs/` (every value cited in its README from diffusers' conversion scripts and
ComfyUI's config files); `real_runs.py` builds pipelines from them with random weights and trains them without text
encoders or reward models.

- **2 blocks at real width** (bf16): the transformer keeps its real width with only its depth overridden (`BLOCKS`:
  SD3.5 2 layers, the last `context_pre_only` as in the real model; Kontext 1 double + 1 single block; LTX-2 2
  layers). One epoch under the config's shipped preset (`trainer/configs/*.toml`: bf16 autocast, gradient
  checkpointing, LoRA rank and targets, both preference paths, offloading as shipped), with only the base, the
  sizes (`SIZES`: pixels, frames, text tokens, reduced for CPU) and the counts (1 prompt, 2 rollouts, 1 slot,
  `--steps` sampler steps, 1 trained timestep, micro-batch 2) changed. It reports the shapes of the state, the
  velocity and the decoded samples, whether the loss is finite, and which trainables got a non-zero gradient before
  the optimiser step; the layers the adapter leaves out as unreachable (`unreachable_lora_modules`, the file's
  `lora.exclude_modules`) are listed, and none of them may still carry a LoRA. The file the run writes must have the
  size `saved_file_size` computes.
- **Full depth on meta**: the whole transformer with the trainer's LoRA and preference modules (the frozen weights
  on meta, the trained tensors uninitialised in host memory): their parameter counts and the size of the ParetoSlider
  file the trainer would write (float32 tensors and the header, `saved_file_size`), with no file written.
- **ComfyUI**: with COMFYUI_PATH (and COMFYUI_PYTHON, default this Python), `comfyui_lora_keys.py` runs in ComfyUI's
  Python and counts the full-depth file's LoRA keys that ComfyUI's own loader applies to the model it detects from
  the same diffusers keys (SD3.5: `comfy.utils.mmdit_to_diffusers`; Kontext: `flux_to_diffusers`). ComfyUI 0.3.64
  has no LTX-2 (`LTXAV`) model, so LTX-2 is not checked.

    python benchmarks/real_width.py [--configs sd35-medium,sd35-large,kontext,ltx2] [--steps 1]
    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python python benchmarks/real_width.py
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch

from real_runs import CONFIGS, RealConfig, epoch_trainer, parse_configs  # first: repository on sys.path
from pslider_core import ParetoSlider
from pslider_core.file_format import ParetoSliderFile, saved_file_size
from pslider_core.memory import WEIGHT_DTYPES, parameter_count
from trainer.trainer import Chunk, ParetoSliderTrainer

HERE = Path(__file__).resolve().parent

# the real configs with 2 blocks: SD3.5 Medium's block 0 has MMDiT-X attn2 like its real blocks 0-12, block 1 is like
# its real last block (no attn2, context_pre_only); SD3.5 Large has no attn2
BLOCKS: dict[str, dict[str, Any]] = {
    "sd35-medium": {"num_layers": 2, "dual_attention_layers": [0]},
    "sd35-large": {"num_layers": 2},
    "kontext": {"num_layers": 1, "num_single_layers": 1},
    "ltx2": {"num_layers": 2},
}
# sizes CPU can train in seconds: the smallest multiples of each VAE's grid (LTX-2: 8k + 1 frames), 8 text tokens
SIZES: dict[str, dict[str, int]] = {
    "sd35-medium": {"height": 64, "width": 64, "max_sequence_length": 8},
    "sd35-large": {"height": 64, "width": 64, "max_sequence_length": 8},
    "kontext": {"height": 64, "width": 64, "max_sequence_length": 8},
    "ltx2": {"height": 64, "width": 64, "num_frames": 9, "max_sequence_length": 8},
}
COMFYUI_CHECKED = {"sd3", "fluxkontext"}
NOT_IN_COMFYUI = "not checked (ComfyUI 0.3.64 predates LTX-2)"


class CheckedTrainer(ParetoSliderTrainer):
    """The trainer, recording the shapes it passes around and, before the optimiser step, every trainable's gradient."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.gradients: dict[str, str] = {}  # name -> "non-zero", "zero", "none" or "non-finite"
        self.policies.register_forward_hook(self._record_velocity)

    def _record_velocity(self, module: Any, args: tuple, velocity: torch.Tensor) -> None:
        self.shapes["state"], self.shapes["velocity"] = tuple(args[0].shape), tuple(velocity.shape)

    def calculate_rewards(self, chunk: Chunk) -> torch.Tensor:
        self.shapes["samples"] = tuple(chunk.samples.shape)
        return super().calculate_rewards(chunk)

    def _optimizer_step(self) -> float | None:
        self.gradients = {name: _gradient_kind(p.grad) for name, p in self.policies.named_trainable}
        return super()._optimizer_step()


def _gradient_kind(grad: torch.Tensor | None) -> str:
    if grad is None:
        return "none"
    if not torch.isfinite(grad).all():
        return "non-finite"
    return "non-zero" if grad.ne(0).any() else "zero"


@dataclass
class WidthCheck:
    """One epoch of the 2-block real-width model."""

    params: int  # transformer parameters (2 blocks)
    shapes: dict[str, tuple[int, ...]]
    loss: float
    skipped_steps: int
    gradients: dict[str, str]
    excluded: tuple[str, ...]  # the file's lora.exclude_modules
    still_trained: list[str]  # excluded layers that carry a LoRA anyway (must be empty)
    file: ParetoSliderFile = field(repr=False)  # what the run wrote
    file_bytes: int  # its size on disk
    computed_bytes: int  # saved_file_size of it
    seconds: float

    @property
    def no_gradient(self) -> list[str]:
        return sorted(name for name, kind in self.gradients.items() if kind != "non-zero")


@dataclass
class DepthCheck:
    """The full-depth transformer on meta with the trainer's LoRA and preference modules."""

    lora_params: int
    module_params: int
    file_bytes: int
    excluded: tuple[str, ...]
    transformer_shapes: dict[str, list[int]] = field(repr=False)
    lora_shapes: dict[str, list[int]] = field(repr=False)
    seconds: float = 0.0


def _unzero(trainer: ParetoSliderTrainer) -> None:
    """Small random values in the zero-initialised trainables (lora_B, the modules' last layers): at zero, lora_A and
    every module layer before the last get no gradient by construction, so the check would see the initialisation
    rather than the structure."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in trainer.policies.trainable:
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 1e-2)


def _lora_layers_among(transformer: torch.nn.Module, modules: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(n.startswith(m + ".lora_") for n, _ in transformer.named_parameters()))


def check_width(real: RealConfig, folder: Path, *, steps: int = 1, device: str = "cpu", precision: str = "bf16",
                transformer: dict[str, Any] | None = None) -> tuple[WidthCheck, CheckedTrainer]:
    """Build the 2-block model (`transformer`: more config overrides), train one epoch with weights and autocast in
    `precision` (the presets' bf16, or "no": float32) and save its file; also returns the trainer."""
    start = time.perf_counter()
    pipe = real.pipeline("cpu", transformer={**BLOCKS[real.name], **(transformer or {})},
                         dtype=WEIGHT_DTYPES[precision])
    params = parameter_count(pipe.transformer)
    overrides = {**SIZES[real.name], "num_steps": steps, "train_timesteps": 1, "epochs": 1, "device": device,
                 "mixed_precision": precision}
    trainer = epoch_trainer(pipe, real, folder, overrides, CheckedTrainer)
    _unzero(trainer)
    metrics = trainer.train_epoch(0)
    path = trainer.save_output()
    file = trainer.slider.to_file(trainer.training_metadata())
    lora = trainer.slider.lora
    check = WidthCheck(
        params=params, shapes=dict(trainer.shapes), loss=float(metrics.get("loss", math.nan)),
        skipped_steps=int(metrics["skipped_steps"]), gradients=dict(trainer.gradients), excluded=lora.exclude_modules,
        still_trained=_lora_layers_among(pipe.transformer, lora.exclude_modules), file=file,
        file_bytes=path.stat().st_size, computed_bytes=saved_file_size(file), seconds=time.perf_counter() - start,
    )
    return check, trainer


def materialise_trainables(slider: ParetoSlider) -> None:
    """The LoRA and preference modules in uninitialised host memory, the frozen weights staying on meta: `to_file`
    copies the trained tensors to the CPU, which meta tensors cannot do."""
    lora = (f".lora_A.{slider.adapter_name}", f".lora_B.{slider.adapter_name}")
    for name, module in slider.transformer.named_modules():
        if name.endswith(lora):
            module.to_empty(device="cpu")
    slider.modules.to_empty(device="cpu")


def check_depth(real: RealConfig, template: ParetoSliderFile) -> DepthCheck:
    """`template`'s LoRA (rank, alpha, targets) and preference modules on the full-depth transformer (meta), attached
    as the trainer attaches them, and the file it would write with `template`'s rewards, base and metadata."""
    start = time.perf_counter()
    transformer = real.pipeline("meta").transformer
    shapes = {k: list(v.shape) for k, v in transformer.state_dict().items()}
    spec, modules = template.spec, template.module_config
    slider = ParetoSlider.attach(
        transformer, template.backbone, spec.reward_names, reward_descriptions=spec.reward_descriptions,
        mode=modules.mode, num_freqs=modules.num_freqs, lora=template.lora, base_model=template.base_model,
    )
    materialise_trainables(slider)
    file = slider.to_file(template.training)
    return DepthCheck(
        lora_params=sum(t.numel() for t in file.lora_state.values()), module_params=parameter_count(slider.modules),
        file_bytes=saved_file_size(file), excluded=slider.lora.exclude_modules, transformer_shapes=shapes,
        lora_shapes={k: list(v.shape) for k, v in file.lora_state.items()}, seconds=time.perf_counter() - start,
    )


def comfyui_unmapped(cases: dict[str, DepthCheck], folder: Path) -> dict[str, dict[str, Any]]:
    """Per case, ComfyUI's detected model and the LoRA keys its loader leaves unapplied (`comfyui_lora_keys.py`, run
    by COMFYUI_PYTHON on COMFYUI_PATH)."""
    source, out = folder / "comfyui_in.json", folder / "comfyui_out.json"
    source.write_text(json.dumps({name: {"transformer": c.transformer_shapes, "lora": c.lora_shapes}
                                  for name, c in cases.items()}))
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run([python, str(HERE / "comfyui_lora_keys.py"), str(source), str(out)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"The ComfyUI key check failed ({python}, COMFYUI_PATH={os.environ.get('COMFYUI_PATH')}):\n"
            f"{result.stderr[-3000:]}\nCOMFYUI_PYTHON must import ComfyUI: torch and ComfyUI's requirements (where "
            "torchvision cannot be installed, a stub on PYTHONPATH, as tests/test_comfyui_integration.py writes)."
        )
    return json.loads(out.read_text())


@dataclass
class Row:
    """One config's checks and its ComfyUI column (`unmapped`: the keys ComfyUI's loader leaves out)."""

    width: WidthCheck
    depth: DepthCheck
    comfyui: str = ""
    unmapped: list[str] = field(default_factory=list)
    comfyui_model: str = ""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _shape(shape: tuple[int, ...] | None) -> str:
    return "x".join(map(str, shape)) if shape else "-"


def report(rows: dict[str, Row]) -> str:
    """The table (one row per config) and, below it, every name the columns count."""
    header = ["config", "2-block params", "state", "velocity", "samples", "loss", "grad non-zero", "excluded",
              "full LoRA", "full modules", "file MiB", "ComfyUI keys", "2-block s", "meta s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for name, row in rows.items():
        width, depth = row.width, row.depth
        got = sum(kind == "non-zero" for kind in width.gradients.values())
        lines.append("| " + " | ".join([
            name, _millions(width.params), _shape(width.shapes.get("state")), _shape(width.shapes.get("velocity")),
            _shape(width.shapes.get("samples")), f"{width.loss:.4g}", f"{got}/{len(width.gradients)}",
            str(len(depth.excluded)), _millions(depth.lora_params), _millions(depth.module_params),
            _mib(depth.file_bytes), row.comfyui, f"{width.seconds:.0f}", f"{depth.seconds:.0f}",
        ]) + " |")
        notes += [f"{name}: no gradient ({width.gradients[n]}): {n}" for n in width.no_gradient]
        notes += [f"{name}: excluded (lora.exclude_modules, full depth): {m}" for m in depth.excluded]
        notes += [f"{name}: excluded but still trained: {m}" for m in width.still_trained]
        notes += [f"{name}: not mapped by ComfyUI: {k}" for k in row.unmapped]
        if row.comfyui_model:
            notes.append(f"{name}: ComfyUI detects {row.comfyui_model}")
        if width.skipped_steps:
            notes.append(f"{name}: the optimiser step was skipped (NaN/inf)")
        if width.file_bytes != width.computed_bytes:
            notes.append(f"{name}: the written file has {width.file_bytes} bytes, saved_file_size says "
                         f"{width.computed_bytes}")
    return "\n".join(lines + [""] + notes)


@click.command()
@click.option("--configs", default=",".join(CONFIGS), show_default=True, help="Comma-separated configurations.")
@click.option("--steps", default=1, show_default=True, type=click.IntRange(1, 2),
              help="Sampler steps per rollout.")
@click.option("--device", default="cpu", show_default=True, help="Training device of the 2-block runs.")
@click.option("--precision", default="bf16", show_default=True, type=click.Choice(["bf16", "no"]),
              help="Weights and autocast of the 2-block runs: the presets' bf16, or float32 ('no'; on CPUs without "
                   "bf16 instructions several times faster).")
def main(configs: str, steps: int, device: str, precision: str) -> None:
    """Print the real-width table; trainables without gradient, excluded layers and unmapped keys by name below it."""
    try:
        chosen = parse_configs(configs)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--configs") from None
    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for real in chosen:
            folder = Path(tmp) / real.name
            folder.mkdir()
            width, trainer = check_width(real, folder, steps=steps, device=device, precision=precision)
            del trainer
            rows[real.name] = Row(width, check_depth(real, width.file))
            print(f"{real.name}: 2 blocks {width.seconds:.0f} s, full depth on meta {rows[real.name].depth.seconds:.0f}"
                  " s", file=sys.stderr)
            gc.collect()
        checked = {n: row.depth for n, row in rows.items() if CONFIGS[n].adapter().name in COMFYUI_CHECKED}
        results = comfyui_unmapped(checked, Path(tmp)) if os.environ.get("COMFYUI_PATH") and checked else {}
    for name, row in rows.items():
        if name in results:
            row.unmapped = results[name]["unmapped"]
            total = len(row.depth.lora_shapes)
            row.comfyui = f"{total - len(row.unmapped)}/{total}"
            config = results[name]["unet_config"]
            row.comfyui_model = f"{results[name]['model']} ({', '.join(f'{k}={config[k]}' for k in sorted(config))})"
        else:
            row.comfyui = "not checked (no COMFYUI_PATH)" if name in checked else NOT_IN_COMFYUI
    print(f"{device}, {'float32' if precision == 'no' else precision}, random weights; 2 blocks at real width: 1 "
          f"prompt x 2 rollouts, {steps} sampler step(s), 1 trained timestep; full depth on meta")
    print(report(rows))


if __name__ == "__main__":
    main()
