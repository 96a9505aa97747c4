"""The reward server's request body: one safetensors blob (no pickle, no base64, exact floats).

Tensors: `images` (N,3,H,W) or (N,T,3,H,W) float32 in [0, 1]; optional `sources` (N,3,H,W) and `audio`.
Metadata (the safetensors header's `__metadata__`, strings only): `prompts` as a JSON list and, with audio,
`audio_sample_rate`. Content type `application/octet-stream`. The reply is JSON `{"scores": [...]}`.
"""

from __future__ import annotations

import json

from safetensors.torch import load, save

from .base import RewardBatch


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


def decode_batch(data: bytes) -> RewardBatch:
    """Parse and validate a request body; raises ValueError saying what is wrong."""
    try:
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
        tensors = load(data)
        prompts = json.loads(metadata["prompts"])
    except Exception as exc:  # any parse failure is the client's malformed body
        raise ValueError(
            f"request body is not a safetensors blob with 'images' and 'prompts' metadata ({exc!r}); "
            "build it with pslider_core.rewards.wire.encode_batch"
        ) from None
    if "images" not in tensors:
        raise ValueError("request body has no 'images' tensor")
    rate = metadata.get("audio_sample_rate")
    return RewardBatch(
        images=tensors["images"],
        prompts=prompts,
        sources=tensors.get("sources"),
        audio=tensors.get("audio"),
        audio_sample_rate=int(rate) if rate else None,
    )
