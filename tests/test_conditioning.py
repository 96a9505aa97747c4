"""Preference conditioning on every registered backbone's tiny transformer (real diffusers models)."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_, transformer_inputs

from pslider_core import LoraSpec, ParetoSlider, get_backbone
from pslider_core.backbones import select_conditioning
from pslider_core.conditioning import preference_hooks

PROMPTS = ["a red circle", "a blue square"]


def _velocity(backbone, pipe, slider, x, sigma, cond, w=None):
    adapter = get_backbone(backbone)
    if w is None:
        return adapter.predict_velocity(pipe, slider.transformer, x, sigma, cond)
    with slider.condition(w):
        return adapter.predict_velocity(pipe, slider.transformer, x, sigma, cond)


@pytest.fixture
def fresh(backbone):
    """A fresh tiny pipeline (tests below change its weights) with a ParetoSlider attached."""
    adapter = get_backbone(backbone)
    pipe = adapter.tiny_pipeline(seed=0)
    slider = ParetoSlider.attach(
        pipe.transformer, backbone, ["a", "b"], lora=LoraSpec(4, 8, adapter.lora_target_modules)
    )
    return pipe, slider


def test_zero_init_is_bit_identical_to_base(backbone, fresh):
    pipe, slider = fresh
    x, sigma, cond = transformer_inputs(backbone, pipe, PROMPTS)
    with torch.no_grad():
        base = _velocity(backbone, pipe, slider, x, sigma, cond)
        for w in ([1.0, 0.0], [0.0, 1.0], [0.3, 0.7], torch.tensor([[1.0, 0.0], [0.2, 0.8]])):
            assert torch.equal(_velocity(backbone, pipe, slider, x, sigma, cond, w), base)


def test_random_modules_make_w_matter_and_gradients_reach_everything(backbone, fresh):
    pipe, slider = fresh
    randomize_(slider.trainable_parameters())
    x, sigma, cond = transformer_inputs(backbone, pipe, PROMPTS)
    with torch.no_grad():
        v1 = _velocity(backbone, pipe, slider, x, sigma, cond, [1.0, 0.0])
        v2 = _velocity(backbone, pipe, slider, x, sigma, cond, [0.0, 1.0])
    assert (v1 - v2).abs().max() > 1e-4
    loss = _velocity(backbone, pipe, slider, x, sigma, cond, [0.4, 0.6]).pow(2).mean()
    loss.backward()
    lora = [p for n, p in slider.transformer.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)
    # a few projections cannot reach the output (the last SD3 block discards its text stream)
    reached = sum(bool(p.grad.abs().sum() > 0) for p in lora)
    assert reached >= 0.8 * len(lora)
    for name, p in slider.modules.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    frozen = [p for n, p in slider.transformer.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad for p in frozen)


def test_per_sample_w_equals_each_sample_alone(backbone, fresh):
    pipe, slider = fresh
    randomize_(slider.trainable_parameters(), seed=1)
    x, sigma, cond = transformer_inputs(backbone, pipe, PROMPTS)
    w = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    with torch.no_grad():
        both = _velocity(backbone, pipe, slider, x, sigma, cond, w)
        for i in range(2):
            alone = _velocity(
                backbone, pipe, slider, x[i : i + 1], sigma[i : i + 1], select_conditioning(cond, [i]), w[i]
            )
            torch.testing.assert_close(both[i : i + 1], alone, atol=1e-5, rtol=1e-4)


def test_cfg_doubled_batch_gets_the_right_w(backbone, fresh):
    pipe, slider = fresh
    randomize_(slider.trainable_parameters(), seed=2)
    x, sigma, cond = transformer_inputs(backbone, pipe, PROMPTS)
    w = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    with torch.no_grad():
        single = _velocity(backbone, pipe, slider, x, sigma, cond, w)
        doubled = _velocity(
            backbone, pipe, slider, torch.cat([x, x]), torch.cat([sigma, sigma]),
            select_conditioning(cond, [0, 1, 0, 1]), w,
        )
    torch.testing.assert_close(doubled[:2], single, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(doubled[2:], single, atol=1e-5, rtol=1e-4)


def test_hooks_are_removed_after_the_context(backbone, fresh):
    pipe, slider = fresh
    x, sigma, cond = transformer_inputs(backbone, pipe, PROMPTS)
    with torch.no_grad():
        before = _velocity(backbone, pipe, slider, x, sigma, cond)
        randomize_(slider.modules.parameters(), seed=3)
        with pytest.raises(RuntimeError, match="boom"):
            with slider.condition([1.0, 0.0]):
                raise RuntimeError("boom")
        after = _velocity(backbone, pipe, slider, x, sigma, cond)
    assert torch.equal(before, after)


def _gradients(backbone: str, checkpointing: bool) -> list[torch.Tensor]:
    adapter = get_backbone(backbone)
    pipe = adapter.tiny_pipeline(seed=0)
    slider = ParetoSlider.attach(pipe.transformer, backbone, ["a", "b"], lora=LoraSpec(4, 8, adapter.lora_target_modules))
    params = list(slider.trainable_parameters())
    randomize_(params, seed=4, std=0.3)
    if checkpointing:
        pipe.transformer.enable_gradient_checkpointing()  # diffusers' own switch, after the hooks were added
    pipe.transformer.train()
    x, sigma, cond = transformer_inputs(backbone, pipe, PROMPTS)
    _velocity(backbone, pipe, slider, x, sigma, cond, torch.tensor([[0.3, 0.7], [0.8, 0.2]])).pow(2).mean().backward()
    return [p.grad.clone() for p in params]


def test_gradient_checkpointing_recomputes_the_conditioned_blocks_exactly(backbone):
    """Blocks recomputed in the backward pass see the vectors of their forward (Kontext: and its token mask), so
    checkpointing changes no gradient; with the hooks gone at recomputation time they differed by up to 25%."""
    plain, checkpointed = _gradients(backbone, False), _gradients(backbone, True)
    assert any(g.abs().sum() > 0 for g in plain)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_remove_unregisters_every_hook(backbone, fresh):
    pipe, slider = fresh
    transformer = pipe.transformer
    hooked = [m for m in transformer.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert len(hooked) >= 2  # registered at attach: the transformer itself and the global module at least
    preference_hooks(transformer, get_backbone(backbone)).remove()
    assert not [m for m in transformer.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert preference_hooks(transformer, get_backbone(backbone)) is not None  # re-registered on demand
