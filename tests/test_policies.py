"""The trained, old and reference policies on one transformer: each forward computes its own policy."""

from __future__ import annotations

import torch
from helpers import randomize_, transformer_inputs

from pslider_core import LoraSpec, ParetoSlider, get_backbone
from trainer.policies import CURRENT, OLD, REFERENCE, Policies

PROMPTS = ["a red circle", "a blue square"]


def test_each_forward_uses_its_own_policy_whatever_ran_before(backbone):
    adapter = get_backbone(backbone)
    pipe = adapter.tiny_pipeline(seed=0)
    x, sigma, cond = transformer_inputs(backbone, pipe, PROMPTS)
    with torch.no_grad():
        base = adapter.predict_velocity(pipe, pipe.transformer, x, sigma, cond)
    slider = ParetoSlider.attach(pipe.transformer, backbone, ["a", "b"], lora=LoraSpec(4, 8, adapter.lora_target_modules))
    policies = Policies(slider, adapter, pipe, conditioned=True, with_old=True)
    randomize_(policies.trainable, seed=1, std=0.3)
    randomize_(policies.old, seed=2, std=0.3)
    w = torch.tensor([[0.3, 0.7], [0.9, 0.1]])
    with torch.no_grad():
        first = {p: policies(x, sigma, cond, w, p) for p in (CURRENT, OLD, REFERENCE)}
        again = {p: policies(x, sigma, cond, w, p) for p in (REFERENCE, CURRENT, REFERENCE, OLD)}
    # adapters disabled and no w: the base model (LTX-2's peft-wrapped attention rounds differently, ~7e-7)
    torch.testing.assert_close(first[REFERENCE], base, rtol=1e-5, atol=1e-6)
    assert (first[CURRENT] - first[OLD]).abs().max() > 1e-3
    assert (first[CURRENT] - base).abs().max() > 1e-3
    for policy, value in again.items():
        assert torch.equal(value, first[policy]), policy
    assert all(p.requires_grad for p in policies.trainable) and not any(p.requires_grad for p in policies.old)
