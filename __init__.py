"""ComfyUI entry point of the ParetoSlider node pack (V3 API).

ComfyUI imports this folder as a package; without ComfyUI (tests, pip installs) importing it must not fail, so
everything that needs ComfyUI is imported inside `comfy_entrypoint`.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """Called by ComfyUI: registers the model folder and HTTP route, returns the extension listing the nodes."""
    from .nodes import ParetoSliderExtension, setup

    setup()
    return ParetoSliderExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
