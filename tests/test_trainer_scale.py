"""What real-scale runs switch on, exercised on the tiny bases: the shipped presets as shipped, bf16 with gradient
checkpointing on every backbone, prompts encoded once with the text encoders released, sizes checked up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import save_tiny_clip, save_tiny_dinov2
from test_trainer import metrics_lines, run_cli, tiny_args, tiny_base, write_prompts  # noqa: F401  (fixture)

from pslider_core import get_backbone, load_pareto_slider
from pslider_core.rewards.spec import format_spec, parse_reward_list, parse_spec
from trainer.config import read_toml, resolve_config
from trainer.trainer import ParetoSliderTrainer

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "trainer" / "configs").glob("*.toml"))
CLIP_REWARDS = {"pickscore", "pickscore_photorealism", "clip_score", "clip_style", "clip_fidelity"}


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory):
    return {"clip": save_tiny_clip(tmp_path_factory.mktemp("clip")),
            "dinov2": save_tiny_dinov2(tmp_path_factory.mktemp("dinov2"))}


def tiny_rewards(specs: list[str], models: dict[str, str]) -> str:
    """The preset's rewards with their models pointed at tiny local checkpoints (the only change to them)."""
    out = []
    for spec in specs:
        name, params = parse_spec(spec)
        if name in CLIP_REWARDS:
            params = {**params, "model": models["clip"]}
            if name.startswith("pickscore"):
                params["processor"] = models["clip"]
        elif name == "dinov2_fidelity":
            params = {**params, "model": models["dinov2"]}
        out.append(format_spec(name, params))
    return ",".join(out)


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_shipped_preset_trains_as_shipped_on_its_tiny_base(preset, tiny_base, reward_models, tmp_path):
    """Only the base, the sizes (pixels, frames, text tokens) and the counts (epochs, prompts, rollouts, steps,
    micro-batch) are overridden; every other setting (bf16, gradient checkpointing, LoRA, conditioning, offloading,
    mixture, objective...) runs as the file ships it."""
    shipped = read_toml(preset)
    backbone = shipped["backbone"]
    adapter = get_backbone(backbone)
    size = {"num_frames": 1, **adapter.tiny_sample_size}
    slots = shipped.get("slots_per_prompt", 3)
    overrides = {
        "base": "" if backbone == "toy" else str(tiny_base(backbone)),  # toy: the shipped toy base is its base
        "height": size["height"], "width": size["width"], "num_frames": size["num_frames"],
        "epochs": 1, "prompts_per_epoch": 1, "images_per_prompt": 2 * slots, "num_steps": 2, "train_timesteps": 2,
        "batch_size": 8, "prompts": str(write_prompts(tmp_path, backbone)), "output": str(tmp_path / "out.safetensors"),
        "rewards": tiny_rewards(list(parse_reward_list(",".join(shipped["rewards"]))), reward_models),
    }
    if "max_sequence_length" in shipped:
        overrides["max_sequence_length"] = 16
    config = resolve_config(shipped, overrides)
    for key, value in shipped.items():
        if key not in overrides:
            assert getattr(config, key) == (tuple(value) if isinstance(value, list) else value), key
    trainer = ParetoSliderTrainer(config)
    before = {n: p.detach().clone() for n, p in trainer.policies.named_trainable}
    trainer.train()
    moved = [n for n, p in trainer.policies.named_trainable if not torch.equal(p.detach(), before[n])]
    assert len(moved) == len(before)
    data = load_pareto_slider(config.output_path(), backbone)
    assert data.training["config"]["gradient_checkpointing"] == shipped.get("gradient_checkpointing", False)
    assert all(torch.isfinite(t).all() for t in data.lora_state.values())


def _run(backbone: str, base: Path, folder: Path, name: str, *extra: str) -> Path:
    """One tiny run; the prompts file (whose source paths seed Kontext's preferences) is shared by every run."""
    output = folder / f"{name}.safetensors"
    run_cli(tiny_args(backbone, base, write_prompts(folder, backbone), output, "--checkpoint-every", "0", *extra))
    return output


def test_gradient_checkpointing_changes_no_result(backbone, tiny_base, tmp_path):
    """float32: a run with --gradient-checkpointing writes the same tensors as one without (the conditioned blocks
    are recomputed exactly); bf16 autocast with checkpointing and both preference paths trains every tensor."""
    base = tiny_base(backbone)
    plain = load_pareto_slider(_run(backbone, base, tmp_path, "plain"))
    checkpointed = load_pareto_slider(_run(backbone, base, tmp_path, "ckpt", "--gradient-checkpointing"))
    for key, value in {**plain.lora_state, **plain.module_state}.items():
        other = {**checkpointed.lora_state, **checkpointed.module_state}[key]
        torch.testing.assert_close(other, value, rtol=1e-5, atol=1e-7, msg=key)

    bf16 = load_pareto_slider(_run(backbone, base, tmp_path, "bf16", "--gradient-checkpointing", "--mixed-precision",
                                   "bf16", "--conditioning-mode", "global+block"))
    lora_b = [t for k, t in bf16.lora_state.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 and torch.isfinite(t).all() for t in lora_b)
    assert bf16.module_state["block_projector.8.weight"].abs().sum() > 0


class _Calls:
    """Counts forward calls of the pipeline's text encoders."""

    def __init__(self, pipe, names: tuple[str, ...]) -> None:
        self.count = 0
        for name in names:
            getattr(pipe, name).register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.count += 1


@pytest.mark.parametrize("offload", [True, False])
def test_prompts_are_encoded_once_per_run(offload, tiny_base, tmp_path):
    """Offloading: every prompt is encoded before training and the text encoders are released. Without it the
    encoders stay, run in the first epoch only, and three epochs over the same prompts call them no more."""
    backbone = "ltx2"
    config = resolve_config({}, {
        "backbone": backbone, "preset": "tiny", "base": str(tiny_base(backbone)), "rewards": "brightness,saturation",
        "prompts": str(write_prompts(tmp_path, backbone)), "output": str(tmp_path / f"{offload}.safetensors"),
        "epochs": 3, "prompts_per_epoch": 0, "num_steps": 2, "train_timesteps": 1, "batch_size": 2,
        "checkpoint_every": 0, "offload_text_encoders": offload, "progress": False,
    })
    trainer = ParetoSliderTrainer(config)
    names = trainer.adapter.text_encoder_names
    assert trainer.prompt_cache.complete == offload
    if offload:
        assert all(getattr(trainer.pipe, name) is None for name in names)
        metrics = trainer.train_epoch(0)
        assert metrics["memory/prompt_cache_gb"] > 0
        return
    calls = _Calls(trainer.pipe, names)
    trainer.train_epoch(0)
    first = calls.count
    assert first > 0
    trainer.train_epoch(1)
    trainer.train_epoch(2)
    assert calls.count == first  # 0 encoder calls after the first epoch
    assert all(getattr(trainer.pipe, name) is not None for name in names) and trainer.prompt_cache.complete


def test_offloaded_and_resident_encoders_train_the_same(tiny_base, tmp_path):
    base = tiny_base("fluxkontext")  # its cache also holds the source latents (VAE encoded once)
    files = [load_pareto_slider(_run("fluxkontext", base, tmp_path, name, flag))
             for name, flag in (("offloaded", "--offload-text-encoders"), ("resident", "--no-offload-text-encoders"))]
    for key, value in files[0].lora_state.items():
        assert torch.equal(files[1].lora_state[key], value), key


def test_a_size_the_base_cannot_render_stops_before_rollouts(tiny_base, tmp_path):
    output = tmp_path / "big.safetensors"
    args = tiny_args("sd3", tiny_base("sd3"), write_prompts(tmp_path, "sd3"), output, "--height", "512", "--width", "512")
    result = run_cli(args, exit_code=1)
    assert "renders at most 128x128 px" in result.output and "--height and --width" in result.output
    assert not output.exists() and not output.with_name("big.checkpoints").exists()
