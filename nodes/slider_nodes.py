"""The ParetoSlider nodes (V3 schema). Node ids and input ids are a public contract: never rename them; add new
inputs only at the end and as optional, because saved workflows store widget values by position."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from comfy_api.latest import io

from ..pslider_core import get_backbone
from ..pslider_core.controls import GUIDANCE_MAX, GUIDANCE_SOURCES
from . import files
from .controls import ControlTerm, constant, frame_coefficient, guided, mask_coefficient, split
from .families import hook_points
from .patching import patch_model
from .weights import MAX_REWARDS, FixedWeights, ScheduledWeights, SweepWeights, describe, slider_weights, sweep_points

CATEGORY = "ParetoSlider"
STRENGTH_RANGE = (0.0, 2.0)
WEIGHT_RANGE = (0.0, 1.0)
GUIDANCE_RANGE = (0.05, GUIDANCE_MAX)
RANGES = {"strength": STRENGTH_RANGE, "preference_guidance": GUIDANCE_RANGE}
SCHEDULE_OVER = ("sampling", "frames")


def _file_input() -> io.Combo.Input:
    return io.Combo.Input(
        "file",
        options=files.list_files(),
        tooltip="ParetoSlider file (.safetensors from pslider-train), from models/pareto_slider or models/loras.",
    )


def _common_inputs() -> list[io.Input]:
    return [
        io.Model.Input("model", tooltip="The base model the file was trained on, from any loader."),
        _file_input(),
        io.Float.Input(
            "strength", default=1.0, min=STRENGTH_RANGE[0], max=STRENGTH_RANGE[1], step=0.01,
            tooltip="Strength of the file's LoRA (1 = as trained). The preference modules are always applied.",
        ),
    ]


def _sliders(prefix: str, label: str, defaults: tuple[float, ...]) -> list[io.Input]:
    return [
        io.Float.Input(
            f"{prefix}{i + 1}", default=defaults[i], min=WEIGHT_RANGE[0], max=WEIGHT_RANGE[1], step=0.01,
            display_mode=io.NumberDisplay.slider,
            tooltip=f"{label} of reward {i + 1}. Weights are normalized to sum to 1; sliders past the file's "
            "rewards must stay 0 (the web extension names the used ones and hides the rest).",
        )
        for i in range(MAX_REWARDS)
    ]


_DEFAULTS = (0.5, 0.5) + (0.0,) * (MAX_REWARDS - 2)


def _model_output() -> io.Model.Output:
    return io.Model.Output(display_name="MODEL", tooltip="The model with the ParetoSlider applied (a clone).")


def _weights_ui(lines: list[str], weights: list[list[float]]) -> dict[str, Any]:
    return {"text": lines, "weights": weights}


def check_finite(values: Mapping[str, float]) -> None:
    """Refuse NaN and infinite FLOAT inputs: ComfyUI's range check lets NaN through (every comparison with it is
    false) and does not check linked values, and a NaN strength or weight renders an all-NaN latent."""
    bad = [name for name, value in values.items() if not math.isfinite(float(value))]
    if bad:
        ranges = {name: RANGES.get(name, WEIGHT_RANGE) for name in bad}
        fixes = "; ".join(f"set {name} to a number from {lo:g} to {hi:g}" for name, (lo, hi) in ranges.items())
        raise ValueError(
            f"{', '.join(f'{name} = {values[name]}' for name in bad)}: ParetoSlider inputs must be finite numbers; "
            f"{fixes} (an API prompt must send numbers, not NaN or Infinity; a linked input must give a finite one)."
        )


class ParetoSliderApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParetoSliderApply",
            display_name="ParetoSlider: Apply (reward sliders)",
            category=CATEGORY,
            description="Apply a ParetoSlider file to a model: one slider per reward sets the trade-off between "
            "the rewards it was trained on (normalized to sum to 1). Works with any loader giving the matching "
            "base model (SD3.5, FLUX.1 Kontext, LTX-2).",
            inputs=[*_common_inputs(), *_sliders("w", "Weight", _DEFAULTS), *_guidance_inputs()],
            outputs=[_model_output()],
        )

    @classmethod
    def fingerprint_inputs(cls, file: str, **kwargs: Any) -> Any:
        return files.fingerprint(file)

    @classmethod
    def execute(cls, model: Any, file: str, strength: float, preference_guidance: float = 1.0,
                guidance_from: str = "uniform", **sliders: float) -> io.NodeOutput:
        check_finite({"strength": strength, **sliders, "preference_guidance": preference_guidance})
        loaded = files.load(file)
        w = slider_weights([sliders[f"w{i + 1}"] for i in range(MAX_REWARDS)], loaded.reward_names)
        terms = _guided([ControlTerm(FixedWeights(w), constant(1.0))], preference_guidance, guidance_from, loaded)
        patched = patch_model(model, loaded, strength, terms if len(terms) > 1 else terms[0].policy)
        lines = [describe(w, loaded.reward_names), *_guidance_line(preference_guidance, guidance_from)]
        return io.NodeOutput(patched, ui=_weights_ui(lines, [w.tolist()]))


class ParetoSliderSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParetoSliderSweep",
            display_name="ParetoSlider: Sweep the front",
            category=CATEGORY,
            description="Render the whole front in one sampler run: batch element i uses its own weights. "
            "2 rewards: `points` weights evenly spaced from (1,0) to (0,1); 3+ rewards: the simplex grid with "
            "`points` per edge. The latent batch size must equal the number of sweep points (wire the "
            "batch_size output into the empty latent) or be a multiple of it (the sweep repeats).",
            inputs=[
                *_common_inputs(),
                io.Int.Input(
                    "points", default=5, min=2, max=64,
                    tooltip="Points per edge of the weight grid, both ends included (11 gives steps of 0.1).",
                ),
            ],
            outputs=[
                _model_output(),
                io.Int.Output(display_name="batch_size", tooltip="Number of sweep points: the latent batch size."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, file: str, **kwargs: Any) -> Any:
        return files.fingerprint(file)

    @classmethod
    def execute(cls, model: Any, file: str, strength: float, points: int) -> io.NodeOutput:
        check_finite({"strength": strength})
        loaded = files.load(file)
        policy = SweepWeights(sweep_points(len(loaded.reward_names), points))
        patched = patch_model(model, loaded, strength, policy)
        count = policy.points.shape[0]
        return io.NodeOutput(
            patched, count, ui=_weights_ui(policy.labels(loaded.reward_names), policy.points.tolist())
        )


class ParetoSliderSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParetoSliderSchedule",
            display_name="ParetoSlider: Schedule over sampling",
            category=CATEGORY,
            description="Weights that move during sampling: the start sliders hold at the first (noisiest) "
            "step, the end sliders at the last, linearly in sigma between (e.g. composition from one reward, "
            "detail from another).",
            inputs=[
                *_common_inputs(),
                *_sliders("start_w", "Weight at the start of sampling", _DEFAULTS),
                *_sliders("end_w", "Weight at the end of sampling", _DEFAULTS),
                io.Combo.Input(
                    "over", options=list(SCHEDULE_OVER), default="sampling", optional=True,
                    tooltip="sampling: start weights at the first (noisiest) step, end weights at the last, linearly "
                    "in sigma (any model). frames (LTX-2 video): start weights at the first frame, end weights at "
                    "the last, linearly over the latent frames, at every step (two model calls per step).",
                ),
            ],
            outputs=[_model_output()],
        )

    @classmethod
    def fingerprint_inputs(cls, file: str, **kwargs: Any) -> Any:
        return files.fingerprint(file)

    @classmethod
    def execute(cls, model: Any, file: str, strength: float, over: str = "sampling", **sliders: float) -> io.NodeOutput:
        check_finite({"strength": strength, **sliders})
        loaded = files.load(file)
        names = loaded.reward_names
        start, end = (
            slider_weights([sliders[f"{p}{i + 1}"] for i in range(MAX_REWARDS)], names, prefix=p)
            for p in ("start_w", "end_w")
        )
        if over not in SCHEDULE_OVER:
            raise ValueError(f"over = {over!r}: pick one of {', '.join(SCHEDULE_OVER)}.")
        if over == "frames":
            hook_points(model, loaded.data, loaded.name)  # a file for another model is refused first, naming both
            if get_backbone(loaded.data.backbone).modality != "video":
                raise ValueError(
                    f"over = frames moves the weights over a video's frames, but {loaded.name} is for an image model "
                    f"({loaded.data.backbone}); use over = sampling, or ParetoSliderRegional for regions of an image."
                )
            policy: Any = split(FixedWeights(start), FixedWeights(end), frame_coefficient)
            lines = [f"first frame: {describe(start, names)}", f"last frame: {describe(end, names)}"]
        else:
            policy = ScheduledWeights(start, end)
            lines = [f"start: {describe(start, names)}", f"end: {describe(end, names)}"]
        patched = patch_model(model, loaded, strength, policy)
        return io.NodeOutput(patched, ui=_weights_ui(lines, [start.tolist(), end.tolist()]))


class ParetoSliderRegional(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ParetoSliderRegional",
            display_name="ParetoSlider: Regional weights (mask)",
            category=CATEGORY,
            description="Different weights in different places: the inside sliders where the mask is 1, the outside "
            "sliders where it is 0, blended where it is soft (feather the mask for a smooth seam). The mask is "
            "resized to the latent. Two model calls per step (four with preference guidance); works with any "
            "sampler and with CFG. LTX-2: the same region in every frame; audio follows the outside weights.",
            inputs=[
                *_common_inputs(),
                io.Mask.Input("mask", tooltip="Where the inside weights apply (1) and where the outside ones do (0); "
                              "one mask for every latent, or one per latent."),
                *_sliders("inside_w", "Weight inside the mask", _DEFAULTS),
                *_sliders("outside_w", "Weight outside the mask", _DEFAULTS),
                *_guidance_inputs(),
            ],
            outputs=[_model_output()],
        )

    @classmethod
    def fingerprint_inputs(cls, file: str, **kwargs: Any) -> Any:
        return files.fingerprint(file)

    @classmethod
    def execute(cls, model: Any, file: str, strength: float, mask: Any, preference_guidance: float = 1.0,
                guidance_from: str = "uniform", **sliders: float) -> io.NodeOutput:
        check_finite({"strength": strength, **sliders, "preference_guidance": preference_guidance})
        check_comfy_mask(mask)
        loaded = files.load(file)
        names = loaded.reward_names
        inside, outside = (
            slider_weights([sliders[f"{p}{i + 1}"] for i in range(MAX_REWARDS)], names, prefix=p)
            for p in ("inside_w", "outside_w")
        )
        terms = _guided(split(FixedWeights(outside), FixedWeights(inside), mask_coefficient(mask)),
                        preference_guidance, guidance_from, loaded)
        patched = patch_model(model, loaded, strength, terms)
        lines = [f"inside: {describe(inside, names)}", f"outside: {describe(outside, names)}",
                 *_guidance_line(preference_guidance, guidance_from)]
        return io.NodeOutput(patched, ui=_weights_ui(lines, [inside.tolist(), outside.tolist()]))


def _guidance_inputs() -> list[io.Input]:
    return [
        io.Float.Input(
            "preference_guidance", default=1.0, min=GUIDANCE_RANGE[0], max=GUIDANCE_RANGE[1], step=0.05,
            optional=True,
            tooltip="Preference guidance s: v(w_from) + s (v(w) - v(w_from)). 1 = off (one model call); above 1 "
            "pushes past the weights, away from guidance_from (e.g. past the sketch end); below 1 moves toward "
            "it. Two model calls per step when not 1.",
        ),
        io.Combo.Input(
            "guidance_from", options=list(GUIDANCE_SOURCES), default="uniform", optional=True,
            tooltip="What preference guidance pushes away from: uniform (equal weights) or opposite (the mirrored "
            "weights, (1 - w) / (M - 1): photo 0 / sketch 1 -> photo 1 / sketch 0).",
        ),
    ]


def _guided(terms: list[ControlTerm], scale: float, source: str, loaded: Any) -> list[ControlTerm]:
    if source not in GUIDANCE_SOURCES:
        raise ValueError(f"guidance_from = {source!r}: pick one of {', '.join(GUIDANCE_SOURCES)}.")
    if not GUIDANCE_RANGE[0] <= float(scale) <= GUIDANCE_RANGE[1]:
        raise ValueError(
            f"preference_guidance = {scale}: set it to a number from {GUIDANCE_RANGE[0]:g} to {GUIDANCE_RANGE[1]:g} "
            "(1 = off)."
        )
    return guided(terms, scale, source, loaded.data.spec)


def _guidance_line(scale: float, source: str) -> list[str]:
    return [] if float(scale) == 1.0 else [f"preference guidance {float(scale):g} from {source}"]


def check_comfy_mask(mask: Any) -> None:
    """A ComfyUI MASK: a float tensor (B, H, W) (or (H, W)) with finite values in [0, 1]."""
    import torch

    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or not mask.is_floating_point():
        got = f"{type(mask).__name__} {tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor) else \
            type(mask).__name__
        raise ValueError(f"mask: expected a ComfyUI MASK, a float tensor (B, H, W) in [0, 1]; got {got}. Connect a "
                         "mask output (Load Image (as Mask), Solid Mask, a mask editor...).")
    if not torch.isfinite(mask).all() or float(mask.min()) < 0 or float(mask.max()) > 1:
        raise ValueError(
            f"mask: values must be finite and in [0, 1], got [{float(mask.min()):.3g}, {float(mask.max()):.3g}]; "
            "clamp or normalize the mask first."
        )


NODES: list[type[io.ComfyNode]] = [ParetoSliderApply, ParetoSliderSweep, ParetoSliderSchedule, ParetoSliderRegional]
