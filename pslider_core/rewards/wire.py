"""The reward server's request body: one safetensors blob (no pickle, no base64, exact floats).

Tensors: `images` (N,3,H,W) or (N,T,3,H,W) float32 in [0, 1]; optional `sources` (N,3,H,W) and `audio`, float32.
Metadata (the safetensors header's `__metadata__`, strings only): `prompts` as a JSON list and, with audio,
`audio_sample_rate`. Content type `application/octet-stream`. The reply is JSON `{"scores": [...]}`.

`decode_batch` parses bodies from untrusted clients: it checks the header before any tensor is built, safetensors
checks that every declared shape fits the bytes actually sent, and shapes that would make a reward allocate far
more than the body (extreme aspect ratios, sources repeated over many frames) are refused.
"""

from __future__ import annotations

import json

from safetensors import SafetensorError
from safetensors.torch import load, save

from .base import RewardBatch

TENSORS = ("images", "sources", "audio")
MAX_HEADER_BYTES = 16 << 20  # prompts for thousands of samples; a larger header only costs parsing memory
# Model rewards resize the short side to about 224 pixels: a 1 x 100000 strip would grow into gigabytes.
MAX_ASPECT_RATIO = 16


def encode_batch(batch: RewardBatch) -> bytes:
    tensors = {"images": batch.images.detach().float().cpu().contiguous()}
    metadata = {"prompts": json.dumps(batch.prompts)}
    for key in ("sources", "audio"):
        value = getattr(batch, key)
        if value is not None:
            tensors[key] = value.detach().float().cpu().contiguous()
    if batch.audio_sample_rate:
        metadata["audio_sample_rate"] = str(batch.audio_sample_rate)
    return save(tensors, metadata=metadata)


def _malformed(problem: str) -> ValueError:
    return ValueError(f"request body {problem}; build it with pslider_core.rewards.wire.encode_batch")


def _read_metadata(data: bytes) -> dict:
    """The metadata of a safetensors body whose header was checked against what the server accepts."""
    if len(data) < 8:
        raise _malformed(f"is {len(data)} bytes, too short for a safetensors blob")
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, MAX_HEADER_BYTES):
        raise _malformed(
            f"declares a {size}-byte safetensors header, but at most {min(len(data) - 8, MAX_HEADER_BYTES)} bytes "
            "are allowed here: it is truncated or not a safetensors blob"
        )
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, RecursionError) as exc:
        raise _malformed(f"has a safetensors header that is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _malformed("has a safetensors header that is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    unknown = sorted(set(header) - set(TENSORS))
    if unknown:
        raise _malformed(f"has unexpected tensors {unknown}; send only {', '.join(TENSORS)}")
    if "images" not in header:
        raise _malformed("has no 'images' tensor")
    for name, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype != "F32":
            raise ValueError(
                f"request tensor {name!r} must be float32 (safetensors F32) with values in [0, 1], got {dtype!r}; "
                "for uint8 images send images.float() / 255"
            )
    if not isinstance(metadata, dict) or not isinstance(metadata.get("prompts"), str):
        raise _malformed("has no 'prompts' metadata (a JSON list of strings, one per sample)")
    return metadata


def _check_sizes(batch: RewardBatch, body_bytes: int) -> None:
    for what, tensor in (("images", batch.images), ("sources", batch.sources)):
        if tensor is not None:
            height, width = tensor.shape[-2:]
            if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
                raise ValueError(
                    f"request {what} of {height}x{width} pixels have an aspect ratio over {MAX_ASPECT_RATIO}:1, "
                    "which rewards would upscale into far more memory than the request; send ordinary images"
                )
    if batch.is_video and batch.sources is not None:
        expanded = batch.images.shape[1] * batch.sources.numel() * 4
        if expanded > body_bytes:
            raise ValueError(
                f"request sources {tuple(batch.sources.shape)} repeated over {batch.images.shape[1]} frames would "
                f"take {expanded} bytes, more than the {body_bytes}-byte request; send sources at most at the "
                "frames' resolution"
            )


def decode_batch(data: bytes) -> RewardBatch:
    """Parse and validate a request body from an untrusted client; raises ValueError saying what is wrong."""
    metadata = _read_metadata(data)
    try:
        prompts = json.loads(metadata["prompts"])
    except (ValueError, RecursionError):
        raise _malformed("has 'prompts' metadata that is not JSON (a list of strings, one per sample)") from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise _malformed("has 'prompts' metadata that is not a JSON list of strings, one per sample")
    rate = metadata.get("audio_sample_rate")
    if rate is not None and not (isinstance(rate, str) and rate.isdigit() and int(rate) > 0):
        raise _malformed(f"has audio_sample_rate {rate!r}; give it in Hz as a positive integer")
    try:
        tensors = load(data)  # rejects shapes and offsets that do not fit the bytes sent
    except SafetensorError as exc:
        raise _malformed(f"is not a valid safetensors blob ({exc})") from None
    batch = RewardBatch(
        images=tensors["images"],
        prompts=prompts,
        sources=tensors.get("sources"),
        audio=tensors.get("audio"),
        audio_sample_rate=int(rate) if rate else None,
    )
    _check_sizes(batch, len(data))
    return batch
