"""ParetoSlider ComfyUI nodes: apply a trained file to a MODEL with one slider per reward, sweep or schedule it."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .files import register_folder
from .routes import register_routes
from .slider_nodes import NODES


def setup() -> None:
    """What the pack adds to ComfyUI besides nodes: the `pareto_slider` model folder and the reward-names route."""
    register_folder()
    register_routes()


class ParetoSliderExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
