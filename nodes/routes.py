"""HTTP route the web extension reads to name the sliders: GET /pareto_slider/rewards?file=<name>."""

from __future__ import annotations

from typing import Any

from . import files

ROUTE = "/pareto_slider/rewards"


def rewards_response(name: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for a file name from the node's combo; only listed files are ever opened."""
    if name not in files.list_files():
        return 404, {"error": f"No ParetoSlider file named {name!r}; refresh the node list (press r)."}
    try:
        return 200, files.reward_info(name)
    except (ValueError, OSError) as err:
        return 400, {"error": str(err)}


def register_routes() -> bool:
    """Add the route to ComfyUI's server; False when there is no server (tests, scripts): the nodes still work."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False

    @instance.routes.get(ROUTE)
    async def rewards(request: Any) -> Any:
        from aiohttp import web  # ComfyUI's server dependency; the pack itself imports without it

        status, body = rewards_response(request.query.get("file", ""))
        return web.json_response(body, status=status)

    return True
