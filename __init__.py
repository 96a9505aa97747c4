"""ComfyUI entry point of the ParetoSlider node pack (V3 API).

ComfyUI imports this folder as a package; without ComfyUI (tests, pip installs) importing it must not fail.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """Called by ComfyUI: returns the extension listing the pack's nodes."""
    from .nodes import ParetoSliderExtension

    return ParetoSliderExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
