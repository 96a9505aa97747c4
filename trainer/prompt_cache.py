"""Each prompt's conditioning encoded once per run: text embeddings (and Kontext's source latents) in host memory.

Prompts are encoded in fixed blocks of the prompts file (block i holds prompts i*b .. i*b + b - 1), whenever and on
whichever process they are first needed, so an embedding never depends on which prompts an epoch drew, on the number
of processes, or on whether the run was resumed (batched encoders round differently for other batch compositions).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Hashable, Sequence

import torch

from pslider_core.backbones import Conditioning


def conditioning_bytes(cond: Conditioning) -> int:
    """Bytes of the per-sample tensors of a conditioning batch (its `shared_` entries are not tensors per sample)."""
    return sum(v.numel() * v.element_size() for k, v in cond.items() if not k.startswith("shared_"))


class PromptCache:
    """Conditioning rows by (prompt key, encoder settings), on `device` (the CPU: they move per epoch).

    `encode(indices)` encodes prompts of the file by index and is only ever called with whole blocks; rows past
    `max_bytes` are not kept (they are encoded again when drawn again).
    """

    def __init__(
        self, keys: Sequence[Hashable], block: int, encode: Callable[[list[int]], Conditioning], max_bytes: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.keys = list(keys)
        self.block = block
        self._encode = encode
        self.max_bytes = max_bytes
        self.device = torch.device(device)
        self.rows: dict[Hashable, dict[str, torch.Tensor]] = {}
        self.shared: dict[str, Any] = {}
        self.nbytes = 0
        self.encoder_calls = 0  # blocks encoded: what the text encoders cost this run

    @property
    def complete(self) -> bool:
        """True when every prompt of the file is cached: the encoders are no longer needed."""
        return len(self.rows) == len(set(self.keys))

    def fill(self) -> bool:
        """Encode every prompt not cached yet (prefilled ones are skipped); False, after the first block encoded, if
        they would not all fit the budget."""
        encoded = 0
        for block in range(math.ceil(len(self.keys) / self.block)):
            indices = range(block * self.block, min((block + 1) * self.block, len(self.keys)))
            if all(self.keys[i] in self.rows for i in indices):
                continue
            rows = self._add_block(block)
            encoded += 1
            row_bytes = max(map(conditioning_bytes, rows.values()))
            if encoded == 1 and self.nbytes + row_bytes * (len(set(self.keys)) - len(self.rows)) > self.max_bytes:
                return False
        return self.complete

    def get(self, indices: Sequence[int], device: torch.device | str) -> Conditioning:
        """The conditioning of prompts `indices` (file order, repeats allowed) as one batch on `device`."""
        missing = sorted({i // self.block for i in indices if self.keys[i] not in self.rows})
        fresh: dict[int, dict[str, torch.Tensor]] = {}
        for block in missing:
            fresh.update(self._add_block(block))
        rows = [self.rows.get(self.keys[i]) or fresh[i] for i in indices]
        out: Conditioning = {k: torch.cat([r[k] for r in rows]).to(device) for k in rows[0]}
        return {**out, **self.shared}

    def put(self, indices: Sequence[int], cond: Conditioning) -> dict[int, dict[str, torch.Tensor]]:
        """Store the conditioning batch of prompts `indices` (e.g. precomputed embeddings: then no encoder runs);
        rows past the budget are returned but not kept."""
        self.shared.update({k: v for k, v in cond.items() if k.startswith("shared_")})
        rows = {}
        for j, i in enumerate(indices):  # copies: a view would keep the whole batch alive
            rows[i] = {k: v[j : j + 1].detach().to(self.device, copy=True) for k, v in cond.items()
                       if not k.startswith("shared_")}
            size = conditioning_bytes(rows[i])
            if self.keys[i] not in self.rows and self.nbytes + size <= self.max_bytes:
                self.rows[self.keys[i]] = rows[i]
                self.nbytes += size
        return rows

    def _add_block(self, block: int) -> dict[int, dict[str, torch.Tensor]]:
        indices = list(range(block * self.block, min((block + 1) * self.block, len(self.keys))))
        self.encoder_calls += 1
        return self.put(indices, self._encode(indices))
