"""`pslider-eval`: sweep ParetoSliders, LoRA soups, fixed-weights baselines and the base model; score, summarise, draw.

    pslider-eval --backbone sd3 --base DIR_OR_HUB --checkpoint slider.safetensors [--checkpoint fixed_07.safetensors]
        [--soup fixed_10.safetensors,fixed_01.safetensors] --include-base --prompts heldout.txt [--rewards r1,r2]
        [--judges j1] --grid 11 --seeds 0,1 --out eval/

Writes to --out: scores.csv (one row per method, weights, prompt, seed, reward; resumable: rerunning the same
command scores only what is missing), summary.json (hypervolumes, non-dominated points, controllability, each swept
method against the fixed runs and each slider against each soup; held-out judges under "judges"), front.png, grid.png
(prompts x weights of every ParetoSlider and soup; for video, also
strips/<method>/<prompt>.png), samples/ (the first seed's samples, which the pictures are made of). Only click is
imported before the options are parsed; the run itself is `evaluate.evaluate`.
"""

from __future__ import annotations

from typing import Any

import click

from .controls import guidance_options
from .sample_cli import CONTEXT, sampling_options


@click.command(context_settings=CONTEXT)
@click.option("--checkpoint", "checkpoints", multiple=True,
              help="ParetoSlider or fixed-weights baseline file (the kind is read from its metadata); repeatable.")
@click.option("--soup", "soups", multiple=True,
              help="A,B[,...]: a LoRA soup of these fixed-weights files, one per training reward in the rewards' "
                   "order (e.g. the runs at 1,0 and 0,1), swept over the same --grid as the sliders, the weights being "
                   "the files' LoRA strengths; repeat for several soups.")
@click.option("--include-base", is_flag=True, help="Also evaluate the base model itself (method 'base').")
@click.option("--prompts", required=True, type=click.Path(dir_okay=False),
              help="Held-out prompts: one per line (.txt) or JSONL with \"prompt\" (and \"image\" for fluxkontext).")
@click.option("--rewards", default=None,
              help="Training rewards, in the checkpoints' order [default: the checkpoints' own reward names].")
@click.option("--judges", default=None, help="Held-out rewards, scored and summarised separately (comma-separated).")
@click.option("--judge-components", default=None,
              help="For each judge, the weight index it should rise with (e.g. 0,1; '-' for none), for its "
                   "controllability [default: none].")
@click.option("--grid", "grid_size", type=int, default=11, show_default=True,
              help="Points per simplex edge: 2 rewards: N points from (1,0) to (0,1).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated noise seeds, e.g. 0,1,2.")
@click.option("--ref", default=None,
              help="Hypervolume reference point, one value per training reward [default: per-reward minimum].")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (reused to resume).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@sampling_options
@guidance_options
def main(**options: Any) -> None:
    """Evaluate ParetoSliders against fixed-weights baselines and the base model: scores, fronts, hypervolume."""
    from .evaluate import evaluate

    evaluate(**options)


if __name__ == "__main__":
    main()
