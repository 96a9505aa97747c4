"""Training metrics: one JSON line per epoch plus TensorBoard scalars, and the end-of-run summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from pslider_core.preference_sampling import w_bucket


class MetricsLogger:
    """`metrics.jsonl` and TensorBoard event files under `log_dir`; a no-op on processes other than the main one."""

    def __init__(self, log_dir: Path, enabled: bool, start_epoch: int = 0) -> None:
        self.enabled = enabled
        self.path = Path(log_dir) / "metrics.jsonl"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # a fresh run starts over; a resumed one drops what came after its checkpoint
                kept = [line for line in self.path.read_text().splitlines()
                        if start_epoch and json.loads(line).get("epoch", 0) <= start_epoch]
                self.path.write_text("".join(line + "\n" for line in kept))
            # purge_step drops events a crashed run logged after its last checkpoint
            self.writer = SummaryWriter(str(log_dir), purge_step=start_epoch + 1 if start_epoch else None)

    def log(self, epoch: int, metrics: dict[str, Any]) -> None:
        """One line {"epoch": epoch, ...metrics}; TensorBoard scalars use the epoch as their step."""
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def reward_metrics(rewards: torch.Tensor, names: Sequence[str], w: torch.Tensor | None) -> dict[str, float]:
    """Mean of each reward over the batch and, with preferences, within each w bucket (see `w_bucket`)."""
    out = {f"reward/{name}": float(rewards[:, m].mean()) for m, name in enumerate(names)}
    if w is not None:
        labels = w_bucket(w)
        for label in sorted(set(labels)):
            rows = torch.tensor([x == label for x in labels])
            for m, name in enumerate(names):
                out[f"reward_by_w/{name}/{label}"] = float(rewards[rows, m].mean())
    return out


def format_summary(history: list[dict[str, Any]], names: Sequence[str], extra: dict[str, Any]) -> str:
    """Plain-text end-of-run report: settings, reward means first vs last epoch, per-w means, time per stage."""
    lines = ["", "ParetoSlider training summary", "-" * 60]
    lines += [f"{key:<22} {value}" for key, value in extra.items()]
    trained = [h for h in history if "loss" in h]
    if history:
        first, last = history[0], history[-1]
        lines.append(f"{'reward':<40} {'first epoch':>11} {'last epoch':>11}")
        for name in names:
            key = f"reward/{name}"
            lines.append(f"{name[:40]:<40} {first.get(key, float('nan')):>11.4g} {last.get(key, float('nan')):>11.4g}")
        buckets = sorted(k for k in last if k.startswith("reward_by_w/"))
        if buckets:
            lines.append("last epoch, mean reward by preference bucket:")
            lines += [f"  {k[len('reward_by_w/'):]:<50} {last[k]:.4g}" for k in buckets]
    if trained:
        lines.append(f"{'final loss':<22} {trained[-1]['loss']:.4g}")
    for stage in ("rollout", "reward", "optimisation"):
        total = sum(h.get(f"time/{stage}", 0.0) for h in history)
        lines.append(f"{'time ' + stage:<22} {total:.1f} s")
    lines.append("-" * 60)
    return "\n".join(lines)
