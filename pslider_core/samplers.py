"""Samplers of the flow x_sigma = (1 - sigma) x0 + sigma noise, velocity v = noise - x0 (sigma from 1 to 0).

`ode_sample` makes the NFT rollouts (deterministic, DPM-Solver-2 as the reference code). `sde_step` and
`sde_sample` make the Flow-GRPO rollouts: stochastic steps with a Gaussian log-probability (method.md, GRPO).
States are updated in float32 at least (float64 stays float64), whatever the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .objectives.config import ODE_SOLVERS, SDE_KINDS

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""v = velocity_fn(x, sigma): x (B, ...), sigma (B,) -> v, same shape as x."""


def guided_velocity(cond: VelocityFn, uncond: VelocityFn | None, scale: float) -> VelocityFn:
    """Classifier-free guidance: v_uncond + scale (v_cond - v_uncond); the conditional velocity alone without uncond."""
    if uncond is None:
        return cond

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v_uncond = uncond(x, sigma)
        return v_uncond + scale * (cond(x, sigma) - v_uncond)

    return velocity


def _check_sigmas(sigmas: torch.Tensor) -> list[float]:
    values = [float(s) for s in torch.as_tensor(sigmas).flatten()]
    if torch.as_tensor(sigmas).ndim != 1 or len(values) < 2:
        raise ValueError(
            f"sigmas must be a 1-D grid of at least 2 values, got shape {tuple(torch.as_tensor(sigmas).shape)}."
        )
    if any(not 0.0 <= s <= 1.0 for s in values) or any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(
            f"sigmas must decrease strictly inside [0, 1] (noise to data), got {values}; "
            "use the backbone adapter's sigmas(pipe, num_steps, x)."
        )
    return values


def _work(t: torch.Tensor) -> torch.Tensor:
    """t in the dtype the updates run in: bf16 / fp16 model outputs would lose the small SDE terms."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _alpha_over_sigma_log(sigma: float) -> float:
    """lambda = log((1 - sigma) / sigma), the log signal-to-noise ratio DPM-Solver steps in."""
    return math.log((1.0 - sigma) / sigma)


def ode_sample(
    velocity_fn: VelocityFn,
    x1: torch.Tensor,
    sigmas: torch.Tensor,
    solver: str = "dpm2",
    return_trajectory: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Integrate the probability-flow ODE from x1 (at sigmas[0]) to sigmas[-1]; one velocity call per step.

    "euler": x' = x + (s' - s) v.
    "dpm2": multistep DPM-Solver++(2M) in data prediction, as the reference code's `dpm2`. With x0_i = x_i - s_i v_i,
    a_s = 1 - s and lambda_s = log(a_s / s), step i from s = s_i to t = s_{i+1} is
        x' = x + (t - s) v_i + 0.5 (a_t - a_s t / s) (h / h_prev) (x0_i - x0_{i-1}),
    h = lambda_t - lambda_s, h_prev = lambda_s - lambda_{s_{i-1}}: the Euler step (which equals DPM-Solver++'s first
    order step in this parametrisation) plus a second-order correction from the previous data prediction. The first
    step, a step whose previous sigma is 1 (lambda = -inf, so the correction vanishes) and the last step (to sigma 0,
    lambda = +inf) are first order.
    Returns x0, or (x0, trajectory (T+1, B, ...)) with return_trajectory.
    """
    if solver not in ODE_SOLVERS:
        raise ValueError(f"Unknown ODE solver {solver!r}; choose one of {list(ODE_SOLVERS)}.")
    grid = _check_sigmas(sigmas)
    x = _work(x1)
    trajectory = [x1] if return_trajectory else None
    prev_x0: torch.Tensor | None = None
    for i, (s, t) in enumerate(zip(grid, grid[1:])):
        v = _work(velocity_fn(x.to(x1.dtype), torch.full((x.shape[0],), s, device=x.device))).to(x.dtype)
        x0 = x - s * v
        step = x + (t - s) * v
        last = i == len(grid) - 2
        if solver == "dpm2" and prev_x0 is not None and not last and grid[i - 1] < 1.0:
            h = _alpha_over_sigma_log(t) - _alpha_over_sigma_log(s)
            h_prev = _alpha_over_sigma_log(s) - _alpha_over_sigma_log(grid[i - 1])
            step = step + 0.5 * ((1.0 - t) - (1.0 - s) * t / s) * (h / h_prev) * (x0 - prev_x0)
        x, prev_x0 = step, x0
        if trajectory is not None:
            trajectory.append(x.to(x1.dtype))
    out = x.to(x1.dtype)
    return out if trajectory is None else (out, torch.stack(trajectory))


@dataclass
class SDEStep:
    """One stochastic step.

    std is what Flow-GRPO's KL term divides by (its `std_dev_t`): g for "sde", s for "cps". noise_std is the
    actual standard deviation of prev_sample around mean: g sqrt(sigma - sigma') for "sde", s for "cps".
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor  # (B,)
    mean: torch.Tensor
    std: torch.Tensor  # (B,)
    noise_std: torch.Tensor  # (B,)


def _per_sample(value: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) sigma as (B,) on x's device, in the update dtype."""
    out = torch.as_tensor(value, device=x.device).to(_work(x).dtype)
    return out.expand(x.shape[0]) if out.ndim == 0 else out


def sde_transition(
    v: torch.Tensor,
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    *,
    noise_level: float = 0.7,
    kind: str = "sde",
    sigma_max_denominator: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, std, noise_std) of the Gaussian step from sigma to sigma_next (see `sde_step`); no sampling."""
    if kind not in SDE_KINDS:
        raise ValueError(f"Unknown SDE kind {kind!r}; choose one of {list(SDE_KINDS)}.")
    if not 0.0 <= noise_level <= 1.0:
        raise ValueError(f"noise_level must be in [0, 1] (Flow-GRPO uses 0.7), got {noise_level}.")
    s, s_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    if (
        s.shape != (x.shape[0],)
        or s_next.shape != s.shape
        or (s_next >= s).any()
        or (s > 1).any()
        or (s_next < 0).any()
    ):
        raise ValueError(
            f"sigma and sigma_next must be scalars or ({x.shape[0]},) with 1 >= sigma > sigma_next >= 0, "
            f"got {s.tolist()} and {s_next.tolist()}."
        )
    shape = (-1,) + (1,) * (x.ndim - 1)
    x = _work(x)
    v = v.to(x.dtype)
    if kind == "sde":
        denom = s
        if (s == 1).any():
            if sigma_max_denominator is None:
                raise ValueError(
                    "A step at sigma = 1 needs sigma_max_denominator: pass the grid's second value (sigmas[1]); "
                    "1 - sigma would be zero."
                )
            if not 0 < sigma_max_denominator < 1:
                raise ValueError(f"sigma_max_denominator must be in (0, 1) (sigmas[1]), got {sigma_max_denominator}.")
            denom = torch.where(s == 1, torch.full_like(s, float(sigma_max_denominator)), s)
        g = noise_level * torch.sqrt(s / (1 - denom))
        dt = (s_next - s).view(shape)
        gv, sv = g.view(shape), s.view(shape)
        mean = x + dt * (v + gv**2 / (2 * sv) * (x + (1 - sv) * v))
        return mean, g, g * torch.sqrt(s - s_next)
    std = s_next * math.sin(noise_level * math.pi / 2)
    sv, tv, stdv = s.view(shape), s_next.view(shape), std.view(shape)
    x0_hat, eps_hat = x - sv * v, x + (1 - sv) * v
    mean = (1 - tv) * x0_hat + torch.sqrt(tv**2 - stdv**2) * eps_hat
    return mean, std, std


def sde_step(
    v: torch.Tensor,
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    *,
    noise_level: float = 0.7,
    kind: str = "sde",
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sigma_max_denominator: float | None = None,
) -> SDEStep:
    """One Flow-GRPO step from sigma to sigma_next (method.md, GRPO), sampling or scoring a given prev_sample.

    "sde": g = a sqrt(sigma / (1 - sigma')), sigma' = sigma except sigma' = sigma_max_denominator (the grid's second
    value) where sigma = 1; dt = sigma_next - sigma; mean = x + dt [v + g^2 / (2 sigma) (x + (1 - sigma) v)];
    prev_sample = mean + g sqrt(-dt) noise; log_prob = mean over non-batch dims of the Gaussian log-density.
    "cps": s = sigma_next sin(a pi / 2), mean = (1 - sigma_next) (x - sigma v) + sqrt(sigma_next^2 - s^2)
    (x + (1 - sigma) v); prev_sample = mean + s noise; log_prob = -mean (prev_sample - mean)^2, no constants.
    """
    if prev_sample is not None and generator is not None:
        raise ValueError("Pass either prev_sample (score a stored step) or generator (sample a new one), not both.")
    mean, std, noise_std = sde_transition(
        v, x, sigma, sigma_next, noise_level=noise_level, kind=kind, sigma_max_denominator=sigma_max_denominator
    )
    shape = (-1,) + (1,) * (x.ndim - 1)
    if kind == "sde" and not (noise_std > 0).all():
        raise ValueError(
            f"noise_level={noise_level} makes this SDE step deterministic, so its log-probability is undefined; "
            "use noise_level > 0 (Flow-GRPO uses 0.7) or an ODE step."
        )
    if prev_sample is None:
        device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=device, dtype=mean.dtype).to(x.device)
        prev_sample = mean + noise_std.view(shape) * noise
    target = prev_sample.detach().to(mean.dtype)
    dims = tuple(range(1, x.ndim))
    if kind == "sde":
        sd = noise_std.view(shape)
        density = -((target - mean) ** 2) / (2 * sd**2) - torch.log(sd) - 0.5 * math.log(2 * math.pi)
        log_prob = density.mean(dim=dims)
    else:
        log_prob = -((target - mean) ** 2).mean(dim=dims)
    return SDEStep(prev_sample, log_prob, mean, std, noise_std)


@dataclass
class SDETrajectory:
    """A Flow-GRPO rollout: latents (T+1, B, ...), log_probs (T, B) (NaN at ODE steps), the SDE step indices.

    Latents stay in the update dtype (float32 at least): rounding them to a bf16 model dtype would change the
    log-probability that replaying a stored step computes.
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    sde_steps: tuple[int, ...]


def sample_sde_window(
    num_steps: int, window_size: int, generator: torch.Generator, latest_start: int | None = None
) -> tuple[int, int]:
    """Random window [start, start + window_size) of SDE steps for "Flow-GRPO-Fast".

    start is uniform in [0, latest_start] (default: the last start that fits in num_steps).
    """
    last = num_steps - window_size if latest_start is None else latest_start
    if window_size < 1 or not 0 <= last <= num_steps - window_size:
        raise ValueError(
            f"Cannot place an SDE window of {window_size} steps starting at most at {last} in {num_steps} steps; "
            "use 1 <= window_size <= num_steps and latest_start <= num_steps - window_size."
        )
    start = int(torch.randint(0, last + 1, (1,), generator=generator))
    return start, start + window_size


def sde_sample(
    velocity_fn: VelocityFn,
    x1: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_level: float = 0.7,
    kind: str = "sde",
    sde_window: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> SDETrajectory:
    """Roll out with SDE steps for step indices start <= i < end of sde_window and Euler steps elsewhere.

    sde_window None makes every step stochastic. Only the SDE steps have a log-probability, so only they can be
    trained; ODE steps keep the rollout cheap and close to the deterministic sampler ("Flow-GRPO-Fast").
    """
    grid = _check_sigmas(sigmas)
    num_steps = len(grid) - 1
    start, end = (0, num_steps) if sde_window is None else sde_window
    if not 0 <= start < end <= num_steps:
        raise ValueError(
            f"sde_window must satisfy 0 <= start < end <= {num_steps} (number of steps), got {sde_window}."
        )
    x = _work(x1)
    latents, log_probs = [x], []
    for i, (s, t) in enumerate(zip(grid, grid[1:])):
        v = _work(velocity_fn(x.to(x1.dtype), torch.full((x.shape[0],), s, device=x.device))).to(x.dtype)
        if start <= i < end:
            step = sde_step(
                v, x, s, t, noise_level=noise_level, kind=kind, generator=generator, sigma_max_denominator=grid[1]
            )
            x, log_prob = step.prev_sample, step.log_prob
        else:
            x, log_prob = x + (t - s) * v, torch.full((x.shape[0],), math.nan, dtype=x.dtype, device=x.device)
        latents.append(x)
        log_probs.append(log_prob)
    return SDETrajectory(torch.stack(latents), torch.stack(log_probs), tuple(range(start, end)))
