"""Backbone registry: one module per backbone, one line in `BUILTIN` to register it.

Nothing is imported until a backbone is asked for: the names are known without torch (command lines answer
`--help` at once), and an adapter module imports diffusers only inside the methods that load or run models (the
ComfyUI node pack needs the hook points alone).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..lazy import lazy_getattr

if TYPE_CHECKING:
    from .base import BackboneAdapter

# name -> module (relative to this package) whose adapter class registers itself with @register_backbone
BUILTIN: dict[str, str] = {
    "fluxkontext": ".fluxkontext",
    "ltx2": ".ltx2",
    "sd3": ".sd3",
    "toy": ".toy",
}
_REGISTRY: dict[str, type[BackboneAdapter]] = {}


def register_backbone(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Class decorator adding an adapter under its `name` (built-in adapters and users' own alike)."""
    _REGISTRY[cls.name] = cls
    return cls


def _adapter_class(name: str) -> type[BackboneAdapter]:
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name], __name__)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {available_backbones()}.") from None


def get_backbone(name: str) -> BackboneAdapter:
    """The adapter for `name`; unknown names list the known ones."""
    return _adapter_class(name)()


def available_backbones() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTRY))


def audio_backbones() -> list[str]:
    """Backbones that generate sound with each sample (what audio rewards need)."""
    return sorted(name for name in available_backbones() if _adapter_class(name).generates_audio)


_BASE_NAMES = ("BackboneAdapter", "Conditioning", "select_conditioning")
__getattr__ = lazy_getattr(__name__, dict.fromkeys(_BASE_NAMES, ".base"))  # the base class imports torch

__all__ = [*_BASE_NAMES, "BUILTIN", "audio_backbones", "available_backbones", "get_backbone", "register_backbone"]
