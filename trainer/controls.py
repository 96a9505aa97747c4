"""The command-line face of `pslider_core.controls`: preference guidance (pslider-sample and pslider-eval), regional
and per-frame weights (pslider-sample). Only click is imported at module level, so `--help` stays fast; the options'
values become control objects once the checkpoint's reward names are known.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

GUIDANCE_HELP = (
    "Preference guidance scale s: v = v(w_from) + s (v(w) - v(w_from)), two conditioned evaluations per step. 1 = "
    "off; > 1 extrapolates past w away from --guidance-from (e.g. past the (0,1) end); (0, 1) moves toward it."
)
SOURCE_HELP = ("w_from of --preference-guidance: uniform, opposite ((1 - w) / (M - 1): (0,1) -> (1,0)) or one weight "
               "per reward, e.g. 1,0.")


def guidance_options(command: Callable) -> Callable:
    """--preference-guidance and --guidance-from (pslider-sample and pslider-eval)."""
    command = click.option("--guidance-from", "guidance_from", default="uniform", show_default=True,
                           help=SOURCE_HELP)(command)
    return click.option("--preference-guidance", "preference_guidance", type=float, default=1.0, show_default=True,
                        help=GUIDANCE_HELP)(command)


def region_options(command: Callable) -> Callable:
    """--mask with --weights-inside / --weights-outside, and --first-frame-weights / --last-frame-weights."""
    options = [
        click.option("--mask", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Regional weights: a mask PNG of the sample size (white = --weights-inside, black = "
                          "--weights-outside, grey blends; converted to grey levels / 255)."),
        click.option("--weights-inside", default=None, help="Weights where --mask is white, e.g. 0,1."),
        click.option("--weights-outside", default=None, help="Weights where --mask is black, e.g. 1,0."),
        click.option("--first-frame-weights", default=None,
                     help="Per-frame weights (video backbones): weights at the first frame, e.g. 1,0."),
        click.option("--last-frame-weights", default=None,
                     help="Per-frame weights: weights at the last frame, linear over the latent frames in between."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def preference_guidance(scale: float, source: str, spec: Any) -> list:
    """[PreferenceGuidance] for scale != 1, [] for 1; bad values are usage errors naming the option."""
    from pslider_core.controls import PreferenceGuidance, check_guidance_scale

    try:
        check_guidance_scale(scale)
    except ValueError as err:
        raise click.UsageError(f"--preference-guidance: {err}") from None
    text = source.strip()
    if text in ("uniform", "opposite"):
        parsed: str | tuple[float, ...] = text
    else:
        try:
            parsed = tuple(float(part) for part in text.split(","))
            spec.normalize(list(parsed))
        except ValueError as err:
            raise click.UsageError(
                f"--guidance-from {source!r}: pass uniform, opposite or one weight per reward "
                f"({', '.join(spec.reward_names)}), e.g. {','.join(['1'] + ['0'] * (spec.num_rewards - 1))} ({err})."
            ) from None
    if scale == 1.0:
        if text != "uniform":
            click.echo("--guidance-from has no effect without --preference-guidance other than 1.", err=True)
        return []
    return [PreferenceGuidance(scale, parsed)]


def region_controls(options: dict[str, Any], adapter: Any, spec: Any, height: int, width: int,
                    parse: Callable[[str, str], tuple[float, ...]]) -> tuple[list, tuple[float, ...] | None]:
    """(controls, the sample's own weights) for --mask / --first-frame-weights; ([], None) without them.

    `parse(text, option)` reads one weight vector on the simplex (the caller's usage errors)."""
    mask_path, inside, outside = options["mask"], options["weights_inside"], options["weights_outside"]
    first, last = options["first_frame_weights"], options["last_frame_weights"]
    regional = any(v is not None for v in (mask_path, inside, outside))
    framed = any(v is not None for v in (first, last))
    if regional and framed:
        raise click.UsageError("Pass either regional weights (--mask) or per-frame weights, not both.")
    if regional:
        if mask_path is None or inside is None or outside is None:
            raise click.UsageError("Regional weights need all of --mask PNG, --weights-inside W and --weights-outside W.")
        from pslider_core.controls import RegionalWeights

        return [RegionalWeights(load_mask(mask_path, height, width), parse(outside, "--weights-outside"))], \
            parse(inside, "--weights-inside")
    if framed:
        if first is None or last is None:
            raise click.UsageError("Per-frame weights need both --first-frame-weights and --last-frame-weights.")
        if adapter.modality != "video":
            raise click.UsageError(
                f"Per-frame weights need a video backbone; --backbone {adapter.name} makes images (use --mask for "
                "regional weights)."
            )
        from pslider_core.controls import FrameWeights

        return [FrameWeights(parse(last, "--last-frame-weights"))], parse(first, "--first-frame-weights")
    return [], None


def load_mask(path: str | Path, height: int, width: int) -> Any:
    """A mask PNG as float (height, width) in [0, 1]: grey levels / 255 (16-bit: / 65535); size must match."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from pslider_core.controls import check_mask

    try:
        with Image.open(path) as handle:
            if handle.mode in ("I;16", "I;16B", "I;16L"):
                values = np.asarray(handle, dtype=np.float32) / 65535.0
            else:
                values = np.asarray(handle.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise click.UsageError(f"--mask {path}: not an image PIL can read ({err}); pass a PNG.") from None
    try:
        return check_mask(torch.from_numpy(values.copy()), height, width)[0]
    except ValueError as err:
        raise click.UsageError(f"--mask {path}: {err}") from None


def control_tag(controls: list) -> str:
    """File-name part naming the controls: 'pg2-uniform', 'region-out1-0', 'frames-last1-0' ('' without)."""
    from pslider_core.controls import FrameWeights, PreferenceGuidance, RegionalWeights

    parts = []
    for control in controls:
        if isinstance(control, RegionalWeights):
            parts.append("region-out" + "-".join(f"{x:.4g}" for x in control.outside))
        elif isinstance(control, FrameWeights):
            parts.append("frames-last" + "-".join(f"{x:.4g}" for x in control.last))
        elif isinstance(control, PreferenceGuidance):
            source = control.source if isinstance(control.source, str) else "-".join(f"{x:.4g}" for x in control.source)
            parts.append(f"pg{control.scale:g}-{source}")
    return "_".join(parts)


CONTROL_KEYS = ("preference_guidance", "guidance_from", "mask", "weights_inside", "weights_outside",
                "first_frame_weights", "last_frame_weights")


def control_weights(given: dict[str, Any], weights_list: tuple[str, ...], sweep: int | None) -> tuple[str, ...]:
    """--weights-inside (regional) or --first-frame-weights (per-frame) are the sample's weights: they stand for
    --weights, which may then not be given too."""
    own = given.get("weights_inside") or given.get("first_frame_weights")
    if own is None:
        return weights_list
    if weights_list or sweep is not None:
        option = "--weights-inside" if given.get("weights_inside") else "--first-frame-weights"
        raise click.UsageError(f"{option} sets the sample's weights: drop --weights and --sweep.")
    return (own,)


def sample_controls(given: dict[str, Any], adapter: Any, info: Any, height: int, width: int) -> list:
    """The controls pslider-sample's options ask for (popped from `given`); `info` None (a soup) or a fixed-weights
    file cannot take them. The sample's own weights came through `control_weights`."""
    options = {key: given.pop(key, None) for key in CONTROL_KEYS}
    scale = 1.0 if options["preference_guidance"] is None else options["preference_guidance"]
    asked = scale != 1.0 or any(options[key] is not None for key in CONTROL_KEYS[2:])
    if not asked:
        if options["guidance_from"] not in (None, "uniform"):
            click.echo("--guidance-from has no effect without --preference-guidance other than 1.", err=True)
        return []
    if info is None or info.kind != "pareto_slider":
        raise click.UsageError("Preference guidance, regional and per-frame weights need a ParetoSlider --checkpoint "
                               "(a fixed-weights file or a soup has no preference input).")

    def parse(text: str, option: str) -> tuple[float, ...]:
        from pslider_core.generation import simplex_point

        try:
            return simplex_point(info.spec, [float(part) for part in text.split(",")])
        except ValueError as err:
            raise click.UsageError(f"{option} {text}: {err}") from None

    controls, _ = region_controls(options, adapter, info.spec, height, width, parse)
    return controls + preference_guidance(scale, options["guidance_from"] or "uniform", info.spec)


def eval_controls(given: dict[str, Any], infos: list) -> tuple:
    """pslider-eval's --preference-guidance / --guidance-from (popped from `given`), for its ParetoSliders only (a
    fixed-weights run or the base model has no preference input and is drawn as usual)."""
    scale = given.pop("preference_guidance", None)
    source = given.pop("guidance_from", None) or "uniform"
    scale = 1.0 if scale is None else scale
    sliders = [info for info in infos if info.kind == "pareto_slider"]
    if not sliders:
        if scale != 1.0:
            raise click.UsageError("--preference-guidance needs a ParetoSlider --checkpoint to guide.")
        return ()
    return tuple(preference_guidance(scale, source, sliders[0].spec))


def guided_methods(methods: list, controls: tuple) -> list:
    """pslider-eval's methods with each ParetoSlider renamed `<file>@<controls>` (e.g. `slider@pg2-uniform`): its
    samples differ from the unguided ones, so they get their own rows, sample folder and curve, and a folder scored
    with other settings is refused as holding unplanned samples instead of being mixed in."""
    import dataclasses

    tag = control_tag(list(controls))
    if not tag:
        return methods
    return [dataclasses.replace(m, name=f"{m.name}@{tag}") if m.kind == "pareto_slider" else m for m in methods]
