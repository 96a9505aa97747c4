"""`pslider-train` under FSDP2: 2 CPU processes (gloo) launched with the shipped trainer/configs/accelerate_fsdp.yaml.

accelerate itself runs an FSDP config on CPU as data parallel; pslider-train shards the transformer itself
(`shard_policies`), so these runs go through the same sharding, gathering and re-sharding code as on GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import FullyShardedDataParallelPlugin
from safetensors.torch import load_file
from test_trainer import (  # noqa: F401  (tiny_base is a fixture)
    _free_port,
    metrics_lines,
    run_cli,
    tiny_args,
    tiny_base,
    write_prompts,
)

from pslider_core import load_pareto_slider
from trainer.data import InputError
from trainer.trainer import check_fsdp_settings, check_fsdp_version

REPO = Path(__file__).resolve().parents[1]
FSDP_CONFIG = REPO / "trainer" / "configs" / "accelerate_fsdp.yaml"


def launch(args: list[str], *accelerate_args: str, fsdp: bool = True) -> subprocess.CompletedProcess:
    """`accelerate launch` on 2 CPU processes (the trainer's tiny preset runs on CPU): with the shipped FSDP config,
    or data parallel (DDP) as test_trainer.py launches it."""
    ddp = ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
    setup = ["--config_file", str(FSDP_CONFIG)] if fsdp else ddp
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *setup, "--num_processes", "2", "--mixed_precision", "no",
        "--main_process_port", str(_free_port()), *accelerate_args, "-m", "trainer.cli", *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def check_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def assert_close(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], rtol: float) -> None:
    assert sorted(expected) == sorted(got)
    for key in expected:
        assert (expected[key] - got[key]).norm() <= rtol * expected[key].norm() + 1e-7, key


def test_shipped_fsdp_config_asks_for_fsdp2():
    config = load_config_from_file(str(FSDP_CONFIG))
    assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_reshard_after_forward"] is True


def test_unsupported_fsdp_settings_are_refused_with_the_fix(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(InputError, match=r"FSDP version 2 only.*fsdp_version: 2.*accelerate_fsdp\.yaml"):
        check_fsdp_version()
    monkeypatch.setenv("FSDP_VERSION", "2")
    check_fsdp_version()
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, cpu_offload=True, activation_checkpointing=True)
    with pytest.raises(InputError, match=r"fsdp_offload_params.*--gradient-checkpointing.*fp16 \(use bf16\)"):
        check_fsdp_settings(plugin, "fp16")
    check_fsdp_settings(FullyShardedDataParallelPlugin(fsdp_version=2), "bf16")  # the shipped settings pass


def test_fsdp_run_matches_one_process_and_resumes_exactly(tiny_base, tmp_path):
    """sd3 (nft: old policy, EMA), 2 epochs sharded over 2 processes: the file loads and matches a 1-process run
    (same per-sample noise; gradients reduced in another order, measured 8e-5 relative); resuming from the
    epoch-1 checkpoint (written after epoch 1, as an interrupted run leaves it) under FSDP ends bit-equal."""
    base, prompts = tiny_base("sd3"), write_prompts(tmp_path, "sd3")
    args = ["--epochs", "2", "--lr", "3e-3", "--pref-lr-mult", "10"]
    single, sharded, resumed = (tmp_path / name / "x.safetensors" for name in ("one", "fsdp", "resumed"))
    run_cli(tiny_args("sd3", base, prompts, single, *args))
    check_ok(launch(tiny_args("sd3", base, prompts, sharded, *args)))

    data = load_pareto_slider(sharded, "sd3")
    assert data.training["fsdp"] is True and data.training["processes"] == 2 and data.training["steps"] == 2
    assert_close(load_file(single), load_file(sharded), rtol=1e-3)
    assert data.module_state["global_mlp.2.weight"].abs().sum() > 0  # trained, not the zero init

    checkpoint = sharded.with_name("x.checkpoints") / "epoch-000001"
    check_ok(launch(tiny_args("sd3", base, prompts, resumed, *args, "--resume", str(checkpoint))))
    a, b = load_file(sharded), load_file(resumed)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    for group in ("trainable", "old", "ema", "optimizer"):
        x = load_file(sharded.with_name("x.checkpoints") / "epoch-000002" / f"{group}.safetensors")
        y = load_file(resumed.with_name("x.checkpoints") / "epoch-000002" / f"{group}.safetensors")
        assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x), group
    assert metrics_lines(resumed)[-1]["reward/brightness"] == metrics_lines(sharded)[-1]["reward/brightness"]


def test_fsdp_with_two_block_classes_matches_ddp_and_an_fsdp1_config_stops(tiny_base, tmp_path):
    """fluxkontext shards its double- and single-stream blocks and ends where data parallel training does (measured:
    bit-equal in float32; against one process Adam's first step amplifies rounding in near-zero gradients to
    ~1e-2 here); an FSDP1 config stops at start-up, naming the fix."""
    base, prompts = tiny_base("fluxkontext"), write_prompts(tmp_path, "fluxkontext")
    ddp, sharded = tmp_path / "ddp" / "x.safetensors", tmp_path / "fsdp" / "x.safetensors"
    check_ok(launch(tiny_args("fluxkontext", base, prompts, ddp), fsdp=False))
    check_ok(launch(tiny_args("fluxkontext", base, prompts, sharded)))
    assert load_pareto_slider(sharded, "fluxkontext").training["fsdp"] is True
    assert load_pareto_slider(ddp, "fluxkontext").training["fsdp"] is False
    assert_close(load_file(ddp), load_file(sharded), rtol=1e-5)

    done = launch(tiny_args("fluxkontext", base, prompts, tmp_path / "v1" / "x.safetensors"), "--fsdp_version", "1")
    assert done.returncode != 0 and "fsdp_version: 2" in done.stdout + done.stderr
    assert not (tmp_path / "v1" / "x.safetensors").exists()
