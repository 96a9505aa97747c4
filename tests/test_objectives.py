"""NFT and GRPO objectives against hand-written references, gradient directions, old policy and EMA updates."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from pslider_core.objectives import (
    EMA,
    GRPOConfig,
    NFTConfig,
    ema_decay,
    grpo_loss,
    lagged_decay,
    nft_loss,
    nft_reward_weight,
    update_old_policy_,
)
from pslider_core.samplers import sde_step


def flow_batch(seed=0, n=4):
    gen = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(n, 2, 3, 3, generator=gen), torch.randn(n, 2, 3, 3, generator=gen)
    t = torch.rand(n, generator=gen) * 0.9 + 0.05
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    v_star = noise - x0
    v_old = v_star + 0.3 * torch.randn(v_star.shape, generator=gen)
    v_theta = v_old + 0.1 * torch.randn(v_star.shape, generator=gen)
    v_ref = v_star + 0.5 * torch.randn(v_star.shape, generator=gen)
    return x0, x_t, t, v_theta, v_old, v_ref


def test_nft_reward_weight_matches_reference():
    adv = torch.tensor([[2.5, -5.0], [10.0, 0.0], [-1.0, -7.0]])
    w = torch.tensor([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    expected = [
        sum(wm * (0.5 + 0.5 * max(-1.0, min(1.0, am / 5.0))) for am, wm in zip(row_a, row_w))
        for row_a, row_w in zip(adv.tolist(), w.tolist())
    ]
    torch.testing.assert_close(nft_reward_weight(adv, w, 5.0), torch.tensor(expected))
    assert nft_reward_weight(adv, w, 5.0).tolist()[1] == pytest.approx(0.25 * 1.0 + 0.75 * 0.5)
    # fixed-weights baseline: one scalar advantage, weight one
    torch.testing.assert_close(nft_reward_weight(adv[:, :1], torch.ones(3, 1), 5.0), torch.tensor([0.75, 1.0, 0.4]))
    with pytest.raises(ValueError, match="shape"):
        nft_reward_weight(adv, w[:, :1], 5.0)


def reference_nft_loss(v_theta, v_old, v_ref, x_t, x0, t, r, beta, adv_clip, kl_weight):
    total = 0.0
    n = x0.shape[0]
    for i in range(n):
        losses = []
        for v in (beta * v_theta[i] + (1 - beta) * v_old[i], (1 + beta) * v_old[i] - beta * v_theta[i]):
            err = x_t[i] - t[i] * v - x0[i]
            scale = max(err.abs().mean().item(), 1e-5)  # a plain number: no gradient through it
            losses.append((err**2).mean() / scale)
        total = total + (r[i] * losses[0] + (1 - r[i]) * losses[1]) / beta
    return adv_clip * total / n + kl_weight * ((v_theta - v_ref) ** 2).mean()


def test_nft_loss_and_gradient_match_reference():
    x0, x_t, t, v_theta, v_old, v_ref = flow_batch()
    r = torch.tensor([0.0, 0.3, 0.9, 1.0])
    config = NFTConfig(beta=0.1, adv_clip=5.0, kl_weight=0.01)
    mine = v_theta.clone().requires_grad_()
    loss, stats = nft_loss(mine, v_old, v_ref, x_t, x0, t, r, config)
    theirs = v_theta.clone().requires_grad_()
    expected = reference_nft_loss(theirs, v_old, v_ref, x_t, x0, t, r, 0.1, 5.0, 0.01)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(mine.grad, theirs.grad)
    assert stats["loss"] == pytest.approx(loss.item())
    assert stats["kl"] == pytest.approx(((v_theta - v_ref) ** 2).mean().item())
    assert stats["policy_loss"] == pytest.approx(loss.item() - 0.01 * stats["kl"])
    assert stats["positive_loss"] > 0 and stats["negative_loss"] > 0


def test_nft_loss_without_reference_and_in_low_precision():
    x0, x_t, t, v_theta, v_old, _ = flow_batch(1)
    r = torch.full((4,), 0.5)
    loss, stats = nft_loss(v_theta, v_old, None, x_t, x0, t, r, NFTConfig())
    assert stats["kl"] == 0.0 and stats["loss"] == pytest.approx(stats["policy_loss"])
    low, _ = nft_loss(v_theta.bfloat16(), v_old.bfloat16(), None, x_t, x0, t, r, NFTConfig())
    assert low.dtype == torch.float32
    with pytest.raises(ValueError, match="share one shape"):
        nft_loss(v_theta, v_old[:2], None, x_t, x0, t, r, NFTConfig())
    with pytest.raises(ValueError, match="one per sample"):
        nft_loss(v_theta, v_old, None, x_t, x0, t, r[:2], NFTConfig())


@pytest.mark.parametrize("r_value, closer", [(1.0, True), (0.0, False)])
def test_nft_gradient_direction(r_value, closer):
    """r = 1 pulls v_theta's data prediction towards x0; r = 0 pushes it away."""
    x0, x_t, t, _, v_old, _ = flow_batch(2)
    v = v_old.clone().requires_grad_()
    tt = t.view(-1, 1, 1, 1)

    def x0_error():
        return (x_t - tt * v - x0).square().mean().item()

    before = x0_error()
    loss, _ = nft_loss(v, v_old, None, x_t, x0, t, torch.full((4,), r_value), NFTConfig())
    loss.backward()
    with torch.no_grad():
        v -= 1e-3 * v.grad
    assert (x0_error() < before) == closer


def test_nft_config_validation():
    for kwargs, message in [
        ({"beta": 0.0}, "beta"),
        ({"adv_clip": 0.0}, "adv_clip"),
        ({"kl_weight": -1.0}, "kl_weight"),
    ]:
        with pytest.raises(ValueError, match=message):
            NFTConfig(**kwargs)


def test_lagged_decay_and_old_policy_update():
    assert [lagged_decay(s) for s in (0, 100, 499, 500, 10_000)] == pytest.approx([0.0, 0.1, 0.499, 0.5, 0.5])
    with pytest.raises(ValueError, match="step"):
        lagged_decay(-1)
    old = [torch.zeros(3), torch.ones(2, 2)]
    new = [torch.arange(3.0), torch.full((2, 2), 3.0)]
    update_old_policy_(old, new, 0.25)
    torch.testing.assert_close(old[0], 0.75 * torch.arange(3.0))
    torch.testing.assert_close(old[1], torch.full((2, 2), 0.25 * 1 + 0.75 * 3))
    update_old_policy_(old, new, 0.0)
    assert all(torch.equal(o, n) for o, n in zip(old, new))
    with pytest.raises(ValueError, match="same order"):
        update_old_policy_(old, new[:1], 0.5)


def test_ema_decay_and_updates():
    assert ema_decay(0) == pytest.approx(0.1) and ema_decay(2) == pytest.approx(3 / 12)
    assert ema_decay(80) == 0.9 and ema_decay(10_000) == 0.9
    param = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([param])
    expected = torch.zeros(3)
    for step in range(1, 5):
        with torch.no_grad():
            param.add_(1.0)
        ema.update([param])
        d = min((1 + step) / (10 + step), 0.9)
        expected = d * expected + (1 - d) * param.detach()
    torch.testing.assert_close(ema.shadow[0], expected)
    with pytest.raises(ValueError, match="same trainable parameters"):
        ema.update([param, param])


def test_ema_swap_and_state_round_trip(tmp_path):
    param = torch.nn.Parameter(torch.full((2, 2), 4.0))
    ema = EMA([param])
    with torch.no_grad():
        param.fill_(10.0)
    ema.update([param])
    with ema.swapped_in([param]):
        torch.testing.assert_close(param.detach(), ema.shadow[0])
    assert (param.detach() == 10.0).all()
    with pytest.raises(RuntimeError, match="store"):
        ema.restore([param])
    save_file(ema.state_dict(), str(tmp_path / "ema.safetensors"))
    fresh = EMA([torch.zeros(2, 2)])
    fresh.load_state_dict(load_file(str(tmp_path / "ema.safetensors")))
    assert fresh.num_updates == 1
    torch.testing.assert_close(fresh.shadow[0], ema.shadow[0])
    with pytest.raises(ValueError, match="tracked tensors"):
        EMA([torch.zeros(3)]).load_state_dict(ema.state_dict())


def test_grpo_ratio_one_gives_minus_advantage():
    adv = torch.tensor([1.0, 2.0, -0.5])
    log_prob = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    loss, stats = grpo_loss(log_prob, log_prob.detach(), adv, torch.zeros(3, 4), None, 1.0, GRPOConfig())
    assert loss.item() == pytest.approx(-adv.mean().item())
    assert stats["clip_fraction"] == 0.0 and stats["approx_kl"] == 0.0 and stats["kl"] == 0.0
    loss.backward()
    torch.testing.assert_close(log_prob.grad, -adv / 3)  # d/dlogp of -A exp(logp - old) at ratio 1


def test_grpo_clipping():
    eps = 1e-4
    config = GRPOConfig(clip_range=eps)
    old = torch.zeros(4)
    # ratios 1.5, 1.5, 0.5, 1 + eps/2 with advantages +1, -1, -1, +1
    log_prob = torch.log(torch.tensor([1.5, 1.5, 0.5, 1 + eps / 2])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, stats = grpo_loss(log_prob, old, adv, torch.zeros(4, 2), None, 1.0, config)
    per_sample = [
        max(-a * rho, -a * min(max(rho, 1 - eps), 1 + eps))
        for a, rho in zip(adv.tolist(), [1.5, 1.5, 0.5, 1 + eps / 2])
    ]
    assert loss.item() == pytest.approx(sum(per_sample) / 4, rel=1e-6)
    assert stats["clip_fraction"] == pytest.approx(0.75)
    loss.backward()
    # clipped terms (too-large gain, too-small loss) carry no gradient; the others do
    assert log_prob.grad[0] == 0 and log_prob.grad[2] == 0
    assert log_prob.grad[1] > 0 and log_prob.grad[3] < 0
    assert stats["approx_kl"] == pytest.approx(0.5 * (log_prob.detach() ** 2).mean().item(), rel=1e-5)


def test_grpo_kl_term():
    gen = torch.Generator().manual_seed(0)
    mean_theta, mean_ref = torch.randn(3, 2, 4, generator=gen), torch.randn(3, 2, 4, generator=gen)
    std = torch.tensor([0.5, 1.0, 2.0])
    zeros = torch.zeros(3)
    config = GRPOConfig(kl_weight=0.04)
    loss, stats = grpo_loss(zeros, zeros, zeros, mean_theta, mean_ref, std, config)
    expected = sum(((mean_theta[i] - mean_ref[i]) ** 2).mean().item() / (2 * std[i].item() ** 2) for i in range(3)) / 3
    assert stats["kl"] == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.04 * expected, rel=1e-6)
    off, _ = grpo_loss(zeros, zeros, zeros, mean_theta, mean_ref, std, GRPOConfig(kl_weight=0.0))
    assert off.item() == 0.0


def test_grpo_step_raises_log_prob_of_good_samples():
    """End to end on a free velocity: a positive advantage makes the stored SDE sample more likely."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, generator=gen)
    v = torch.randn(2, 8, generator=gen).requires_grad_()
    stored = sde_step(v.detach(), x, 0.6, 0.5, generator=gen)
    step = sde_step(v, x, 0.6, 0.5, prev_sample=stored.prev_sample)
    config = GRPOConfig(clip_range=0.2, kl_weight=0.0)
    loss, _ = grpo_loss(step.log_prob, stored.log_prob, torch.tensor([1.0, 1.0]), step.mean, None, step.std, config)
    loss.backward()
    with torch.no_grad():
        v -= 0.05 * v.grad
    after = sde_step(v.detach(), x, 0.6, 0.5, prev_sample=stored.prev_sample)
    assert (after.log_prob > stored.log_prob).all()


def test_grpo_validation():
    with pytest.raises(ValueError, match="clip_range"):
        GRPOConfig(clip_range=0.0)
    with pytest.raises(ValueError, match="kind"):
        GRPOConfig(kind="ode")
    with pytest.raises(ValueError, match="shape"):
        grpo_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3), torch.zeros(3, 1), None, 1.0, GRPOConfig())
    assert math.isclose(GRPOConfig().noise_level, 0.7)
