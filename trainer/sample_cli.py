"""`pslider-sample`: render a prompt with a ParetoSlider file at chosen preference weights.

    pslider-sample --backbone sd3 --base DIR_OR_HUB --checkpoint slider.safetensors --prompt "a fox" \\
        --weights 0.3,0.7 [--weights 1,0 ...] [--sweep 5] --seed 0 [--seed 1] --out samples/

One file per (weights, seed): PNG (settings in its 'pareto_slider' text chunk) or, for video backbones, MP4 / GIF
with a `.json` side file. Sampling settings default to those the checkpoint was trained with. The options shared
with `pslider-eval` live here too. Only click and plain data are imported before the options are parsed (--help,
--version and option errors answer at once); the run itself is `sampling.sample`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from pslider_core.formats import TORCH_DTYPES, VIDEO_FORMATS
from pslider_core.objectives.config import ODE_SOLVERS

from .controls import guidance_options, region_options

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _set_num_threads(_ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
    if value is None:
        return
    if value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}.")
    import torch

    torch.set_num_threads(value)


def sampling_options(command: Callable) -> Callable:
    """Backbone, base model, sampler and runtime options of pslider-sample and pslider-eval."""
    options = [
        click.version_option(package_name="pareto-slider"),
        click.option("--backbone", required=True, help="Backbone adapter: sd3, fluxkontext, ltx2 or toy."),
        click.option("--base", default=None, help="Base model: hub id or local diffusers folder [default: the "
                                                  "folder the checkpoint records as its base, if it exists, else "
                                                  "the backbone's default base model]."),
        click.option("--steps", "num_steps", type=int, default=None,
                     help="ODE steps [default: the checkpoint's training setting, else 25]."),
        click.option("--solver", type=click.Choice(ODE_SOLVERS), default=None,
                     help="ODE solver [default: the checkpoint's training setting, else dpm2]."),
        click.option("--height", type=int, default=None, help="Height in pixels [default: as trained, else 512]."),
        click.option("--width", type=int, default=None, help="Width in pixels [default: as trained, else 512]."),
        click.option("--num-frames", type=int, default=None,
                     help="Frames per video (video backbones) [default: as trained, else 1]."),
        click.option("--guidance-scale", type=float, default=None,
                     help="Classifier-free guidance against the empty prompt, 1 = off [default: as trained, else 1]."),
        click.option("--batch-size", type=int, default=4, show_default=True, help="Samples per model call."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--dtype", type=click.Choice(["auto", *TORCH_DTYPES]), default="auto", show_default=True,
                     help="Weights dtype of the base model; auto = bfloat16 on GPU, float32 on CPU."),
        click.option("--video-format", type=click.Choice(VIDEO_FORMATS), default="mp4", show_default=True,
                     help="File format of videos (video backbones)."),
        click.option("--num-threads", type=int, default=None, expose_value=False, callback=_set_num_threads,
                     help="torch CPU threads [default: torch's choice]; 1 is fastest for tiny models."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command(context_settings=CONTEXT)
@click.option("--checkpoint", default=None, help="ParetoSlider (or fixed-weights baseline) .safetensors file.")
@click.option("--soup", default=None,
              help="Instead of --checkpoint: A,B[,...], a LoRA soup of these fixed-weights files (their LoRAs stacked at "
                   "strengths lambda, delta-W = sum_i lambda_i delta-W_i, as stacked LoRA loaders do); --weights then "
                   "gives one strength per file.")
@click.option("--prompt", required=True, help="Text prompt (the edit instruction for fluxkontext).")
@click.option("--source", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Source image to edit (fluxkontext only).")
@click.option("--weights", "weights_list", multiple=True,
              help="Preference weights, one per reward in the checkpoint's order (with --soup: one strength per "
                   "file), e.g. 0.3,0.7 (normalised to sum to 1). Repeat for several.")
@click.option("--sweep", type=int, default=None,
              help="Also render a grid of N points per simplex edge: 2 rewards: N points from (1,0) to (0,1).")
@click.option("--seed", "seeds", type=int, multiple=True, default=(0,), show_default=True,
              help="Noise seed; repeat for several.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@sampling_options
@guidance_options
@region_options
def main(**options: Any) -> None:
    """Sample a ParetoSlider at chosen trade-offs between its rewards; prints the files written."""
    from .sampling import sample

    sample(**options)


if __name__ == "__main__":
    main()
