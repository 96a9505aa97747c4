"""Preference sampling: the reference mixture, deterministic per (prompt, epoch, slot), always on the simplex."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pslider_core.preference import is_on_simplex
from pslider_core.preference_sampling import (
    PreferenceMixture,
    epoch_mixture,
    preference_slots,
    sample_preference,
    slot_seed,
    w_bucket,
)

MODULE = Path(__file__).resolve().parents[1] / "pslider_core" / "preference_sampling.py"


def draws(num_rewards: int, mixture: PreferenceMixture, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([sample_preference(num_rewards, mixture, gen) for _ in range(n)])


def test_paper_mixtures():
    assert PreferenceMixture.paper(2) == PreferenceMixture(corners=0.1, edges=0.0, interior=0.9)
    assert PreferenceMixture.paper(3) == PreferenceMixture(corners=0.5, edges=0.35, interior=0.15)
    assert PreferenceMixture.paper(5) == PreferenceMixture.paper(3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"corners": 0.5, "edges": 0.0, "interior": 0.6}, "sum to 1"),
        ({"corners": -0.1, "edges": 0.0, "interior": 1.1}, ">= 0"),
        ({"corners": 0.0, "edges": 0.0, "interior": float("nan")}, "finite"),
        ({"corners": 0.0, "edges": 0.0, "interior": 1.0, "alpha": 0.0}, "alpha"),
    ],
)
def test_invalid_mixtures_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreferenceMixture(**kwargs)


def test_parse_round_trip_and_errors():
    mixture = PreferenceMixture.parse("corners=0.1, interior=0.9")
    assert mixture == PreferenceMixture(corners=0.1, edges=0.0, interior=0.9)
    assert PreferenceMixture.parse(mixture.to_text()) == mixture
    assert PreferenceMixture.parse("edges=1,alpha=2").alpha == 2.0
    assert PreferenceMixture.parse("paper", num_rewards=3) == PreferenceMixture.paper(3)
    for text, message in [
        ("paper", "num_rewards"),
        ("vertices=1", "key=value"),
        ("corners", "key=value"),
        ("corners=x", "not a number"),
        ("corners=0.5,corners=0.5", "twice"),
        ("alpha=2", "no probability"),
        ("corners=0.3", "sum to 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            PreferenceMixture.parse(text)


def test_slot_seed_is_stable_across_python_runs():
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('ps', sys.argv[1]); "
        "m = sys.modules['ps'] = importlib.util.module_from_spec(spec); "
        "spec.loader.exec_module(m); "
        "print(m.slot_seed('a cat', 3, 1, 42), hash('a cat'))"
    )
    # a fresh interpreter with another str-hash seed: the builtin hash() would give another value there
    other = subprocess.run(
        [sys.executable, "-c", code, str(MODULE)],
        env={**os.environ, "PYTHONHASHSEED": "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    their_seed, their_hash = other.stdout.split()
    assert int(their_hash) != hash("a cat")  # the two interpreters really hash strings differently
    assert int(their_seed) == slot_seed("a cat", 3, 1, 42)
    base = slot_seed("a cat", 3, 1, 42)
    assert 0 <= base < 2**63
    variants = [slot_seed("a dog", 3, 1, 42), slot_seed("a cat", 4, 1, 42), slot_seed("a cat", 3, 2, 42)]
    assert len({base, *variants, slot_seed("a cat", 3, 1, 43)}) == 5
    # fields must not blend into each other (additive seeds would make these collide)
    assert slot_seed("p", 1, 0, 0) != slot_seed("p", 0, 1, 0)


def test_sample_preference_is_on_simplex_and_reproducible():
    for m in (1, 2, 3, 6):
        w = draws(m, PreferenceMixture.paper(m), 200)
        assert w.shape == (200, m) and w.dtype == torch.float32
        assert is_on_simplex(w)
        torch.testing.assert_close(w, draws(m, PreferenceMixture.paper(m), 200))
    assert not torch.equal(
        draws(3, PreferenceMixture.paper(3), 50, seed=0), draws(3, PreferenceMixture.paper(3), 50, seed=1)
    )


def test_two_reward_mixture_frequencies():
    n = 4000
    w = draws(2, PreferenceMixture.paper(2), n)
    corners = w.max(dim=1).values == 1.0
    assert abs(corners.float().mean().item() - 0.1) < 0.025
    assert abs((w[corners, 0] == 1).float().mean().item() - 0.5) < 0.1  # both corners
    inner = w[~corners, 0]
    # Dirichlet(1, 1): w_0 uniform on [0, 1]
    hist = torch.histc(inner, bins=5, min=0, max=1) / inner.numel()
    assert torch.allclose(hist, torch.full((5,), 0.2), atol=0.03), hist


def test_three_reward_mixture_frequencies():
    n = 4000
    w = draws(3, PreferenceMixture.paper(3), n)
    nonzero = (w > 0).sum(dim=1)
    for count, expected in ((1, 0.5), (2, 0.35), (3, 0.15)):
        assert abs((nonzero == count).float().mean().item() - expected) < 0.04, (count, expected)
    vertices = w[nonzero == 1].argmax(dim=1)
    assert torch.allclose(torch.bincount(vertices, minlength=3) / vertices.numel(), torch.full((3,), 1 / 3), atol=0.05)


def test_edges_use_every_pair():
    w = draws(4, PreferenceMixture(corners=0.0, edges=1.0, interior=0.0), 1200)
    assert ((w > 0).sum(dim=1) == 2).all()
    pairs = {tuple(torch.nonzero(row).flatten().tolist()) for row in w}
    assert len(pairs) == 6


def test_preference_slots_deterministic_and_distinct():
    prompts = ["a cat", "a dog", "a tree"]
    mixture = PreferenceMixture.paper(2)
    slots = preference_slots(prompts, epoch=0, num_slots=3, num_rewards=2, seed=7, mixture=mixture)
    assert slots.shape == (3, 3, 2)
    assert is_on_simplex(slots.reshape(-1, 2))
    torch.testing.assert_close(slots, preference_slots(prompts, 0, 3, 2, 7, mixture))
    # each (prompt, slot) depends on its own key only: order of prompts and other prompts do not matter
    torch.testing.assert_close(preference_slots(["a tree", "a cat"], 0, 3, 2, 7, mixture), slots[[2, 0]])
    # with Dirichlet-only sampling, every prompt and slot gets its own w
    flat = preference_slots(prompts, 0, 3, 2, 7, PreferenceMixture(corners=0.0, edges=0.0, interior=1.0)).reshape(-1, 2)
    assert len({tuple(row.tolist()) for row in flat}) == flat.shape[0]
    assert not torch.equal(preference_slots(prompts, 1, 3, 2, 7, mixture), slots)
    assert not torch.equal(preference_slots(prompts, 0, 3, 2, 8, mixture), slots)
    with pytest.raises(ValueError, match="num_slots"):
        preference_slots(prompts, 0, 0, 2, 7, mixture)


def test_corners_first_curriculum_draws_only_corners_early():
    mixture = PreferenceMixture(corners=0.0, edges=0.0, interior=1.0)
    prompts = [f"prompt {i}" for i in range(6)]
    for epoch in range(10):
        slots = preference_slots(prompts, epoch, 2, 3, 0, epoch_mixture(mixture, epoch, 10, 0.4)).reshape(-1, 3)
        one_hot = (slots.max(dim=1).values == 1.0).all().item()
        assert one_hot == (epoch < 4), epoch  # round(0.4 x 10) = 4 corner epochs, then the interior mixture
    assert epoch_mixture(mixture, 0, 10, 0.0) is mixture


def test_w_bucket_labels():
    w2 = torch.tensor([[0.0, 1.0], [0.19, 0.81], [0.2, 0.8], [0.55, 0.45], [1.0, 0.0]])
    assert w_bucket(w2) == ["w0=0.0-0.2", "w0=0.0-0.2", "w0=0.2-0.4", "w0=0.4-0.6", "w0=0.8-1.0"]
    assert w_bucket(torch.tensor([0.5, 0.5]), num_bins=2) == ["w0=0.5-1.0"]
    assert w_bucket(torch.tensor([0.5, 0.5]), num_bins=3) == ["w0=0.33-0.67"]
    w3 = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.7, 0.1], [0.4, 0.3, 0.3], [0.5, 0.5, 0.0]])
    assert w_bucket(w3) == ["w0>0.5", "w1>0.5", "balanced", "balanced"]
    assert w_bucket(torch.ones(2, 1)) == ["w0=1", "w0=1"]
    with pytest.raises(ValueError, match="shape"):
        w_bucket(torch.ones(2, 2, 2))
