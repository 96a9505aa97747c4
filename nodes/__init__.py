"""ParetoSlider ComfyUI nodes."""

from comfy_api.latest import ComfyExtension, io


class ParetoSliderExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []
