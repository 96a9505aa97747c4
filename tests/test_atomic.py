"""Output files and checkpoint folders get the modes the umask gives (a ComfyUI running as another user must read
them), and atomic writes leave nothing behind when they fail."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from pslider_core import ParetoSliderFile, PreferenceModules, PreferenceSpec, save_pareto_slider
from pslider_core.atomic import atomic_dir, atomic_file, write_text_atomic
from pslider_core.evaluation import write_summary
from pslider_core.module_config import PreferenceModuleConfig
from trainer.checkpoint import save_checkpoint


@pytest.fixture(params=[(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)], ids=["umask-022", "umask-077"])
def umask(request):
    """(file mode, folder mode) that the umask of the parameter gives; the test process's umask is restored."""
    mask, file_mode, dir_mode = request.param
    previous = os.umask(mask)
    try:
        yield file_mode, dir_mode
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _slider_file() -> ParetoSliderFile:
    config = PreferenceModuleConfig(num_rewards=2, inner_dim=8, mode="global")
    return ParetoSliderFile("sd3", "tiny", PreferenceSpec(("photo", "sketch")), config,
                            PreferenceModules(config).state_dict())


def test_outputs_and_checkpoints_follow_the_umask(umask, tmp_path):
    file_mode, dir_mode = umask
    written = [
        save_pareto_slider(tmp_path / "slider.safetensors", _slider_file()),
        write_summary({"methods": {}}, tmp_path / "eval" / "summary.json"),
    ]
    root = tmp_path / "slider.checkpoints"
    checkpoint = save_checkpoint(root, 1, {"trainable": {"w": torch.zeros(3)}}, {"epoch": 1}, keep=2)
    files = [*written, root / "latest", *checkpoint.iterdir()]
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(file_mode) for p in files}
    assert (oct(_mode(root)), oct(_mode(checkpoint))) == (oct(dir_mode), oct(dir_mode))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "slider.checkpoints", "slider.safetensors"]


def test_a_failed_write_keeps_the_old_contents_and_leaves_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "latest", "epoch-000001\n")
    with pytest.raises(OSError, match="disk full"):
        with atomic_file(target) as tmp:
            tmp.write_text("epoch-0")
            raise OSError("disk full")
    folder = tmp_path / "epoch-000002"
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(folder) as tmp:
            (tmp / "state.json").write_text("{")
            raise OSError("disk full")
    assert target.read_text() == "epoch-000001\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_a_folder_replaces_the_one_of_the_same_name(tmp_path):
    folder = tmp_path / "epoch-000001"
    for text in ("old", "new"):
        with atomic_dir(folder) as tmp:
            (tmp / text).write_text(text)
    assert [p.name for p in folder.iterdir()] == ["new"]
