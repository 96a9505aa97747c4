"""Fake of ComfyUI's server.py: PromptServer.instance.routes, an aiohttp-style route table that records routes."""

from __future__ import annotations

from typing import Any, Callable


class RouteTableDef:
    def __init__(self) -> None:
        self.routes: list[tuple[str, str, Callable]] = []

    def get(self, path: str) -> Callable[[Callable], Callable]:
        def register(handler: Callable) -> Callable:
            self.routes.append(("GET", path, handler))
            return handler

        return register


class PromptServer:
    instance: Any = None

    def __init__(self) -> None:
        PromptServer.instance = self
        self.routes = RouteTableDef()


PromptServer()  # ComfyUI creates the server before it loads custom nodes
