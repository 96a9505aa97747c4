"""The w-conditioned LoRA (`reward_ranks`): each reward's ranks scaled by its weight, on every backbone's tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import randomize_, transformer_inputs
from safetensors import safe_open
from safetensors.torch import save_file

from pslider_core import LoraSpec, ParetoSlider, ParetoSliderFileError, PreferenceModules, get_backbone, read_header
from pslider_core.file_format import METADATA_KEY
from pslider_core.module_config import PreferenceModuleConfig
from trainer.config import TrainConfig

SHARED, PER_REWARD = 2, 2  # LoRA rank 6: ranks 0-1 shared, 2-3 reward a's, 4-5 reward b's
PROMPTS = ["a red circle", "a blue square"]


def _ranked(backbone):
    """A tiny pipeline with a random (so visible) w-conditioned slider attached."""
    adapter = get_backbone(backbone)
    pipe = adapter.tiny_pipeline(seed=0)
    slider = ParetoSlider.attach(
        pipe.transformer, backbone, ["a", "b"], lora=LoraSpec(SHARED + 2 * PER_REWARD, 6, adapter.lora_target_modules),
        reward_ranks=PER_REWARD, base_model="tiny",
    )
    randomize_(slider.trainable_parameters())
    return pipe, slider


@pytest.fixture
def ranked(backbone):
    return _ranked(backbone)


def _velocity(backbone, pipe, transformer, modules, w, inputs):
    adapter = get_backbone(backbone)
    with adapter.condition(transformer, modules, torch.as_tensor(w, dtype=torch.float32)):
        return adapter.predict_velocity(pipe, transformer, *inputs)


def _lora_b(transformer):
    return [p for n, p in transformer.named_parameters() if "lora_B" in n]


def test_a_w_conditioned_lora_is_the_plain_lora_with_its_ranks_scaled_by_w(backbone, ranked):
    """What the pack relies on: at one w the slider is a plain LoRA whose reward ranks' B columns are times w_m."""
    pipe, slider = ranked
    inputs = transformer_inputs(backbone, pipe, PROMPTS)
    plain = PreferenceModules(PreferenceModuleConfig(**{**slider.modules.config.to_dict(), "reward_ranks": 0}))
    plain.load_state_dict(slider.modules.state_dict())
    for w in ([0.3, 0.7], [1.0, 0.0]):
        with torch.no_grad():
            want = _velocity(backbone, pipe, slider.transformer, slider.modules, w, inputs)
            saved = [b.clone() for b in _lora_b(slider.transformer)]
            scale = torch.tensor([1.0] * SHARED + [w[0]] * PER_REWARD + [w[1]] * PER_REWARD)
            for b in _lora_b(slider.transformer):
                b.mul_(scale)
            got = _velocity(backbone, pipe, slider.transformer, plain, w, inputs)
            unscaled = _velocity(backbone, pipe, slider.transformer, slider.modules, w, inputs)
            for b, original in zip(_lora_b(slider.transformer), saved):
                b.copy_(original)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        if w[0] not in (0.0, 1.0):  # scaling by 0.3 / 0.7 twice differs from once: the hook did scale
            assert not torch.allclose(unscaled, want, atol=1e-4)


def test_each_sample_of_a_batch_gets_its_own_w(backbone, ranked):
    pipe, slider = ranked
    inputs = transformer_inputs(backbone, pipe, PROMPTS)
    mixed = torch.tensor([[1.0, 0.0], [0.2, 0.8]])
    with torch.no_grad():
        both = _velocity(backbone, pipe, slider.transformer, slider.modules, mixed, inputs)
        for i in range(2):
            same = _velocity(backbone, pipe, slider.transformer, slider.modules, mixed[i].expand(2, 2), inputs)
            torch.testing.assert_close(both[i], same[i], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(both[0], same[0], atol=1e-4)  # row 0 under row 1's w differs


def test_a_corner_trains_its_own_and_the_shared_ranks_only(backbone, ranked):
    """The point of reward ranks: at w = (1, 0) no gradient reaches reward b's ranks, so the corners do not tug."""
    pipe, slider = ranked
    inputs = transformer_inputs(backbone, pipe, PROMPTS)
    _velocity(backbone, pipe, slider.transformer, slider.modules, [1.0, 0.0], inputs).pow(2).mean().backward()
    a_ranks = slice(SHARED, SHARED + PER_REWARD)
    b_ranks = slice(SHARED + PER_REWARD, None)
    layers = [(n, p) for n, p in slider.transformer.named_parameters() if "lora_" in n and p.grad is not None]
    assert layers
    for name, param in layers:
        grad = param.grad if "lora_B" in name else param.grad.T  # rank is B's column, A's row
        assert grad[:, b_ranks].abs().max() == 0, name
    assert any(p.grad.abs().sum() > 0 for n, p in layers if "lora_B" in n and p.grad[:, a_ranks].abs().sum() > 0)


def test_checkpointed_blocks_recompute_with_the_calls_rank_scales(backbone, ranked):
    pipe, slider = ranked
    inputs = transformer_inputs(backbone, pipe, PROMPTS)
    ws = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    grads = []
    for checkpointing in (False, True):
        slider.transformer.zero_grad()
        if checkpointing:
            slider.transformer.enable_gradient_checkpointing()
        _velocity(backbone, pipe, slider.transformer, slider.modules, ws, inputs).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in _lora_b(slider.transformer)])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)


def test_the_file_round_trips_and_says_format_2(backbone, ranked, tmp_path):
    pipe, slider = ranked
    path = slider.save(tmp_path / "ranked.safetensors")
    assert read_header(path)["format_version"] == 2
    assert read_header(path)["module_config"]["reward_ranks"] == PER_REWARD
    fresh = get_backbone(backbone).tiny_pipeline(seed=0)
    loaded = ParetoSlider.from_file(path, fresh.transformer, backbone=backbone)
    inputs = transformer_inputs(backbone, pipe, PROMPTS)
    with torch.no_grad():
        want = _velocity(backbone, pipe, slider.transformer, slider.modules, [0.4, 0.6], inputs)
        got = _velocity(backbone, fresh, loaded.transformer, loaded.modules, [0.4, 0.6], inputs)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def _rewrite_meta(path, **changes):
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    for key, value in changes.items():
        if key == "reward_ranks":
            meta["module_config"]["reward_ranks"] = value
        else:
            meta[key] = value
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 1}, "format 1, which cannot hold module_config.reward_ranks"),
    ({"reward_ranks": 4}, "asks for 8 reward-owned LoRA ranks but the LoRA has rank 6"),
    ({"reward_ranks": 1.5}, "reward_ranks must be an integer from 0"),
])
def test_a_file_whose_reward_ranks_do_not_hold_is_refused(tmp_path, changes, message):
    path = _ranked("toy")[1].save(tmp_path / "ranked.safetensors")
    _rewrite_meta(path, **changes)
    with pytest.raises(ParetoSliderFileError, match=message):
        read_header(path)


def test_a_plain_slider_is_still_written_as_format_1(tmp_path):
    adapter = get_backbone("toy")
    pipe = adapter.tiny_pipeline(seed=0)
    slider = ParetoSlider.attach(pipe.transformer, "toy", ["a", "b"], lora=LoraSpec(4, 8, adapter.lora_target_modules))
    assert read_header(slider.save(tmp_path / "plain.safetensors"))["format_version"] == 1


def test_reward_ranks_must_fit_in_the_lora():
    adapter = get_backbone("toy")
    pipe = adapter.tiny_pipeline(seed=0)
    with pytest.raises(ValueError, match="asks for 6 reward-owned LoRA ranks but the LoRA has rank 4"):
        ParetoSlider.attach(pipe.transformer, "toy", ["a", "b"], lora=LoraSpec(4, 8, adapter.lora_target_modules),
                            reward_ranks=3)


@pytest.mark.parametrize("settings, message", [
    ({"fixed_weights": "1,0", "lora_reward_ranks": 2}, "--lora-reward-ranks needs a preference w"),
    ({"lora_rank": 0}, "--lora-rank must be >= 1"),
    ({"lora_reward_ranks": -1}, "--lora-reward-ranks must be >= 0"),
])
def test_the_trainer_refuses_reward_ranks_that_cannot_work(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)
