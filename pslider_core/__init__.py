"""ParetoSlider core library: preference conditioning, backbones, the file format, rewards and evaluation.

No ComfyUI and no click imports here: `trainer/` and `nodes/` are thin faces on this package. Names are
imported lazily so that light users (rewards, evaluation, the reward server) do not pay for diffusers.
"""

from __future__ import annotations

import logging

from .lazy import lazy_getattr


class _TorchvisionFallbackNotice(logging.Filter):
    """transformers 5 says, once per image processor, that it falls back to the PIL version without torchvision.
    This project never installs torchvision (no CPU build matches its torch) and uses the PIL versions on purpose:
    the notice only alarms users at every start, so it is dropped (every other transformers message stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackNotice())

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
    "PreferenceModuleConfig": ".module_config",
    "PreferenceModules": ".modules",
    "PreferenceSpec": ".preference",
    "normalize_weights": ".preference",
    "ParetoSlider": ".slider",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
