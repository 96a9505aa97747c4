"""The command lines answer --help, --version and option errors before importing torch or the training stack, and
a run prints no notice about the torchvision the project deliberately does not install."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CLIS = ("trainer.cli", "trainer.sample_cli", "trainer.eval_cli", "trainer.reward_server_cli")
HEAVY = ("torch", "numpy", "diffusers", "transformers", "peft", "accelerate", "safetensors", "PIL")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_importing_every_cli_and_building_its_options_imports_nothing_heavy():
    code = ("import json, sys\n"
            + "".join(f"import {m}\n" for m in CLIS)
            + f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("module", CLIS)
def test_help_and_version_answer_without_torch(module):
    code = (f"import sys\nfrom {module} import main\n"
            "for args in (['--help'], ['--version']):\n"
            "    try:\n"
            "        main(args, prog_name='cli')\n"
            "    except SystemExit as exit:\n"
            "        assert exit.code == 0, exit.code\n"
            "print('torch' in sys.modules)")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "--help" in result.stdout and "version" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_an_option_error_names_the_problem_without_torch():
    code = ("import sys\nfrom trainer.cli import main\n"
            "try:\n    main(['--backbone', 'nope', '--rewards', 'a,b'], prog_name='pslider-train')\n"
            "except SystemExit as exit:\n    print(exit.code, 'torch' in sys.modules)")
    result = _python(code)
    assert "Unknown backbone 'nope'" in result.stderr
    assert result.stdout.split() == ["2", "False"]


def test_no_torchvision_notice_when_the_pipelines_load():
    """transformers 5 announces its PIL fallback for every image processor a diffusers pipeline imports."""
    result = _python("from pslider_core import get_backbone\n"
                     "for name in ('sd3', 'fluxkontext', 'ltx2'):\n"
                     "    get_backbone(name).pipeline_class\n"
                     "from transformers import CLIPImageProcessor, SiglipImageProcessor\n")
    assert result.returncode == 0, result.stderr
    assert "torchvision" not in result.stderr
