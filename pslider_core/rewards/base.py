"""The reward protocol shared by the trainer, the evaluator and the reward server.

A reward maps a batch of generated samples (plus prompts, and sources when editing) to one float per sample.
Rewards are never summed here: the trainer scores every sample with every reward and combines them later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# Decoders overshoot [0, 1] by a few 1e-3 after float16 arithmetic; anything beyond that is a wrong range.
VALUE_TOLERANCE = 1e-2


def _check_image_tensor(tensor: torch.Tensor, what: str, ndim: tuple[int, ...], layout: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor {layout}, got {type(tensor).__name__}")
    if tensor.ndim not in ndim:
        raise ValueError(f"{what} must be {layout}, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(
            f"{what} must be a float tensor in [0, 1], got dtype {tensor.dtype}; "
            "for uint8 images pass images.float() / 255"
        )
    if tensor.shape[-3] != 3:
        raise ValueError(
            f"{what} must have 3 RGB channels at dim -3 ({layout}), got shape {tuple(tensor.shape)}; "
            "repeat grey images to 3 channels and move channels before height and width"
        )
    if tensor.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(tensor.shape)})")
    low, high = float(tensor.detach().min()), float(tensor.detach().max())
    if math.isnan(low) or math.isnan(high):  # min/max propagate NaN: no extra isnan pass over the tensor
        raise ValueError(f"{what} contains NaN values")
    if low < -VALUE_TOLERANCE or high > 1 + VALUE_TOLERANCE:
        hint = " (looks like [-1, 1]: pass (x + 1) / 2)" if low < -0.5 else ""
        hint = hint or (" (looks like [0, 255]: pass x / 255)" if high > 2 else "")
        raise ValueError(f"{what} must be in [0, 1], got values in [{low:.4g}, {high:.4g}]{hint}")


@dataclass
class RewardBatch:
    """Samples to score: images (N,3,H,W) or videos (N,T,3,H,W) as floats in [0, 1], one prompt per sample.

    `sources` are the editing inputs (N,3,H,W) in [0, 1], possibly at another resolution than `images`.
    `audio` (N, ...) with its sample rate is carried for audio-aware rewards.
    """

    images: torch.Tensor
    prompts: list[str]
    sources: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    audio_sample_rate: int | None = None

    def __post_init__(self) -> None:
        _check_image_tensor(self.images, "RewardBatch.images", (4, 5), "(N,3,H,W) images or (N,T,3,H,W) videos")
        if isinstance(self.prompts, str) or not all(isinstance(p, str) for p in self.prompts):
            raise TypeError("RewardBatch.prompts must be a list of strings, one per sample")
        self.prompts = list(self.prompts)
        n = self.images.shape[0]
        if len(self.prompts) != n:
            raise ValueError(f"RewardBatch has {n} samples but {len(self.prompts)} prompts; pass one prompt per sample")
        if self.sources is not None:
            _check_image_tensor(self.sources, "RewardBatch.sources", (4,), "(N,3,H,W) source images")
            if self.sources.shape[0] != n:
                raise ValueError(
                    f"RewardBatch has {n} samples but {self.sources.shape[0]} sources; pass one source per sample"
                )
        if self.audio is not None:
            if self.audio.shape[0] != n:
                raise ValueError(f"RewardBatch has {n} samples but audio for {self.audio.shape[0]}")
            if not self.audio_sample_rate:
                raise ValueError("RewardBatch.audio needs audio_sample_rate (Hz)")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def is_video(self) -> bool:
        return self.images.ndim == 5

    def select(self, start: int, stop: int) -> RewardBatch:
        """The samples start..stop-1 (used to score large batches in chunks)."""
        pick = slice(start, stop)
        return RewardBatch(
            images=self.images[pick],
            prompts=self.prompts[pick],
            sources=None if self.sources is None else self.sources[pick],
            audio=None if self.audio is None else self.audio[pick],
            audio_sample_rate=self.audio_sample_rate,
        )

    def frames(self) -> RewardBatch:
        """A video batch flattened to N*T images, sample-major; prompts and sources repeated per frame."""
        if not self.is_video:
            raise ValueError("RewardBatch.frames() needs a video batch (N,T,3,H,W)")
        n, t = self.images.shape[:2]
        return RewardBatch(
            images=self.images.reshape(n * t, *self.images.shape[2:]),
            prompts=[p for p in self.prompts for _ in range(t)],
            sources=None if self.sources is None else self.sources.repeat_interleave(t, dim=0),
        )


class NonFiniteScoreError(ValueError):
    """A reward returned NaN or inf: the trainer skips that step instead of stopping."""


class Reward:
    """Base class: subclasses set the class attributes and implement `score`.

    Calling a reward validates the batch, runs `score` under `torch.no_grad()` in chunks of `batch_size`
    and returns a float32 CPU tensor of shape (N,). An image reward given a video batch scores every frame
    and averages over time (rewards that need video or audio see whole clips). Model-based rewards load their
    models on the first call (or `load()`) and keep them; `to()` picks the device and dtype.
    """

    name: str = ""
    description: str = ""
    needs_source: bool = False
    needs_video: bool = False
    needs_audio: bool = False
    higher_is_better: bool = True
    batch_size: int | None = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @property
    def base_name(self) -> str:
        """The registry name without parameters, for messages that suggest a spec to write."""
        return type(self).name or self.name

    def score(self, batch: RewardBatch) -> torch.Tensor:
        """One score per sample of a batch that already passed the checks."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(batch)")

    def load(self) -> Reward:
        """Load models now rather than on the first call (fail early); model-free rewards have nothing to load."""
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Reward:
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        return self

    def torch_modules(self) -> list[nn.Module]:
        """The torch models this reward has loaded, e.g. for the trainer to keep them off the GPU between stages."""
        return []

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        if not isinstance(batch, RewardBatch):
            raise TypeError(f"reward '{self.name}' takes a RewardBatch, got {type(batch).__name__}")
        if self.needs_source and batch.sources is None:
            raise ValueError(
                f"reward '{self.name}' compares each sample with its source image: pass RewardBatch(sources=...) "
                "(N,3,H,W) in [0, 1]"
            )
        if self.needs_audio and batch.audio is None:
            raise ValueError(f"reward '{self.name}' scores audio: pass RewardBatch(audio=..., audio_sample_rate=...)")
        if self.needs_video and not batch.is_video:
            raise ValueError(
                f"reward '{self.name}' scores videos: pass images as (N,T,3,H,W), got {tuple(batch.images.shape)}"
            )
        if batch.is_video and not (self.needs_video or self.needs_audio):  # sound belongs to the whole clip
            frames = batch.frames()
            return self._score_in_chunks(frames).view(len(batch), -1).mean(dim=1)
        return self._score_in_chunks(batch)

    def _score_in_chunks(self, batch: RewardBatch) -> torch.Tensor:
        n = len(batch)
        step = self.batch_size or n
        with torch.no_grad():
            parts = [self._checked_score(batch.select(i, i + step)) for i in range(0, n, step)]
        return torch.cat(parts)

    def _checked_score(self, batch: RewardBatch) -> torch.Tensor:
        scores = torch.as_tensor(self.score(batch)).detach().to(device="cpu", dtype=torch.float32)
        if scores.shape != (len(batch),):
            raise ValueError(
                f"reward '{self.name}' returned shape {tuple(scores.shape)} for {len(batch)} samples; "
                "score() must return one float per sample"
            )
        if not torch.isfinite(scores).all():
            raise NonFiniteScoreError(f"reward '{self.name}' returned non-finite scores {scores.tolist()}")
        return scores

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.device}>"


class FunctionReward(Reward):
    """Wraps a plain function `f(batch) -> scores` (user rewards); flags are read from the function's attributes."""

    def __init__(self, fn, name: str) -> None:
        self.fn = fn
        self.name = name
        doc = (fn.__doc__ or "").strip()
        self.description = getattr(fn, "description", doc.splitlines()[0] if doc else f"user function {name}")
        for flag in ("needs_source", "needs_video", "needs_audio", "higher_is_better", "batch_size"):
            if hasattr(fn, flag):
                setattr(self, flag, getattr(fn, flag))

    def score(self, batch: RewardBatch) -> torch.Tensor:
        return self.fn(batch)


class ModelReward(Reward):
    """A reward backed by models: `_load()` builds them on the first call, `to()` drops them for a reload.

    Loaders go through `hf.cached` so two rewards on the same checkpoint, device and dtype share one copy.
    """

    batch_size: int | None = 16
    _loaded: object = None

    def _load(self) -> object:
        raise NotImplementedError(f"{type(self).__name__} must implement _load()")

    @property
    def models(self):
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def load(self) -> Reward:
        _ = self.models
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Reward:
        super().to(device, dtype)
        self._loaded = None
        return self

    def torch_modules(self) -> list[nn.Module]:
        return _modules_in(self._loaded) if self._loaded is not None else []


def _modules_in(obj: object) -> list[nn.Module]:
    """nn.Modules of a loaded-models object: itself, the items of a tuple or list, or an embedder's attributes."""
    if isinstance(obj, nn.Module):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [m for value in obj for m in _modules_in(value)]
    return [value for value in getattr(obj, "__dict__", {}).values() if isinstance(value, nn.Module)]
