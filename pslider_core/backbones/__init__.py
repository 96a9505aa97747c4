"""Backbone registry: one module per backbone, one line here to register it."""

from __future__ import annotations

from .base import BackboneAdapter, Conditioning, select_conditioning

_REGISTRY: dict[str, type[BackboneAdapter]] = {}


def register_backbone(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Class decorator adding an adapter under its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def get_backbone(name: str) -> BackboneAdapter:
    """The adapter for `name`; unknown names list the known ones."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(_REGISTRY)}.") from None


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def audio_backbones() -> list[str]:
    """Backbones that generate sound with each sample (what audio rewards need)."""
    return sorted(name for name, cls in _REGISTRY.items() if cls.generates_audio)


from . import fluxkontext, ltx2, sd3, toy  # noqa: E402,F401  (registration lines)

__all__ = [
    "BackboneAdapter",
    "Conditioning",
    "audio_backbones",
    "available_backbones",
    "get_backbone",
    "register_backbone",
    "select_conditioning",
]
