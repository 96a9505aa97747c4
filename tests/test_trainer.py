"""`pslider-train` end to end on tiny real models saved to disk and passed as --base, as a user would run it."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import SD3Transformer2DModel
from PIL import Image
from safetensors.torch import load_file

from helpers import randomize_, transformer_inputs

from pslider_core import ParetoSlider, get_backbone, load_pareto_slider
from pslider_core.advantages import group_advantages
from pslider_core.rewards import RewardBatch, get_reward
from pslider_core.samplers import ode_sample
from trainer.checkpoint import find_checkpoint
from trainer.cli import interrupted_message, main
from trainer.config import resolve_config
from trainer.sample_cli import main as sample_main
from trainer.policies import OLD, OLD_ADAPTER
from trainer.trainer import ParetoSliderTrainer

REPO = Path(__file__).resolve().parents[1]


def unreachable(backbone: str) -> list[str]:
    """LoRA layers that cannot reach the loss and so are left out: an SD3 transformer's last joint block computes text
    queries but discards that block's text output (context_pre_only)."""
    if issubclass(get_backbone(backbone).transformer_class, SD3Transformer2DModel):
        return ["transformer_blocks.1.attn.add_q_proj"]
    return []


REWARDS = "brightness,saturation"
PROMPTS = ["a red circle", "a blue square", "a green triangle"]  # words every tiny tokenizer (toy too) knows


# ---------------------------------------------------------------------- shared helpers (imported by other tests)
@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """backbone -> folder holding its tiny pipeline, written once with save_pretrained."""
    folders: dict[str, Path] = {}

    def get(backbone: str) -> Path:
        if backbone not in folders:
            folder = tmp_path_factory.mktemp(f"base-{backbone}")
            get_backbone(backbone).tiny_pipeline(seed=0).save_pretrained(folder)
            folders[backbone] = folder
        return folders[backbone]

    return get


def write_prompts(folder: Path, backbone: str) -> Path:
    """A prompts file as users write it: .txt, or .jsonl with source images next to it for editing."""
    folder.mkdir(parents=True, exist_ok=True)
    if not get_backbone(backbone).needs_source:
        path = folder / "prompts.txt"
        path.write_text("\n".join(PROMPTS) + "\n\n")
        return path
    (folder / "sources").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, prompt in enumerate(PROMPTS):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(folder / "sources" / f"{i}.png")
        lines.append(json.dumps({"image": f"sources/{i}.png", "prompt": prompt}))
    path = folder / "edits.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_args(backbone: str, base: Path, prompts: Path, output: Path, *extra: str) -> list[str]:
    """A seconds-long run: 1 prompt x 4 rollouts in 2 preference groups, 2 sampler steps."""
    return [
        "--backbone", backbone, "--preset", "tiny", "--base", str(base), "--rewards", REWARDS,
        "--prompts", str(prompts), "--output", str(output), "--epochs", "1", "--prompts-per-epoch", "1",
        "--num-steps", "2", "--train-timesteps", "2", *extra,
    ]


def run_cli(args: list[str], exit_code: int = 0):
    result = CliRunner().invoke(main, args)
    if result.exit_code != exit_code:
        raise AssertionError(f"exit code {result.exit_code} != {exit_code}\n{result.output}") from result.exception
    return result


def sample(backbone: str, base: Path, file: Path, weights, num_steps: int = 2, seed: int = 3) -> torch.Tensor:
    """Images (or videos) from the base model with a trained file applied, at preference `weights`."""
    adapter = get_backbone(backbone)
    adapter.max_sequence_length = 16
    pipe = adapter.load_pipeline(base)
    slider = ParetoSlider.from_file(file, pipe.transformer, backbone)
    size = {"num_frames": 1, **adapter.tiny_sample_size}
    prompts = PROMPTS[:2] * 2
    sources = torch.rand(len(prompts), 3, size["height"], size["width"], generator=torch.Generator().manual_seed(0))
    outputs = []
    with torch.no_grad():
        cond = adapter.encode_prompts(pipe, prompts, sources if adapter.needs_source else None, **size)

        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return adapter.predict_velocity(pipe, pipe.transformer, x, sigma, cond)

        for w in weights:
            noise = adapter.initial_noise(
                pipe, len(prompts), size["height"], size["width"], torch.Generator().manual_seed(seed),
                size["num_frames"],
            )
            sigmas = adapter.sigmas(pipe, num_steps, noise, cond)
            with slider.condition(w):
                x0 = ode_sample(velocity, noise, sigmas)
            outputs.append(adapter.decode(pipe, x0, **size))
    return torch.stack(outputs)


def metrics_lines(output: Path) -> list[dict]:
    return [json.loads(line) for line in output.with_name(output.stem + ".logs").joinpath("metrics.jsonl").open()]


# ---------------------------------------------------------------------- one short run per backbone and objective
@pytest.mark.parametrize("objective", ["nft", "grpo"])
def test_short_run_writes_a_valid_pareto_slider_file(backbone, objective, tiny_base, tmp_path):
    base, output = tiny_base(backbone), tmp_path / "out" / "slider.safetensors"
    extra = ["--objective", objective] + (["--sde-window", "1"] if objective == "grpo" else [])
    result = run_cli(tiny_args(backbone, base, write_prompts(tmp_path, backbone), output, *extra))
    assert "training summary" in result.output

    data = load_pareto_slider(output, backbone)
    assert data.reward_names == ("brightness", "saturation") and data.base_model == str(base)
    training = data.training
    assert (training["objective"], training["method"], training["epochs"], training["steps"]) == (
        objective, "paretoslider", 1, 1,
    )
    assert training["fixed_weights"] is None and training["early_scalarization_baseline"] is False
    assert training["rewards"] == ["brightness", "saturation"] and training["config"]["backbone"] == backbone
    # one optimiser step moved every zero-initialised tensor: LoRA B and the modules' last layers
    lora_b = {k: t for k, t in data.lora_state.items() if "lora_B" in k}
    still_zero = sorted(k for k, t in lora_b.items() if t.abs().sum() == 0)
    assert lora_b and still_zero == []
    prefix = get_backbone(backbone).lora_key_prefix
    assert not [m for m in unreachable(backbone) if f"{prefix}{m}.lora_B.weight" in data.lora_state]
    assert data.module_state["global_mlp.2.weight"].abs().sum() > 0
    assert data.module_state["block_projector.8.weight"].abs().sum() > 0
    # the file applies to the base model, and w now changes what it generates
    first, second = sample(backbone, base, output, [(1.0, 0.0), (0.0, 1.0)])
    assert not torch.allclose(first, second)

    (line,) = metrics_lines(output)
    for key in ("reward/brightness", "reward/saturation", "loss", "kl", "grad_norm", "time/rollout", "time/reward",
                "time/optimisation"):
        assert key in line and np.isfinite(line[key]), key
    assert any(k.startswith("reward_by_w/brightness/") for k in line)
    assert list(output.with_name("slider.logs").glob("events.out.tfevents.*"))
    assert (output.with_name("slider.checkpoints") / "latest").read_text().strip() == "epoch-000001"


def test_grpo_cps_full_window_two_steps_per_epoch(tiny_base, tmp_path):
    """CPS steps over the whole grid but the last (zero noise there), and two optimiser steps per epoch: the
    second step sees a ratio away from 1."""
    output = tmp_path / "cps.safetensors"
    run_cli(tiny_args("sd3", tiny_base("sd3"), write_prompts(tmp_path, "sd3"), output, "--objective", "grpo",
                      "--sde-kind", "cps", "--num-steps", "3", "--optimizer-steps-per-epoch", "2"))
    (line,) = metrics_lines(output)
    assert np.isfinite(line["loss"]) and np.isfinite(line["kl"]) and line["optimizer_steps"] == 2
    assert 0 < line["clip_fraction"] <= 0.5 and line["ratio_mean"] != 1.0
    assert load_pareto_slider(output).training["steps"] == 2


def test_tiny_preset_builds_and_saves_its_base(tmp_path):
    """Without --base the tiny preset saves the tiny model next to the output and trains on it from there."""
    output = tmp_path / "demo.safetensors"
    run_cli(["--preset", "tiny", "--rewards", REWARDS, "--prompts", str(write_prompts(tmp_path, "sd3")),
             "--output", str(output), "--epochs", "1", "--num-steps", "2", "--train-timesteps", "1"])
    base = tmp_path / "demo.tiny-base"
    assert (base / "model_index.json").is_file()
    assert load_pareto_slider(output).base_model == str(base)
    assert sample("sd3", base, output, [(0.5, 0.5)]).shape[1:] == (4, 3, 32, 32)
    # pslider-sample finds that base in the file: without --base it used to try the hub id and fail
    result = CliRunner().invoke(sample_main, ["--backbone", "sd3", "--checkpoint", str(output), "--prompt", PROMPTS[0],
                                              "--weights", "0.5,0.5", "--out", str(tmp_path / "samples")])
    assert result.exit_code == 0, result.output
    assert f"loading {base}, the base recorded in the checkpoint" in result.stderr


def test_fixed_weights_baseline(tiny_base, tmp_path):
    base, output = tiny_base("sd3"), tmp_path / "fixed.safetensors"
    run_cli(tiny_args("sd3", base, write_prompts(tmp_path, "sd3"), output, "--fixed-weights", "0.7,0.3"))
    data = load_pareto_slider(output, "sd3")
    training = data.training
    assert training["method"] == "fixed_weights" and training["early_scalarization_baseline"] is True
    assert training["fixed_weights"] == [0.7, 0.3] and training["preference_mixture"] is None
    assert sum(t.abs().sum() > 0 for k, t in data.lora_state.items() if "lora_B" in k) > 1
    # no preference conditioning was trained: the modules still output zero and w changes nothing
    assert data.module_state["global_mlp.2.weight"].abs().sum() == 0
    first, second = sample("sd3", base, output, [(1.0, 0.0), (0.0, 1.0)])
    assert torch.equal(first, second)
    assert not any(k.startswith("reward_by_w/") for k in metrics_lines(output)[0])


def test_cfg_rollouts_for_an_editing_backbone(tiny_base, tmp_path):
    """nft rollouts with classifier-free guidance: the negative prompt keeps the source image (Kontext)."""
    output = tmp_path / "cfg.safetensors"
    run_cli(tiny_args("fluxkontext", tiny_base("fluxkontext"), write_prompts(tmp_path, "fluxkontext"), output,
                      "--guidance-scale", "3"))
    (line,) = metrics_lines(output)
    assert np.isfinite(line["loss"]) and load_pareto_slider(output).training["config"]["guidance_scale"] == 3.0


def test_mixed_precision_and_gradient_checkpointing(tiny_base, tmp_path):
    """The GPU settings also run on CPU: bf16 autocast over bf16 frozen weights, float32 trained weights."""
    output = tmp_path / "bf16.safetensors"
    run_cli(tiny_args("sd3", tiny_base("sd3"), write_prompts(tmp_path, "sd3"), output,
                      "--mixed-precision", "bf16", "--gradient-checkpointing"))
    data = load_pareto_slider(output, "sd3")
    assert data.training["config"]["mixed_precision"] == "bf16"
    assert all(torch.isfinite(t).all() for t in data.lora_state.values())
    assert data.module_state["global_mlp.2.weight"].abs().sum() > 0


# ---------------------------------------------------------------------- resume
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tiny_base, tmp_path):
    base, prompts = tiny_base("sd3"), write_prompts(tmp_path, "sd3")
    straight, resumed = tmp_path / "a" / "run.safetensors", tmp_path / "b" / "run.safetensors"
    args = ["--lr", "3e-3", "--pref-lr-mult", "10", "--prompts-per-epoch", "2"]
    run_cli(tiny_args("sd3", base, prompts, straight, *args, "--epochs", "3"))
    run_cli(tiny_args("sd3", base, prompts, resumed, *args, "--epochs", "1"))  # "interrupted" after epoch 1
    checkpoints = resumed.with_name("run.checkpoints")
    run_cli(tiny_args("sd3", base, prompts, resumed, *args, "--epochs", "3", "--resume", str(checkpoints)))

    a, b = load_file(straight), load_file(resumed)
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    a_ckpt, b_ckpt = straight.with_name("run.checkpoints") / "epoch-000003", checkpoints / "epoch-000003"
    for group in ("trainable", "old", "ema", "optimizer"):
        x, y = load_file(a_ckpt / f"{group}.safetensors"), load_file(b_ckpt / f"{group}.safetensors")
        assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x), group
    assert [m["reward/brightness"] for m in metrics_lines(straight)] == [
        m["reward/brightness"] for m in metrics_lines(resumed)
    ]
    assert load_pareto_slider(resumed).training["steps"] == 3


# ---------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_names_the_last_checkpoint_and_the_exact_resume_command(tiny_base, tmp_path):
    """SIGINT to a real `pslider-train` mid-run: exit 130 and the command that resumes it (click alone printed only
    "Aborted!")."""
    output, root = tmp_path / "run one" / "run.safetensors", tmp_path / "run one" / "run.checkpoints"
    args = tiny_args("sd3", tiny_base("sd3"), write_prompts(tmp_path, "sd3"), output, "--epochs", "500",
                     "--checkpoint-every", "1", "--no-progress")
    # a suite started in the background by a non-interactive shell inherits SIGINT ignored, and so would the child
    process = subprocess.Popen([str(Path(sys.executable).parent / "pslider-train"), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not (root / "latest").is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-3000:]
    match = re.search(r"Interrupted with (\d+) of 500 epochs done; last checkpoint: (.+) \(epoch (\d+)\)\. Resume "
                      r"with:\n  (.+)\n", stderr)
    assert match, stderr[-3000:]
    last = find_checkpoint(root)
    assert Path(match[2]) == last.path and int(match[3]) == last.state["epoch"] <= int(match[1])
    assert shlex.split(match[4]) == ["pslider-train", *args, "--resume", str(root)]
    assert "Aborted!" not in stderr


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    config = resolve_config({}, {"output": str(tmp_path / "run.safetensors"), "checkpoint_every": 0})
    assert interrupted_message(config, ["--output", config.output], 3) == (
        f"Interrupted with 3 of {config.epochs} epochs done; no checkpoint was written yet (they are written only at "
        "the end with --checkpoint-every 0), so there is nothing to resume: run the same command again to start "
        "over; --checkpoint-every 1 keeps every finished epoch."
    )


# ---------------------------------------------------------------------- NaN / inf
def _reward_module(tmp_path: Path, monkeypatch) -> str:
    name = f"pslider_test_rewards_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import torch\n"
        "calls = []\n"
        "def flaky(batch):\n"
        "    '''NaN on its first call, brightness after that.'''\n"
        "    calls.append(1)\n"
        "    if len(calls) == 1:\n"
        "        return torch.full((len(batch),), float('nan'))\n"
        "    return batch.images.mean(dim=(1, 2, 3))\n"
        "def broken(batch):\n"
        "    '''Always NaN.'''\n"
        "    return torch.full((len(batch),), float('nan'))\n"
        "def darkness(batch):\n"
        "    '''1 - mean pixel value: the exact opposite of brightness.'''\n"
        "    return 1 - batch.images.mean(dim=tuple(range(1, batch.images.ndim)))\n"
        "def loudness(batch):\n"
        "    '''Mean absolute amplitude of the sound generated with each sample.'''\n"
        "    assert batch.audio_sample_rate > 0\n"
        "    return batch.audio.abs().mean(dim=tuple(range(1, batch.audio.ndim)))\n"
        "loudness.needs_audio = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_nan_rewards_skip_the_step_then_training_goes_on(tiny_base, tmp_path, monkeypatch):
    module = _reward_module(tmp_path, monkeypatch)
    output = tmp_path / "nan.safetensors"
    args = tiny_args("sd3", tiny_base("sd3"), write_prompts(tmp_path, "sd3"), output, "--epochs", "2")
    args[args.index("--rewards") + 1] = f"{module}:flaky,saturation"
    run_cli(args)
    first, second = metrics_lines(output)
    assert first["skipped_steps"] == 1 and "loss" not in first
    assert second["optimizer_steps"] == 1 and np.isfinite(second["loss"])
    training = load_pareto_slider(output).training
    assert (training["steps"], training["skipped_steps"]) == (1, 1)


def test_persistent_nan_rewards_abort_with_a_clear_message(tiny_base, tmp_path, monkeypatch):
    module = _reward_module(tmp_path, monkeypatch)
    output = tmp_path / "broken.safetensors"
    args = tiny_args("sd3", tiny_base("sd3"), write_prompts(tmp_path, "sd3"), output, "--epochs", "5",
                     "--max-bad-steps", "2")
    args[args.index("--rewards") + 1] = f"brightness,{module}:broken"
    result = run_cli(args, exit_code=1)
    assert "2 steps in a row were skipped for NaN/inf" in result.output and "--max-bad-steps" in result.output
    assert "reward 1: 4 of 4" in result.output
    assert not output.exists()


def test_audio_rewards_score_ltx2_sound_and_are_refused_for_image_backbones(tiny_base, tmp_path, monkeypatch):
    module = _reward_module(tmp_path, monkeypatch)
    output = tmp_path / "audio.safetensors"
    args = tiny_args("sd3", tiny_base("sd3"), write_prompts(tmp_path, "sd3"), output)
    args[args.index("--rewards") + 1] = f"brightness,{module}:loudness"
    result = run_cli(args, exit_code=2)
    assert "scores audio but --backbone sd3 makes no audio" in result.output and "--backbone ltx2" in result.output
    assert not output.exists()

    args = tiny_args("ltx2", tiny_base("ltx2"), write_prompts(tmp_path, "ltx2"), output)
    args[args.index("--rewards") + 1] = f"brightness,{module}:loudness"
    run_cli(args)  # the trainer decodes the sound generated with each video and passes it to the reward
    (line,) = metrics_lines(output)
    assert line[f"reward/{module}:loudness"] > 0 and line["optimizer_steps"] == 1 and np.isfinite(line["loss"])


# ---------------------------------------------------------------------- it learns what w asks for
def test_training_moves_rewards_in_the_direction_of_w(tiny_base, tmp_path, monkeypatch):
    """Brightness vs darkness on tiny SD3: after 8 epochs w = (1, 0) gives brighter images than w = (0, 1) from
    the same noise (for the base model w does not exist: the gap is 0).

    Measured on this setup, seeds 1-4: gap 0.026 to 0.106 when trained as here, -0.017 to 0.014 when the loss
    ignores w (a uniform 0.5/0.5 scalarization, everything else equal). Threshold 0.02; seed 1 measured 0.065.
    Every trained tensor must have moved (trl's check).
    """
    module = _reward_module(tmp_path, monkeypatch)
    base, output = tiny_base("sd3"), tmp_path / "learn.safetensors"
    config = resolve_config({}, {
        "preset": "tiny", "base": str(base), "rewards": f"brightness,{module}:darkness",
        "prompts": str(write_prompts(tmp_path, "sd3")), "output": str(output), "epochs": 8, "images_per_prompt": 8,
        "prompts_per_epoch": 3, "lr": 1e-2, "pref_lr_mult": 10.0, "seed": 1, "checkpoint_every": 0,
    })
    trainer = ParetoSliderTrainer(config)
    initial = {name: p.detach().clone() for name, p in trainer.policies.named_trainable}
    trainer.train()
    unchanged = [n for n, p in trainer.policies.named_trainable if torch.equal(p.detach(), initial[n])]
    assert unchanged == []

    images = sample("sd3", base, output, [(1.0, 0.0), (0.0, 1.0)], num_steps=config.num_steps, seed=123)
    brightness = get_reward("brightness")
    bright = [brightness(RewardBatch(x, [""] * len(x))).mean().item() for x in images]
    assert bright[0] - bright[1] > 0.02, bright


def test_modules_first_and_advantage_std_reach_the_training_step(tiny_base, tmp_path):
    """--modules-first 0.5 of 2 epochs: epoch 0 steps the preference modules only, epoch 1 the LoRA too; a
    fixed-weights run (no modules) ignores it and trains its LoRA from the first epoch. --advantage-std pooled
    scales the advantages by the batch's pooled std."""
    base, prompts = tiny_base("sd3"), write_prompts(tmp_path, "sd3")

    def trainer(**extra):
        return ParetoSliderTrainer(resolve_config({}, {
            "preset": "tiny", "base": str(base), "rewards": REWARDS, "prompts": str(prompts), "epochs": 2,
            "output": str(tmp_path / "warm.safetensors"), "prompts_per_epoch": 1, "num_steps": 2,
            "train_timesteps": 2, "lr": 1e-2, "checkpoint_every": 0, "modules_first": 0.5, **extra,
        }))

    def moved(params, before):
        return [not torch.equal(p.detach(), b) for p, b in zip(params, before)]

    run = trainer()
    lora = [p.detach().clone() for p in run.policies.lora_parameters]
    modules = [p.detach().clone() for p in run.policies.module_parameters]
    run.train_epoch(0)
    run.epoch = 1
    assert not any(moved(run.policies.lora_parameters, lora))
    assert any(moved(run.policies.module_parameters, modules))
    run.train_epoch(1)
    assert any(moved(run.policies.lora_parameters, lora))

    # --advantage-std reaches the advantages: pooled differs from the group std on the same rewards
    plan = run.plan(1)
    rewards = torch.rand(len(plan.group_of), 2, generator=torch.Generator().manual_seed(0))
    pooled = trainer(advantage_std="pooled").compute_advantages(plan, rewards)
    torch.testing.assert_close(pooled, group_advantages(rewards * run.signs, plan.group_of, std="pooled"))
    assert not torch.allclose(pooled, run.compute_advantages(plan, rewards))

    fixed = trainer(fixed_weights="0.5,0.5")
    lora = [p.detach().clone() for p in fixed.policies.lora_parameters]
    fixed.train_epoch(0)
    assert any(moved(fixed.policies.lora_parameters, lora))


def test_reward_ranks_train_the_old_policy_alike_and_a_resume_must_keep_them(tiny_base, tmp_path):
    """--lora-reward-ranks: the file holds 2 shared + 2 x 1 reward ranks, the lagged old policy (a second adapter,
    added after the slider's) is scaled by w too, and resuming with another count is refused."""
    base, prompts = tiny_base("sd3"), write_prompts(tmp_path, "sd3")
    output = tmp_path / "ranked.safetensors"
    run_cli(tiny_args("sd3", base, prompts, output, "--lora-rank", "2", "--lora-reward-ranks", "1"))
    data = load_pareto_slider(output, "sd3")
    assert (data.lora.rank, data.module_config.reward_ranks, data.format_version) == (4, 1, 2)

    run = ParetoSliderTrainer(resolve_config({}, {
        "preset": "tiny", "base": str(base), "rewards": REWARDS, "prompts": str(prompts), "epochs": 1,
        "output": str(tmp_path / "old.safetensors"), "prompts_per_epoch": 1, "num_steps": 2, "train_timesteps": 2,
        "lora_rank": 2, "lora_reward_ranks": 1,
    }))
    randomize_(run.policies.old)
    run.policies.old_preference.requires_grad_(False)
    x, sigma, cond = transformer_inputs("sd3", get_backbone("sd3").tiny_pipeline(seed=0), PROMPTS[:2])  # encoders kept
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with torch.no_grad():
        old = run.policies(x, sigma, cond, w, OLD)
        for layer in run.pipe.transformer.modules():  # zero reward b's rank (the last) of the old adapter
            if hasattr(layer, "lora_B") and OLD_ADAPTER in layer.lora_B:
                layer.lora_B[OLD_ADAPTER].weight[:, -1] = 0
        without_b = run.policies(x, sigma, cond, w, OLD)
    torch.testing.assert_close(without_b[0], old[0])  # at (1, 0) reward b's rank is scaled to zero
    assert (without_b[1] - old[1]).abs().max() > 1e-4  # at (0, 1) it is not

    checkpoints = output.with_name("ranked.checkpoints")
    result = run_cli(tiny_args("sd3", base, prompts, output, "--lora-rank", "2", "--lora-reward-ranks", "2",
                               "--epochs", "2", "--resume", str(checkpoints)), exit_code=2)
    assert "lora_reward_ranks: checkpoint 1, now 2" in result.output


# ---------------------------------------------------------------------- several processes
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_under_accelerate_launch(tiny_base, tmp_path):
    """DDP on 2 CPU processes (gloo): rollouts are split, advantages gathered, gradients averaged; the result
    matches one process, since noise, timesteps and preferences are drawn per sample index. (Measured: relative
    differences below 1e-4, from Adam amplifying rounding in near-zero gradients.)"""
    base, prompts = tiny_base("sd3"), write_prompts(tmp_path, "sd3")
    single, double = tmp_path / "one" / "x.safetensors", tmp_path / "two" / "x.safetensors"
    run_cli(tiny_args("sd3", base, prompts, single))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", "trainer.cli",
        *tiny_args("sd3", base, prompts, double),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = load_pareto_slider(double, "sd3")
    assert data.training["processes"] == 2 and data.training["steps"] == 1
    one, two = load_file(single), load_file(double)
    for key in one:  # same samples and noise, gradients summed in another order: equal up to float rounding
        assert (one[key] - two[key]).norm() <= 1e-3 * one[key].norm() + 1e-7, key
