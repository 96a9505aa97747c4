"""Exponential moving average of the trainable weights; checkpoints store the averaged weights (method.md, step 6)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


def ema_decay(step: int, max_decay: float = 0.9) -> float:
    """Warm-up decay min((1 + step) / (10 + step), max_decay): early averages forget the random start quickly."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    return min((1 + step) / (10 + step), max_decay)


class EMA:
    """Shadow copy of a list of parameters, updated after every optimizer step."""

    def __init__(self, params: Iterable[torch.Tensor], max_decay: float = 0.9) -> None:
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"max_decay must be in [0, 1), got {max_decay}.")
        self.shadow = [p.detach().clone() for p in params]
        self.max_decay = max_decay
        self.num_updates = 0
        self._stored: list[torch.Tensor] | None = None

    def _check(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(params) != len(self.shadow) or any(p.shape != s.shape for p, s in zip(params, self.shadow)):
            raise ValueError(
                f"EMA tracks {len(self.shadow)} tensors but got {len(params)} (or different shapes); pass the same "
                "trainable parameters, in the same order, as when the EMA was created."
            )
        return params

    @torch.no_grad()
    def update(self, params: Iterable[torch.Tensor]) -> None:
        """shadow <- d shadow + (1 - d) param with d = ema_decay(number of updates so far, this one included)."""
        self.num_updates += 1
        keep = ema_decay(self.num_updates, self.max_decay)
        for s, p in zip(self.shadow, self._check(list(params))):
            s.lerp_(p.detach().to(s.device, s.dtype), 1.0 - keep)

    @torch.no_grad()
    def copy_to(self, params: Iterable[torch.Tensor]) -> None:
        for s, p in zip(self.shadow, self._check(list(params))):
            p.copy_(s)

    @torch.no_grad()
    def store(self, params: Iterable[torch.Tensor]) -> None:
        """Remember the current weights so that `restore` can put them back after the EMA weights were copied in."""
        self._stored = [p.detach().clone() for p in self._check(list(params))]

    @torch.no_grad()
    def restore(self, params: Iterable[torch.Tensor]) -> None:
        if self._stored is None:
            raise RuntimeError("EMA.restore called without a matching EMA.store; call store(params) first.")
        for saved, p in zip(self._stored, self._check(list(params))):
            p.copy_(saved)
        self._stored = None

    @contextmanager
    def swapped_in(self, params: Iterable[torch.Tensor]) -> Iterator[None]:
        """Within the block the parameters hold the EMA weights (to save or evaluate them), then their own again."""
        params = list(params)
        self.store(params)
        self.copy_to(params)
        try:
            yield
        finally:
            self.restore(params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors only, so the state can go into a safetensors file."""
        state = {f"shadow.{i}": s for i, s in enumerate(self.shadow)}
        state["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        keys = {f"shadow.{i}" for i in range(len(self.shadow))} | {"num_updates"}
        if set(state) != keys or any(state[f"shadow.{i}"].shape != s.shape for i, s in enumerate(self.shadow)):
            raise ValueError(
                f"EMA state does not match the {len(self.shadow)} tracked tensors (keys {sorted(state)[:5]}...); "
                "load the state saved for this same set of trainable parameters."
            )
        with torch.no_grad():
            for i, s in enumerate(self.shadow):
                s.copy_(state[f"shadow.{i}"])
        self.num_updates = int(state["num_updates"])
