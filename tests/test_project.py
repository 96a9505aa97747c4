"""Project wiring: CI runs README's test command; the ComfyUI entry imports without ComfyUI."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_comfyui_entry_point_imports_without_comfyui():
    spec = importlib.util.spec_from_file_location(
        "pareto_slider_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        assert callable(module.comfy_entrypoint) and module.WEB_DIRECTORY == "./web"
    finally:
        del sys.modules[spec.name]
