"""Samplers on velocity fields whose exact flow is known, and the SDE step's Gaussian log-probability."""

from __future__ import annotations

import math

import pytest
import torch

from pslider_core.samplers import (
    ode_sample,
    sample_sde_window,
    sde_sample,
    sde_step,
    sde_transition,
)

DATA_MEAN, DATA_STD = 2.0, 0.3


def bcast(sigma, x):
    return sigma.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)


def point_mass_field(x0):
    """Data = one point x0: every path is straight, x0_hat = x - sigma v = x0 exactly."""
    return lambda x, sigma: (x - x0) / bcast(sigma, x)


def gaussian_field(x, sigma):
    """Exact velocity E[noise - x0 | x] for data N(DATA_MEAN, DATA_STD^2): curved paths, known end point."""
    s = bcast(sigma, x)
    var = (1 - s) ** 2 * DATA_STD**2 + s**2
    d = x - (1 - s) * DATA_MEAN
    return s / var * d - (DATA_MEAN + (1 - s) * DATA_STD**2 / var * d)


def shifted(num_steps, shift=3.0):
    s = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


def test_point_mass_flow_is_exact_for_both_solvers():
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 2, 4, generator=gen), torch.randn(3, 2, 4, generator=gen)
    for solver in ("euler", "dpm2"):
        for grid in (torch.linspace(1, 0, 6), shifted(5).float()):
            torch.testing.assert_close(ode_sample(point_mass_field(x0), x1, grid, solver=solver), x0, atol=1e-5, rtol=0)


def test_dpm2_beats_euler_and_converges_at_second_order():
    x1 = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = DATA_MEAN + DATA_STD * x1  # the flow map of a Gaussian is affine

    def error(solver, steps):
        return (
            (ode_sample(gaussian_field, x1, torch.linspace(1, 0, steps + 1, dtype=torch.float64), solver) - exact)
            .abs()
            .max()
            .item()
        )

    for steps in (6, 10):
        assert error("dpm2", steps) < 0.75 * error("euler", steps)
    assert error("euler", 10) / error("euler", 20) < 2.5  # first order: halving the step halves the error
    assert error("dpm2", 10) / error("dpm2", 20) > 3.0  # second order: about a quarter


def reference_dpm2(velocity_fn, x, sigmas):
    """Upstream's formulation, written independently: DDIM first and last, DPM-Solver++(2M) in between."""
    lam = [math.log((1 - s) / s) if 0 < s < 1 else (-math.inf if s >= 1 else math.inf) for s in sigmas.tolist()]
    x0_preds = []
    for i in range(len(sigmas) - 1):
        s, t = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity_fn(x, torch.full((x.shape[0],), s, dtype=x.dtype))
        x0_preds.append(x - s * v)
        if i == 0 or i == len(sigmas) - 2:
            eps_hat = (x - (1 - s) * x0_preds[-1]) / s
            x = (1 - t) * x0_preds[-1] + t * eps_hat
            continue
        h, h0 = lam[i + 1] - lam[i], lam[i] - lam[i - 1]
        d0, d1 = x0_preds[-1], (x0_preds[-1] - x0_preds[-2]) * (h / h0)
        x = (t / s) * x - (1 - t) * (math.exp(-h) - 1) * d0 - 0.5 * (1 - t) * (math.exp(-h) - 1) * d1
    return x


def test_dpm2_matches_reference_formulation_on_a_nonlinear_field():
    field = lambda x, sigma: torch.tanh(3 * x) * bcast(sigma, x) + x**2 - 1  # noqa: E731
    x1 = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for grid in (
        torch.linspace(1, 0, 9, dtype=torch.float64),
        shifted(12),
        torch.linspace(0.8, 0, 7, dtype=torch.float64),
    ):
        torch.testing.assert_close(ode_sample(field, x1, grid, solver="dpm2"), reference_dpm2(field, x1, grid))


def test_ode_trajectory_and_validation():
    x1 = torch.randn(2, 3)
    calls = []

    def field(x, sigma):
        calls.append(sigma.clone())
        return gaussian_field(x, sigma)

    out, traj = ode_sample(field, x1, torch.linspace(1, 0, 5), solver="euler", return_trajectory=True)
    assert traj.shape == (5, 2, 3) and torch.equal(traj[0], x1) and torch.equal(traj[-1], out)
    assert [c.tolist() for c in calls] == [[s, s] for s in torch.linspace(1, 0, 5)[:-1].tolist()]
    torch.testing.assert_close(traj[1], x1 - 0.25 * gaussian_field(x1, torch.ones(2)))
    for bad in (
        torch.tensor([1.0, 0.5, 0.5, 0.0]),
        torch.tensor([0.0, 1.0]),
        torch.tensor([1.5, 0.0]),
        torch.tensor([1.0]),
    ):
        with pytest.raises(ValueError, match="sigmas"):
            ode_sample(field, x1, bad)
    with pytest.raises(ValueError, match="solver"):
        ode_sample(field, x1, torch.linspace(1, 0, 3), solver="heun")


def step_inputs(seed=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)


def test_sde_step_mean_std_and_log_prob():
    x, v = step_inputs()
    sigma, sigma_next, a = 0.6, 0.5, 0.7
    step = sde_step(v, x, sigma, sigma_next, noise_level=a, generator=torch.Generator().manual_seed(0))
    g = a * math.sqrt(sigma / (1 - sigma))
    dt = sigma_next - sigma
    mean = x + dt * (v + g**2 / (2 * sigma) * (x + (1 - sigma) * v))
    torch.testing.assert_close(step.mean, mean)
    torch.testing.assert_close(step.std, torch.full((3,), g))
    torch.testing.assert_close(step.noise_std, torch.full((3,), g * math.sqrt(-dt)))
    expected = torch.distributions.Normal(mean, g * math.sqrt(-dt)).log_prob(step.prev_sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(step.log_prob, expected)
    # scoring the stored sample again gives the same log-probability, and the sample is returned untouched
    again = sde_step(v, x, sigma, sigma_next, noise_level=a, prev_sample=step.prev_sample)
    assert torch.equal(again.prev_sample, step.prev_sample)
    torch.testing.assert_close(again.log_prob, step.log_prob)


def test_sde_step_samples_from_its_gaussian():
    x, v = torch.zeros(4000, 1), torch.ones(4000, 1)
    step = sde_step(v, x, 0.8, 0.6, generator=torch.Generator().manual_seed(0))
    noise = (step.prev_sample - step.mean) / step.noise_std.view(-1, 1)
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05


def test_sde_mean_at_zero_noise_is_the_euler_step():
    x, v = step_inputs(4)
    for kind in ("sde", "cps"):
        mean, _, noise_std = sde_transition(v, x, 0.7, 0.55, noise_level=0.0, kind=kind)
        torch.testing.assert_close(mean, x + (0.55 - 0.7) * v)
        assert (noise_std == 0).all()
    with pytest.raises(ValueError, match="deterministic"):
        sde_step(v, x, 0.7, 0.55, noise_level=0.0)


def test_sde_step_at_sigma_one_uses_the_second_grid_value():
    x, v = step_inputs(5)
    with pytest.raises(ValueError, match="sigma_max_denominator"):
        sde_step(v, x, 1.0, 0.9)
    step = sde_step(v, x, 1.0, 0.9, noise_level=0.5, sigma_max_denominator=0.9, generator=torch.Generator())
    g = 0.5 * math.sqrt(1.0 / (1 - 0.9))  # numerator stays sigma = 1
    torch.testing.assert_close(step.std, torch.full((3,), g))
    torch.testing.assert_close(step.mean, x - 0.1 * (v + g**2 / 2 * x))


def test_cps_step():
    x, v = step_inputs(6)
    sigma, sigma_next, a = 0.6, 0.45, 0.7
    step = sde_step(v, x, sigma, sigma_next, noise_level=a, kind="cps", generator=torch.Generator().manual_seed(1))
    s = sigma_next * math.sin(a * math.pi / 2)
    mean = (1 - sigma_next) * (x - sigma * v) + math.sqrt(sigma_next**2 - s**2) * (x + (1 - sigma) * v)
    torch.testing.assert_close(step.mean, mean)
    torch.testing.assert_close(step.std, torch.full((3,), s))
    torch.testing.assert_close(step.noise_std, step.std)
    torch.testing.assert_close(step.log_prob, -((step.prev_sample - mean) ** 2).mean(dim=(1, 2, 3)))


def test_per_sample_sigmas_match_scalar_calls():
    x, v = step_inputs(7)
    sig, nxt = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.8, 0.45, 0.0])
    prev = torch.randn_like(x)
    batched = sde_step(v, x, sig, nxt, prev_sample=prev)
    for i in range(3):
        single = sde_step(v[i : i + 1], x[i : i + 1], float(sig[i]), float(nxt[i]), prev_sample=prev[i : i + 1])
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob)
        torch.testing.assert_close(batched.mean[i : i + 1], single.mean)


def test_sde_step_validation():
    x, v = step_inputs(8)
    with pytest.raises(ValueError, match="not both"):
        sde_step(v, x, 0.5, 0.4, prev_sample=x, generator=torch.Generator())
    with pytest.raises(ValueError, match="sigma_next"):
        sde_step(v, x, 0.4, 0.5)
    with pytest.raises(ValueError, match="kind"):
        sde_step(v, x, 0.5, 0.4, kind="ode")


def test_sde_sample_window_and_replayed_log_probs():
    x1 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(9))
    grid = shifted(6).float()
    traj = sde_sample(gaussian_field, x1, grid, sde_window=(2, 4), generator=torch.Generator().manual_seed(0))
    assert traj.latents.shape == (7, 2, 3, 4) and torch.equal(traj.latents[0], x1)
    assert traj.log_probs.shape == (6, 2) and traj.sde_steps == (2, 3)
    assert traj.log_probs[2:4].isfinite().all() and traj.log_probs[[0, 1, 4, 5]].isnan().all()
    for i in range(6):
        x, s, t = traj.latents[i], float(grid[i]), float(grid[i + 1])
        v = gaussian_field(x, torch.full((2,), s))
        if i in traj.sde_steps:
            # what the GRPO loss recomputes: same policy, stored transition -> same log-prob (ratio 1)
            replay = sde_step(v, x, s, t, prev_sample=traj.latents[i + 1], sigma_max_denominator=float(grid[1]))
            torch.testing.assert_close(replay.log_prob, traj.log_probs[i])
        else:
            torch.testing.assert_close(traj.latents[i + 1], x + (t - s) * v)
    again = sde_sample(gaussian_field, x1, grid, sde_window=(2, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.latents, traj.latents)
    full = sde_sample(gaussian_field, x1, grid, kind="cps", generator=torch.Generator().manual_seed(0))
    assert full.sde_steps == tuple(range(6)) and full.log_probs.isfinite().all()
    with pytest.raises(ValueError, match="sde_window"):
        sde_sample(gaussian_field, x1, grid, sde_window=(4, 7))


def test_sample_sde_window():
    gen = torch.Generator().manual_seed(0)
    windows = {sample_sde_window(10, 3, gen) for _ in range(200)}
    assert windows == {(s, s + 3) for s in range(8)}
    assert {sample_sde_window(10, 2, gen, latest_start=1) for _ in range(50)} == {(0, 2), (1, 3)}
    with pytest.raises(ValueError, match="window"):
        sample_sde_window(3, 4, gen)


def test_low_precision_model_keeps_float32_states():
    """A bf16 model: latents stay float32 so that replaying a stored step reproduces its log-probability."""
    x1 = torch.randn(2, 8, generator=torch.Generator().manual_seed(10)).bfloat16()
    grid = torch.linspace(1, 0, 5)
    traj = sde_sample(gaussian_field, x1, grid, generator=torch.Generator().manual_seed(0))
    assert traj.latents.dtype == torch.float32 and traj.log_probs.dtype == torch.float32
    x = traj.latents[2]
    v = gaussian_field(x.bfloat16(), torch.full((2,), 0.5))
    replay = sde_step(v, x, 0.5, 0.25, prev_sample=traj.latents[3])
    torch.testing.assert_close(replay.log_prob, traj.log_probs[2])
    assert ode_sample(gaussian_field, x1, grid).dtype == torch.bfloat16


def test_guided_velocity_is_classifier_free_guidance():
    from pslider_core.samplers import guided_velocity

    x, sigma = torch.ones(2, 3), torch.full((2,), 0.5)

    def cond(x, s):
        return 2 * x

    def uncond(x, s):
        return x

    torch.testing.assert_close(guided_velocity(cond, uncond, 3.0)(x, sigma), torch.full((2, 3), 4.0))
    torch.testing.assert_close(guided_velocity(cond, uncond, 1.0)(x, sigma), cond(x, sigma))
    assert guided_velocity(cond, None, 7.0) is cond
