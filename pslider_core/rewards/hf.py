"""Loading transformers checkpoints for rewards: hub id or local directory, cached, with actionable errors.

Images are preprocessed with torch ops (resize shortest side, center crop, normalise) from the checkpoint's
`preprocessor_config.json`, so batches never leave the device and no torchvision is needed.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from kornia.geometry.transform import resize

T = TypeVar("T")
_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def cached(key: tuple, build: Callable[[], T]) -> T:
    """One object per key for the whole process (models shared by rewards on the same checkpoint and device)."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget every cached reward model (rewards reload on their next call)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _how_to_fix(reward: str, param: str) -> str:
    return (
        f"If this machine cannot reach the Hugging Face hub, download the checkpoint elsewhere "
        f"(`huggingface-cli download <id> --local-dir DIR`) and pass {reward}({param}=DIR)."
    )


def check_source(source: str, reward: str, param: str = "model") -> str:
    """Reject a local path that does not exist before transformers mistakes it for a hub id."""
    if os.path.isdir(source) or _HUB_ID.match(source):
        return source
    raise FileNotFoundError(
        f"reward {reward!r}: {param}={source!r} is neither an existing local directory nor a hub id "
        f"(owner/name). Pass the directory that holds config.json and the weights."
    )


def from_pretrained(loader: Callable[..., T], source: str, reward: str, param: str = "model", **kwargs) -> T:
    """`loader(source, **kwargs)` (a transformers `from_pretrained`) with an error naming the reward and the fix."""
    check_source(source, reward, param)
    try:
        return loader(source, **kwargs)
    except OSError as exc:
        raise OSError(
            f"reward {reward!r} could not load {param}={source!r}: {exc}\n{_how_to_fix(reward, param)}"
        ) from exc


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize (shortest side or exact size), center crop and normalise (N,3,H,W) images in [0, 1]."""

    size: int | tuple[int, int]
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_pretrained(cls, source: str, reward: str, param: str = "processor") -> ImagePreprocessor:
        from transformers.utils import cached_file

        path = from_pretrained(
            cached_file,
            source,
            reward,
            param,
            filename="preprocessor_config.json",
            _raise_exceptions_for_missing_entries=False,
        )
        if path is None:
            raise FileNotFoundError(
                f"reward {reward!r}: {param}={source!r} has no preprocessor_config.json. Pass processor= a checkpoint "
                "that has one and the matching tokenizer (the model's original hub id or its downloaded directory)."
            )
        with open(path, encoding="utf-8") as f:
            return cls.from_config(json.load(f))

    @classmethod
    def from_config(cls, config: dict) -> ImagePreprocessor:
        def pair(value: int | dict) -> tuple[int, int]:
            if isinstance(value, int):
                return value, value
            return value["height"], value["width"]

        size = config["size"]
        if isinstance(size, dict) and "shortest_edge" in size:
            size = size["shortest_edge"]
        elif not isinstance(size, int):
            size = pair(size)
        crop_size = config.get("crop_size")
        crop = pair(crop_size) if crop_size else (size if isinstance(size, tuple) else (size, size))
        return cls(size=size, crop=crop, mean=tuple(config["image_mean"]), std=tuple(config["image_std"]))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if isinstance(self.size, int):
            images = resize(images, self.size, interpolation="bicubic", side="short", antialias=True)
        else:
            images = resize(images, self.size, interpolation="bicubic", antialias=True)
        height, width = images.shape[-2:]
        crop_h, crop_w = self.crop
        if crop_h > height or crop_w > width:
            raise ValueError(f"crop {self.crop} is larger than the resized image {(height, width)}")
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        images = images[..., top : top + crop_h, left : left + crop_w].clamp(0, 1)
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std
