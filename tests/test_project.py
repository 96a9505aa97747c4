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


def test_requirements_txt_installs_nothing_into_comfyui():
    """ComfyUI-Manager installs requirements.txt into the user's ComfyUI: the nodes need only what ComfyUI has, so
    it lists no package (a listed one could change ComfyUI's version of it); the trainer's stack is pyproject's."""
    import tomllib

    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == []
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("diffusers") for d in deps), "pip install pareto-slider brings the trainer's stack"


def test_no_torchvision_or_torchaudio_dependency():
    text = (ROOT / "pyproject.toml").read_text() + (ROOT / "requirements.txt").read_text()
    assert "torchvision" not in text and "torchaudio" not in text


def test_comfy_registry_validation_passes():
    """`comfy node validate` (pyproject [tool.comfy] plus ruff's S102/S307/E702 checks) must pass before publishing."""
    import shutil
    import subprocess

    comfy = shutil.which("comfy")
    assert comfy, "comfy-cli is a test dependency: pip install -e '.[test]'"
    result = subprocess.run(
        [comfy, "--skip-prompt", "node", "validate"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "passed" in output, output


def test_license_text_and_registry_conformant_metadata():
    """PEP 639: an SPDX `license` expression plus `license-files`, which setuptools reads from version 77 on."""
    import tomllib

    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in text
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (pyproject["project"]["license"], pyproject["project"]["license-files"]) == ("Apache-2.0", ["LICENSE"])
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
