"""ParetoSlider core library: preference conditioning, backbones, the file format, rewards and evaluation.

No ComfyUI and no click imports here: `trainer/` and `nodes/` are thin faces on this package. Names are
imported lazily so that light users (rewards, evaluation, the reward server) do not pay for diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "available_backbones": ".backbones",
    "get_backbone": ".backbones",
    "register_backbone": ".backbones",
    "FORMAT_VERSION": ".file_format",
    "ParetoSliderFile": ".file_format",
    "ParetoSliderFileError": ".file_format",
    "load_pareto_slider": ".file_format",
    "read_header": ".file_format",
    "save_pareto_slider": ".file_format",
    "LoraSpec": ".lora",
    "PreferenceModuleConfig": ".modules",
    "PreferenceModules": ".modules",
    "PreferenceSpec": ".preference",
    "normalize_weights": ".preference",
    "ParetoSlider": ".slider",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pslider_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
