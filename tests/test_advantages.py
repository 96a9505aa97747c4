"""Advantages: per group and per reward (late scalarization), the fixed-weights baseline, bad rewards."""

from __future__ import annotations

import math

import pytest
import torch

from pslider_core.advantages import (
    NonFiniteRewardError,
    fixed_weight_advantages,
    group_advantages,
    scalarize_advantages,
)


def reference_group_advantages(rewards, groups, eps=1e-4, clip=5.0):
    """Plain loops, population std, as the reference code's np.std."""
    n, m = len(rewards), len(rewards[0])
    out = [[0.0] * m for _ in range(n)]
    for g in set(groups):
        members = [i for i in range(n) if groups[i] == g]
        for j in range(m):
            values = [rewards[i][j] for i in members]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            for i in members:
                out[i][j] = max(-clip, min(clip, (rewards[i][j] - mean) / (std + eps)))
    return torch.tensor(out)


def random_batch(seed=0, n=24, m=3):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n, m, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 0.1, 10.0])[:m]
    groups = torch.randint(0, 4, (n,), generator=gen) * 7 - 3  # arbitrary, non-contiguous ids
    return rewards, groups


def test_group_advantages_match_loop_reference():
    rewards, groups = random_batch()
    adv = group_advantages(rewards, groups)
    assert adv.dtype == torch.float32 and adv.shape == rewards.shape
    torch.testing.assert_close(adv, reference_group_advantages(rewards.tolist(), groups.tolist()))


def test_pooled_std_is_one_scale_per_reward_over_the_batch():
    rewards, groups = random_batch(2)
    adv = group_advantages(rewards, groups, eps=0.0, std="pooled")
    centered = rewards - torch.stack([rewards[groups == g].mean(dim=0) for g in groups.tolist()])
    pooled = [math.sqrt(sum(x * x for x in centered[:, m].tolist()) / len(rewards)) for m in range(3)]
    torch.testing.assert_close(adv, (centered / torch.tensor(pooled, dtype=torch.float64)).clamp(-5, 5).float())
    with pytest.raises(ValueError, match="std must be one of"):
        group_advantages(rewards, groups, std="batch")


def test_pooled_std_keeps_a_one_factor_trade_off_curved():
    """vivid = 1 - t^2 and pale = 1 - (1 - t)^2 of one tint t: at w = (0.5, 0.5) the best tint is 0.5. With each
    group's own std the two advantages mirror each other and their mean points nowhere; pooled, each group's
    scalarized advantage rises towards t = 0.5 (the paler samples of a vivid group, the more vivid of a pale one)."""
    t = torch.tensor([0.10, 0.15, 0.20, 0.25, 0.60, 0.65, 0.70, 0.75], dtype=torch.float64)
    rewards, groups = torch.stack([1 - t**2, 1 - (1 - t) ** 2], dim=1), torch.tensor([0] * 4 + [1] * 4)
    w, towards_half = torch.tensor([0.5, 0.5]), -(t - 0.5).abs().float()
    own = group_advantages(rewards, groups) @ w
    assert own.abs().max() < 0.1, own  # against 1-2 for single rewards: the mirror images cancel
    pooled = group_advantages(rewards, groups, std="pooled") @ w
    for g in (0, 1):
        rho = torch.corrcoef(torch.stack([pooled[groups == g], towards_half[groups == g]]))[0, 1]
        assert rho > 0.95, (g, pooled)


def test_group_advantages_invariances():
    rewards, groups = random_batch(1)
    adv = group_advantages(rewards, groups, eps=0.0)
    shift = torch.tensor([3.0, -100.0, 0.5, 7.0])[torch.unique(groups, return_inverse=True)[1]].unsqueeze(1)
    torch.testing.assert_close(group_advantages(rewards + shift, groups, eps=0.0), adv)
    torch.testing.assert_close(group_advantages(rewards * torch.tensor([2.0, 50.0, 0.01]), groups, eps=0.0), adv)
    torch.testing.assert_close(group_advantages(-rewards, groups, eps=0.0), -adv)
    # rewards are normalized separately: changing one reward leaves the others' advantages alone
    changed = rewards.clone()
    changed[:, 2] = torch.randn(len(rewards), dtype=torch.float64)
    torch.testing.assert_close(group_advantages(changed, groups)[:, :2], group_advantages(rewards, groups)[:, :2])


def test_clipping_singletons_and_constant_groups():
    outlier = torch.zeros(50, 1, dtype=torch.float64)
    outlier[0] = 1.0  # z-score of the outlier is sqrt(49) = 7
    adv = group_advantages(outlier, torch.zeros(50, dtype=torch.long))
    assert adv[0, 0].item() == 5.0
    assert group_advantages(outlier, torch.zeros(50, dtype=torch.long), clip=10.0)[0, 0].item() == pytest.approx(
        7.0, rel=1e-3
    )
    rewards = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0], [9.0, -4.0]])
    adv = group_advantages(rewards, torch.tensor([0, 0, 0, 1]))
    assert (adv[3] == 0).all()  # singleton group
    assert (adv[:3, 1] == 0).all()  # identical rewards
    assert adv[:3, 0].tolist() == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-3)  # population std of (1, 3, 5)


def test_fixed_weight_advantages_match_loop_reference():
    rewards, prompts = random_batch(2, m=2)
    weights = torch.tensor([0.3, 0.7])
    adv = fixed_weight_advantages(rewards, weights, prompts)
    scalar = [0.3 * a + 0.7 * b for a, b in rewards.tolist()]
    mean_all = sum(scalar) / len(scalar)
    batch_std = math.sqrt(sum((s - mean_all) ** 2 for s in scalar) / len(scalar))
    expected = []
    for i, p in enumerate(prompts.tolist()):
        same = [scalar[j] for j in range(len(scalar)) if prompts[j] == p]
        expected.append(max(-5.0, min(5.0, (scalar[i] - sum(same) / len(same)) / (batch_std + 1e-4))))
    assert adv.shape == (len(scalar),)
    torch.testing.assert_close(adv, torch.tensor(expected))
    with pytest.raises(ValueError, match="one per reward"):
        fixed_weight_advantages(rewards, torch.tensor([1.0]), prompts)


def test_scalarize_advantages():
    adv = torch.tensor([[1.0, -2.0, 0.5], [0.0, 4.0, -1.0]])
    w = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    expected = torch.tensor([sum(a * b for a, b in zip(ra, rw)) for ra, rw in zip(adv.tolist(), w.tolist())])
    torch.testing.assert_close(scalarize_advantages(adv, w), expected)
    with pytest.raises(ValueError, match="shape"):
        scalarize_advantages(adv, w[:1])


def test_non_finite_rewards_raise_a_specific_error():
    rewards = torch.randn(6, 3)
    rewards[1, 1] = math.nan
    rewards[4, 1] = math.inf
    rewards[2, 2] = -math.inf
    with pytest.raises(NonFiniteRewardError, match="reward 1: 2 of 6") as info:
        group_advantages(rewards, torch.zeros(6, dtype=torch.long))
    assert isinstance(info.value, ValueError)
    assert (info.value.reward_index, info.value.count, info.value.counts) == (1, 2, {1: 2, 2: 1})
    with pytest.raises(NonFiniteRewardError):
        fixed_weight_advantages(rewards, torch.tensor([1.0, 0.0, 0.0]), torch.zeros(6, dtype=torch.long))


@pytest.mark.parametrize(
    "rewards, ids, kwargs, message",
    [
        (torch.ones(4), torch.zeros(4, dtype=torch.long), {}, r"shape \(N, M\)"),
        (torch.ones(4, 2), torch.zeros(3, dtype=torch.long), {}, "one id per sample"),
        (torch.ones(4, 2), torch.zeros(4), {}, "integer"),
        (torch.ones(4, 2), torch.zeros(4, dtype=torch.long), {"clip": 0.0}, "clip"),
        (torch.ones(4, 2), torch.zeros(4, dtype=torch.long), {"eps": -1.0}, "eps"),
    ],
)
def test_bad_inputs_raise(rewards, ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, ids, **kwargs)
