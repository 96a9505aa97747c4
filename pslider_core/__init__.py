"""ParetoSlider core library: preference conditioning, backbones, the file format, rewards and evaluation.

No ComfyUI and no click imports here: `trainer/` and `nodes/` are thin faces on this package.
"""

from .backbones import available_backbones, get_backbone, register_backbone
from .file_format import (
    FORMAT_VERSION,
    ParetoSliderFile,
    ParetoSliderFileError,
    load_pareto_slider,
    read_header,
    save_pareto_slider,
)
from .lora import LoraSpec
from .modules import PreferenceModuleConfig, PreferenceModules
from .preference import PreferenceSpec, normalize_weights
from .slider import ParetoSlider

__all__ = [
    "FORMAT_VERSION",
    "LoraSpec",
    "ParetoSlider",
    "ParetoSliderFile",
    "ParetoSliderFileError",
    "PreferenceModuleConfig",
    "PreferenceModules",
    "PreferenceSpec",
    "available_backbones",
    "get_backbone",
    "load_pareto_slider",
    "normalize_weights",
    "read_header",
    "register_backbone",
    "save_pareto_slider",
]
