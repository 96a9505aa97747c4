"""Weights -> simplex: valid input is normalized, every invalid input names the broken rule."""

from __future__ import annotations

import math

import pytest
import torch

from pslider_core import PreferenceSpec, normalize_weights
from pslider_core.module_config import PreferenceModuleConfig
from pslider_core.modules import PreferenceModules


def test_normalizes_vectors_and_batches():
    torch.testing.assert_close(normalize_weights([3, 1], 2), torch.tensor([0.75, 0.25]))
    out = normalize_weights([[1, 1, 2], [0, 0, 5]], 3)
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.25, 0.5], [0.0, 0.0, 1.0]]))


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0], "Got 1 weights but the model has 2 rewards"),
        ([1.0, 2.0, 3.0], "Got 3 weights"),
        ([math.nan, 1.0], "finite"),
        ([math.inf, 1.0], "finite"),
        ([-0.5, 1.0], "non-negative"),
        ([0.0, 0.0], "must not all be zero"),
        ([[[1.0, 0.0]]], "vector"),
    ],
)
def test_invalid_weights_raise_clear_errors(weights, message):
    with pytest.raises(ValueError, match=message):
        PreferenceSpec(("photo", "sketch")).normalize(weights)


def test_error_names_the_rewards():
    with pytest.raises(ValueError, match=r"\(photo, sketch\)"):
        PreferenceSpec(("photo", "sketch")).normalize([1.0])


def test_spec_validation():
    with pytest.raises(ValueError, match="unique"):
        PreferenceSpec(("a", "a"))
    with pytest.raises(ValueError, match="descriptions"):
        PreferenceSpec(("a", "b"), ("only one",))


def test_modules_start_at_zero_and_follow_config():
    modules = PreferenceModules(PreferenceModuleConfig(num_rewards=3, inner_dim=16, num_freqs=2))
    g, m = modules(torch.rand(4, 3))
    assert g.shape == (4, 16) and m.shape == (4, 16)
    assert not g.any() and not m.any()
    only_global = PreferenceModules(PreferenceModuleConfig(num_rewards=2, inner_dim=8, mode="global"))
    assert only_global(torch.rand(1, 2))[1] is None
    with pytest.raises(ValueError, match="conditioning mode"):
        PreferenceModuleConfig(num_rewards=2, inner_dim=8, mode="per-block")
