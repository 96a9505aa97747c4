"""Training-time preference sampling (method.md, training loop step 1).

Every prompt gets `num_slots` preference vectors per epoch. Each slot's w comes from its own seed, derived from
(prompt, epoch, slot, run seed) with a cryptographic hash, so every process of a distributed run, and a resumed
run, draws exactly the same w without communicating.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields

import numpy as np
import torch

_KINDS = ("corners", "edges", "interior")


@dataclass(frozen=True)
class PreferenceMixture:
    """Probabilities of the three kinds of w: one-hot corners, pairs (edges), the full simplex (interior).

    Edges put Dirichlet(alpha, alpha) weight on a random pair of rewards and zero elsewhere; the interior is
    Dirichlet(alpha, ..., alpha). Exact zeros matter with 3+ rewards: with full-simplex sampling only, every w
    weighs every reward and the reward with the strongest signal dominates training.
    """

    corners: float
    edges: float
    interior: float
    alpha: float = 1.0

    def __post_init__(self) -> None:
        probs = {k: float(getattr(self, k)) for k in _KINDS}
        for key, value in probs.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Preference mixture probability {key}={value} must be a finite number >= 0.")
        total = sum(probs.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"Preference mixture probabilities must sum to 1, got {total:g} ({self.to_text()}); "
                "for example corners=0.1,interior=0.9."
            )
        if not math.isfinite(float(self.alpha)) or self.alpha <= 0:
            raise ValueError(f"Dirichlet alpha must be a finite number > 0, got {self.alpha}; 1.0 is uniform.")

    @classmethod
    def paper(cls, num_rewards: int) -> PreferenceMixture:
        """The reference preset: 2 rewards 10% corners + 90% Dirichlet(1,1); 3+ rewards 50/35/15."""
        if num_rewards < 1:
            raise ValueError(f"num_rewards must be >= 1, got {num_rewards}.")
        if num_rewards <= 2:
            return cls(corners=0.1, edges=0.0, interior=0.9)
        return cls(corners=0.5, edges=0.35, interior=0.15)

    @classmethod
    def parse(cls, text: str, num_rewards: int | None = None) -> PreferenceMixture:
        """Read the CLI form "corners=0.1,interior=0.9" (missing kinds are 0) or "paper" (needs num_rewards)."""
        text = text.strip()
        if text == "paper":
            if num_rewards is None:
                raise ValueError("The 'paper' preference mixture depends on the number of rewards; pass num_rewards.")
            return cls.paper(num_rewards)
        known = [f.name for f in fields(cls)]
        values: dict[str, float] = {k: 0.0 for k in _KINDS}
        seen: set[str] = set()
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = (s.strip() for s in part.partition("="))
            if not sep or key not in known:
                raise ValueError(
                    f"Cannot read {part!r} in preference mixture {text!r}; write key=value pairs with keys from "
                    f"{known}, for example 'corners=0.1,interior=0.9', or 'paper'."
                )
            if key in seen:
                raise ValueError(f"Preference mixture {text!r} sets {key} twice; give each key once.")
            seen.add(key)
            try:
                values[key] = float(raw)
            except ValueError:
                raise ValueError(f"{key}={raw!r} in preference mixture {text!r} is not a number.") from None
        if not seen & set(_KINDS):
            raise ValueError(f"Preference mixture {text!r} sets no probability; e.g. 'corners=0.1,interior=0.9'.")
        return cls(**values)

    def to_text(self) -> str:
        """The form `parse` reads back (logs, checkpoint metadata)."""
        return ",".join(f"{f.name}={float(getattr(self, f.name)):g}" for f in fields(self))


CORNERS = PreferenceMixture(corners=1.0, edges=0.0, interior=0.0)


def epoch_mixture(mixture: PreferenceMixture, epoch: int, epochs: int, corners_first: float) -> PreferenceMixture:
    """The mixture of one (0-based) epoch under a corners-first curriculum: corners only for the first
    round(corners_first x epochs) epochs. Measured on the toy world (docs/toy.md): the ends reach a fixed run's
    reward sooner when they get all the early rollouts, and the interior, learned after, still follows w."""
    return CORNERS if epoch < round(corners_first * epochs) else mixture


def slot_seed(prompt_key: str, epoch: int, slot: int, seed: int) -> int:
    """Seed of one preference slot: sha256 of the tuple, so it is the same in every process and Python run.

    Hashing the whole tuple (not adding per-field offsets) keeps distinct tuples from colliding.
    """
    payload = json.dumps([str(prompt_key), int(epoch), int(slot), int(seed)]).encode("utf-8")
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") >> 1  # < 2**63: valid torch seed


def sample_preference(num_rewards: int, mixture: PreferenceMixture, generator: torch.Generator) -> torch.Tensor:
    """One w (M,) float32 on the simplex, drawn from the mixture with randomness from `generator` only."""
    if num_rewards < 1:
        raise ValueError(f"num_rewards must be >= 1, got {num_rewards}.")
    if num_rewards == 1:
        return torch.ones(1)
    # numpy's Dirichlet takes any alpha; its generator is seeded from the torch one, so `generator` decides all.
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    kind = rng.choice(len(_KINDS), p=[mixture.corners, mixture.edges, mixture.interior])
    w = np.zeros(num_rewards)
    if _KINDS[kind] == "corners":
        w[rng.integers(num_rewards)] = 1.0
    elif _KINDS[kind] == "edges":
        w[rng.choice(num_rewards, size=2, replace=False)] = rng.dirichlet([mixture.alpha] * 2)
    else:
        w = rng.dirichlet([mixture.alpha] * num_rewards)
    w = torch.from_numpy(w).to(torch.float32)
    return w / w.sum()


def preference_slots(
    prompt_keys: list[str], epoch: int, num_slots: int, num_rewards: int, seed: int, mixture: PreferenceMixture
) -> torch.Tensor:
    """w for every (prompt, slot) of an epoch: (P, S, M). Depends only on the arguments, not on call order."""
    if num_slots < 1:
        raise ValueError(f"num_slots must be >= 1 (preference groups per prompt), got {num_slots}.")
    out = torch.empty(len(prompt_keys), num_slots, num_rewards)
    for p, key in enumerate(prompt_keys):
        for s in range(num_slots):
            gen = torch.Generator().manual_seed(slot_seed(key, epoch, s, seed))
            out[p, s] = sample_preference(num_rewards, mixture, gen)
    return out


def w_bucket(w: torch.Tensor, num_bins: int = 5) -> list[str]:
    """Label per preference, for per-bucket metrics.

    2 rewards: the bin of w_0, e.g. "w0=0.0-0.2" (w_0 = 1 falls in the last bin). 1 reward: "w0=1". 3+ rewards:
    "w{m}>0.5" for the reward holding the majority of the weight, otherwise "balanced".
    """
    w = torch.as_tensor(w).detach().float().cpu()
    if w.ndim == 1:
        w = w.unsqueeze(0)
    if w.ndim != 2 or w.shape[1] < 1:
        raise ValueError(f"w_bucket takes w of shape (M,) or (B, M), got {tuple(w.shape)}.")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
    num_rewards = w.shape[1]
    if num_rewards == 1:
        return ["w0=1"] * w.shape[0]
    if num_rewards == 2:
        idx = (w[:, 0] * num_bins).floor().clamp(0, num_bins - 1).long().tolist()
        digits = 1 if 10 % num_bins == 0 else 2
        return [f"w0={i / num_bins:.{digits}f}-{(i + 1) / num_bins:.{digits}f}" for i in idx]
    top, arg = w.max(dim=1)
    return [f"w{int(a)}>0.5" if float(t) > 0.5 else "balanced" for t, a in zip(top, arg)]
