"""Faithful fakes of the ComfyUI pieces the pack touches, for tests that run without ComfyUI.

Each module mirrors the real module's name, classes, function signatures and behaviour for the parts the pack
uses (Comfy-Org/ComfyUI: comfy_api/latest/_io.py, comfy/model_patcher.py, comfy/patcher_extension.py,
comfy/model_base.py, comfy/sd.py, comfy/lora.py, comfy/samplers.py, comfy/sampler_helpers.py, folder_paths.py,
server.py); simplifications are stated where they are made. The pytest process never imports the real ComfyUI:
the integration tests (tests/test_comfyui_integration*.py) run it in subprocesses.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

FAKES_DIR = Path(__file__).resolve().parent
REPO_ROOT = FAKES_DIR.parents[1]
PACK_NAME = "pareto_slider_pack"


def install() -> None:
    """Put the fake top-level modules (comfy, comfy_api, folder_paths, server) first on sys.path."""
    if str(FAKES_DIR) not in sys.path:
        sys.path.insert(0, str(FAKES_DIR))


@dataclass
class Pack:
    module: ModuleType  # the repository root imported as a package
    extension: Any  # what comfy_entrypoint returned
    nodes: dict[str, type]  # node_id -> node class, from extension.get_node_list()


_LOADED: dict[str, Pack] = {}


def load_pack(name: str = PACK_NAME) -> Pack:
    """Import the repository root as a package the way ComfyUI's load_custom_node does, then run its entry point
    (once per test session, as ComfyUI does once per server start)."""
    if name in _LOADED:
        return _LOADED[name]
    install()
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    extension = asyncio.run(module.comfy_entrypoint())
    node_list = asyncio.run(extension.get_node_list())
    _LOADED[name] = Pack(module, extension, {cls.GET_SCHEMA().node_id: cls for cls in node_list})
    return _LOADED[name]
