"""TrainConfig: TOML and command line agree, the command line wins, presets sit underneath, bad combinations fail."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from pslider_core import get_backbone
from trainer.cli import main
from trainer.config import PRESETS, TrainConfig, read_toml, resolve_config, to_toml
from trainer.data import build_rewards


def _toml(tmp_path, text: str):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_every_field_is_a_cli_option_and_a_toml_key(tmp_path):
    options = {p.name for p in main.params}
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert set(fields) <= options
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"], f"{f.name} has no help text"
    # the resolved configuration written as TOML reads back to the same configuration
    config = resolve_config({}, {"preset": "tiny", "rewards": "brightness,saturation", "fixed_weights": "0.7,0.3"})
    again = resolve_config(read_toml(_toml(tmp_path, to_toml(config))), {})
    assert again == config


def test_precedence_defaults_preset_toml_cli(tmp_path):
    path = _toml(tmp_path, 'preset = "tiny"\nlr = 0.002\nepochs = 7\nrewards = ["brightness", "saturation"]\n')
    config = resolve_config(read_toml(path), {"epochs": 3})
    assert config.epochs == 3  # command line over TOML
    assert config.lr == 0.002  # TOML over preset
    assert config.images_per_prompt == PRESETS["tiny"]("sd3")["images_per_prompt"]  # preset over default
    assert config.weight_decay == TrainConfig().weight_decay  # default
    assert config.rewards == "brightness,saturation"  # a TOML list of specs is joined


def test_cli_overrides_toml_through_click(tmp_path):
    path = _toml(tmp_path, "epochs = 7\nlr = 0.002\n")
    result = CliRunner().invoke(main, ["--config", str(path), "--epochs", "3", "--no-ema", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = read_toml(_toml(tmp_path, result.output))
    assert printed["epochs"] == 3 and printed["lr"] == 0.002 and printed["ema"] is False


def test_paper_preset_carries_the_reference_hyperparameters():
    config = resolve_config({}, {"preset": "paper"})
    assert (config.images_per_prompt, config.slots_per_prompt, config.num_steps, config.solver) == (24, 3, 25, "dpm2")
    assert (config.height, config.width, config.prompts_per_epoch, config.epochs) == (512, 512, 48, 31)
    assert (config.lr, config.weight_decay, config.max_grad_norm) == (3e-4, 1e-4, 1.0)
    assert (config.beta, config.adv_clip, config.kl_weight, config.lora_rank, config.lora_alpha) == (
        0.1, 5.0, 1e-4, 32, 64.0,
    )
    assert config.train_timesteps == 24 and config.guidance_scale == 1.0


def test_unknown_toml_key_is_rejected_with_the_closest_name(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'images_per_prompt'"):
        read_toml(_toml(tmp_path, "images_per_promt = 8\n"))
    with pytest.raises(ValueError, match="not valid TOML"):
        read_toml(_toml(tmp_path, "epochs = = 3\n"))
    result = CliRunner().invoke(main, ["--config", str(_toml(tmp_path, "learning_rate = 1.0\n"))])
    assert result.exit_code == 2 and "Unknown key 'learning_rate'" in result.output


@pytest.mark.parametrize(
    "values, message",
    [
        ({"images_per_prompt": 10, "slots_per_prompt": 3}, "multiple of --slots-per-prompt"),
        ({"images_per_prompt": 3, "slots_per_prompt": 3}, "need >= 2 per group"),
        ({"train_timesteps": 30, "num_steps": 25}, "cannot exceed --num-steps"),
        ({"fixed_weights": "0.5,-0.5"}, "non-negative"),
        ({"fixed_weights": "a,b"}, "numbers separated by commas"),
        ({"lr": 0.0}, "--lr must be a positive number"),
        ({"objective": "ppo"}, "--objective must be one of"),
        ({"backbone": "sdxl"}, "Unknown backbone 'sdxl'"),
        ({"preference_mixture": "corners=0.5"}, "sum to 1"),
        ({"corners_first": 1.0}, "--corners-first is the share of epochs"),
        ({"corners_first": float("nan")}, "--corners-first is the share of epochs"),
        ({"modules_first": 1.0}, "--modules-first is the share of epochs"),
        ({"modules_first": -0.1}, "--modules-first is the share of epochs"),
        ({"mixed_precision": "fp16", "device": "cpu"}, "fp16 needs a GPU"),
        ({"sde_window": 40, "num_steps": 25}, "--sde-window"),
        ({"objective": "grpo", "guidance_scale": 4.5}, "--guidance-scale 1"),
    ],
)
def test_bad_combinations_name_the_fix(values, message):
    with pytest.raises(ValueError, match=message):
        resolve_config({}, values)


def test_fingerprint_ignores_only_resumable_settings():
    base = resolve_config({}, {"rewards": "brightness,saturation"})
    assert base.fingerprint() == dataclasses.replace(base, epochs=99, output="other.safetensors").fingerprint()
    assert base.fingerprint() != dataclasses.replace(base, lr=1e-3).fingerprint()
    assert base.fingerprint() != dataclasses.replace(base, fixed_weights=(0.5, 0.5)).fingerprint()


CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"


@pytest.mark.parametrize("name", ["sd3", "fluxkontext", "ltx2"])
def test_shipped_presets_are_valid_configs(name):
    config = resolve_config(read_toml(CONFIGS / f"{name}.toml"), {"prompts": "p.txt", "output": "o.safetensors"})
    rewards = build_rewards(config, get_backbone(name))  # specs parse and fit the backbone (models load lazily)
    assert config.backbone == name and len(rewards) >= 2
    assert config.images_per_prompt % config.slots_per_prompt == 0


@pytest.mark.parametrize("name", ["accelerate_multi_gpu.yaml", "accelerate_multi_node.yaml"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type == "MULTI_GPU" and config.num_processes >= 2


def test_docs_list_every_option():
    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f"`--{f.name.replace('_', '-')}`" not in text]
    assert not missing, f"docs/training.md does not list {missing}"
