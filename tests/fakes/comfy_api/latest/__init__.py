"""Fake of comfy_api/latest/__init__.py: `io` and the abstract `ComfyExtension` (same methods as the real one)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called when an extension is loaded (newer ComfyUI versions)."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """Returns a list of nodes that this extension provides."""


__all__ = ["ComfyExtension", "io"]
