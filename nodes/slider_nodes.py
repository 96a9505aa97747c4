"""The ParetoSlider nodes (V3 schema). Node ids and input ids are a public contract: never rename them; add new
inputs only at the end and as optional, because saved workflows store widget values by position."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from comfy_api.latest import io

from . import files
from .patching import patch_model
from .weights import MAX_REWARDS, FixedWeights, ScheduledWeights, SweepWeights, describe, slider_weights, sweep_points

CATEGORY = "ParetoSlider"
STRENGTH_RANGE = (0.0, 2.0)
WEIGHT_RANGE = (0.0, 1.0)


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
        ranges = {name: STRENGTH_RANGE if name == "strength" else WEIGHT_RANGE for name in bad}
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
            inputs=[*_common_inputs(), *_sliders("w", "Weight", _DEFAULTS)],
            outputs=[_model_output()],
        )

    @classmethod
    def fingerprint_inputs(cls, file: str, **kwargs: Any) -> Any:
        return files.fingerprint(file)

    @classmethod
    def execute(cls, model: Any, file: str, strength: float, **sliders: float) -> io.NodeOutput:
        check_finite({"strength": strength, **sliders})
        loaded = files.load(file)
        w = slider_weights([sliders[f"w{i + 1}"] for i in range(MAX_REWARDS)], loaded.reward_names)
        patched = patch_model(model, loaded, strength, FixedWeights(w))
        return io.NodeOutput(patched, ui=_weights_ui([describe(w, loaded.reward_names)], [w.tolist()]))


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
            ],
            outputs=[_model_output()],
        )

    @classmethod
    def fingerprint_inputs(cls, file: str, **kwargs: Any) -> Any:
        return files.fingerprint(file)

    @classmethod
    def execute(cls, model: Any, file: str, strength: float, **sliders: float) -> io.NodeOutput:
        check_finite({"strength": strength, **sliders})
        loaded = files.load(file)
        names = loaded.reward_names
        start, end = (
            slider_weights([sliders[f"{p}{i + 1}"] for i in range(MAX_REWARDS)], names, prefix=p)
            for p in ("start_w", "end_w")
        )
        patched = patch_model(model, loaded, strength, ScheduledWeights(start, end))
        lines = [f"start: {describe(start, names)}", f"end: {describe(end, names)}"]
        return io.NodeOutput(patched, ui=_weights_ui(lines, [start.tolist(), end.tolist()]))


NODES: list[type[io.ComfyNode]] = [ParetoSliderApply, ParetoSliderSweep, ParetoSliderSchedule]
