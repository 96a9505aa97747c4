"""Checkpoints: atomic on disk (a crash never leaves `latest` naming a broken one), tensors and JSON only."""

from __future__ import annotations

import errno
import json
import random

import numpy as np
import pytest
import torch

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig


def _save(root, epoch: int, keep: int = 2):
    tensors = {"trainable": {"w": torch.full((3,), float(epoch))}, "ema": {"shadow.0": torch.zeros(3)}}
    return ckpt.save_checkpoint(root, epoch, tensors, {"epoch": epoch, "note": "x"}, keep=keep)


def test_latest_points_at_the_newest_and_old_ones_are_pruned(tmp_path):
    for epoch in (1, 2, 3):
        _save(tmp_path, epoch)
    assert (tmp_path / "latest").read_text().strip() == "epoch-000003"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-000002", "epoch-000003", "latest"]
    found = ckpt.find_checkpoint(tmp_path)
    assert found.state["epoch"] == 3 and torch.equal(found.tensors("trainable")["w"], torch.full((3,), 3.0))
    assert ckpt.find_checkpoint(tmp_path / "epoch-000002").state["epoch"] == 2


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    real, calls = ckpt.save_file, []

    def dies_on_second_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", dies_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2)
    assert (tmp_path / "latest").read_text().strip() == "epoch-000001"
    assert ckpt.find_checkpoint(tmp_path).state["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-000001", "latest"]


def test_a_killed_writer_leaves_nothing_that_is_mistaken_for_a_checkpoint(tmp_path):
    _save(tmp_path, 1)
    # what a SIGKILL can leave: a half-written temporary folder, and (with a `latest` lost) nothing else
    partial = tmp_path / ".tmp-epoch-000002-abc"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"\x00" * 10)
    (tmp_path / "latest").write_text("epoch-000002\n")  # names a folder that never got its final name
    found = ckpt.find_checkpoint(tmp_path)
    assert found.path.name == "epoch-000001"
    _save(tmp_path, 2)  # the next save clears the debris
    assert not partial.exists() and ckpt.find_checkpoint(tmp_path).state["epoch"] == 2


def test_missing_or_foreign_checkpoint_folders_are_refused(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.find_checkpoint(tmp_path / "nope")
    with pytest.raises(ckpt.CheckpointError, match="holds no complete checkpoint"):
        ckpt.find_checkpoint(tmp_path)
    folder = _save(tmp_path, 1)
    state = json.loads((folder / ckpt.STATE_FILE).read_text())
    (folder / ckpt.STATE_FILE).write_text(json.dumps({**state, "format_version": 99}))
    with pytest.raises(ckpt.CheckpointError, match="format 99"):
        ckpt.find_checkpoint(folder)


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    def make():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
        return params, torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}], lr=0.01)

    def step(params, opt):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()

    params, opt = make()
    step(params, opt)
    tensors, meta = ckpt.optimizer_to_tensors(opt.state_dict())
    ckpt.save_checkpoint(tmp_path, 1, {"optimizer": tensors}, {"epoch": 1, "optimizer": meta}, keep=1)
    found = ckpt.find_checkpoint(tmp_path)
    params2, opt2 = make()
    with torch.no_grad():
        for a, b in zip(params2, params):
            a.copy_(b)
    opt2.load_state_dict(ckpt.optimizer_from_tensors(found.tensors("optimizer"), found.state["optimizer"]))
    step(params, opt)
    step(params2, opt2)
    assert all(torch.equal(a, b) for a, b in zip(params, params2))


def test_rng_state_is_json_and_restores_every_generator():
    state = json.loads(json.dumps(ckpt.rng_state()))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_resume_of_a_finished_run_writes_its_output_and_fewer_epochs_are_refused(tmp_path):
    """A run killed while writing its output file has a checkpoint of its last epoch: resuming it with the same
    --epochs only writes the file; fewer epochs than that checkpoint holds cannot be resumed."""
    config = TrainConfig(epochs=2)
    ckpt.save_checkpoint(tmp_path, 2, {"trainable": {"w": torch.zeros(1)}},
                         {"epoch": 2, "fingerprint": config.fingerprint()}, keep=1)
    assert ckpt.check_resume(tmp_path, config).state["epoch"] == 2
    with pytest.raises(ckpt.CheckpointError, match="already completed 2 epochs and --epochs is 1; pass --epochs 2"):
        ckpt.check_resume(tmp_path, TrainConfig(epochs=1))


def test_a_checkpoint_older_than_a_setting_resumes_at_its_default_only(tmp_path):
    """A checkpoint written before --modules-first existed records no such field: it trained without a warm-up, so it
    resumes with the default and is refused with any other value; a recorded field that differs is refused too."""
    config = TrainConfig()
    older = {k: v for k, v in config.fingerprint_fields().items() if k != "modules_first"}
    ckpt.save_checkpoint(tmp_path, 1, {"trainable": {"w": torch.zeros(1)}},
                         {"epoch": 1, "fingerprint": "from-an-older-version", "config_fields": older}, keep=1)
    assert ckpt.check_resume(tmp_path, config).state["epoch"] == 1
    with pytest.raises(ckpt.CheckpointError, match=r"modules_first: checkpoint 0\.0, now 0\.125"):
        ckpt.check_resume(tmp_path, TrainConfig(modules_first=0.125))
    with pytest.raises(ckpt.CheckpointError, match=r"lr: checkpoint 0\.0003, now 0\.001"):
        ckpt.check_resume(tmp_path, TrainConfig(lr=1e-3))


def test_a_checkpoint_with_a_setting_this_version_lacks_is_refused(tmp_path):
    """A setting that changed the math and no longer exists cannot be honoured, so such a checkpoint is refused."""
    config = TrainConfig()
    recorded = {**config.fingerprint_fields(), "retired_setting": 3}
    ckpt.save_checkpoint(tmp_path, 1, {"trainable": {"w": torch.zeros(1)}},
                         {"epoch": 1, "fingerprint": "from-another-version", "config_fields": recorded}, keep=1)
    with pytest.raises(ckpt.CheckpointError, match=r"retired_setting: checkpoint 3, now None"):
        ckpt.check_resume(tmp_path, config)


def test_write_errors_name_the_cause_the_fix_and_what_is_intact(tmp_path):
    full = ckpt.write_error(OSError(errno.ENOSPC, "No space left on device"), "checkpoint epoch-000001 in X",
                            "--checkpoint-dir", tmp_path, epochs=3)
    assert isinstance(full, OSError) and str(full) == (
        "Could not write checkpoint epoch-000001 in X: the disk is full ([Errno 28] No space left on device); free "
        "space there or pass --checkpoint-dir on another disk. There is no earlier checkpoint: then run the same "
        "command again."
    )
    _save(tmp_path, 3)
    denied = ckpt.write_error(PermissionError(errno.EACCES, "Permission denied"), "the output file F", "--output",
                              tmp_path, epochs=3)
    assert str(denied) == (
        "Could not write the output file F: [Errno 13] Permission denied; fix that or pass another --output. The "
        f"checkpoint {tmp_path / 'epoch-000003'} (epoch 3) is intact: then --resume {tmp_path} writes the output "
        "file without training again."
    )
