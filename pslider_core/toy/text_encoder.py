"""Word-level tokenizer and learned-embedding text encoder of the toy world, behind SD3's text interface.

Why: SD3 takes per-token embeddings (B, L, joint_attention_dim) plus a pooled vector (B, pooled_projection_dim).
The toy vocabulary has about fifteen words, so a lookup table with one self-attention mixing layer gives the same
interface at a few thousand parameters, and it saves and loads through diffusers like a real component.
Unknown words raise an error listing the vocabulary (no unk token): a typo should not silently become noise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

PAD_TOKEN = "<pad>"
TOKENIZER_FILE = "toy_tokenizer.json"


class ToyTokenizer:
    """Lower-cased whitespace split into a fixed word list, padded to `max_length` with the pad id 0."""

    def __init__(self, words: list[str], max_length: int = 6):
        vocab = [PAD_TOKEN] + [w for w in words if w != PAD_TOKEN]
        if len(set(vocab)) != len(vocab):
            raise ValueError(f"Toy tokenizer words must be unique, got {words}.")
        self.vocab = vocab
        self.max_length = int(max_length)
        self.pad_id = 0
        self._ids = {w: i for i, w in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, prompt: str) -> list[int]:
        words = prompt.lower().replace(".", " ").replace(",", " ").split()
        if not words:
            raise ValueError("Toy prompt is empty; write a colour and a shape, e.g. 'a red circle'.")
        unknown = [w for w in words if w not in self._ids]
        if unknown:
            raise ValueError(
                f"Toy prompt {prompt!r} uses words outside the toy vocabulary: {unknown}. "
                f"Use only {self.vocab[1:]}, e.g. 'a red circle'."
            )
        if len(words) > self.max_length:
            raise ValueError(
                f"Toy prompt {prompt!r} has {len(words)} words; the toy tokenizer takes at most {self.max_length}."
            )
        return [self._ids[w] for w in words]

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, max_length) long and attention_mask (B, max_length) bool (False on padding)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = torch.full((len(prompts), self.max_length), self.pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens = self.tokenize(prompt)
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids, ids != self.pad_id

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        data = {"format": "pslider-toy-tokenizer", "vocab": self.vocab, "max_length": self.max_length}
        (path / TOKENIZER_FILE).write_text(json.dumps(data, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ToyTokenizer:
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"No toy tokenizer at {path}; pass the `tokenizer/` folder written by ToyTokenizer.save_pretrained."
            )
        data = json.loads(path.read_text())
        if data.get("format") != "pslider-toy-tokenizer":
            raise ValueError(f"{path} is not a toy tokenizer file (format {data.get('format')!r}).")
        return cls(data["vocab"], data["max_length"])


class ToyTextEncoder(ModelMixin, ConfigMixin):
    """Token + position embeddings, one pre-norm self-attention mixing layer, masked-mean pooled projection."""

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        max_length: int = 6,
        joint_attention_dim: int = 64,
        pooled_projection_dim: int = 64,
        num_heads: int = 2,
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, joint_attention_dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, joint_attention_dim))
        self.norm = nn.LayerNorm(joint_attention_dim)
        self.mix = nn.MultiheadAttention(joint_attention_dim, num_heads, batch_first=True)
        self.pooled_proj = nn.Linear(joint_attention_dim, pooled_projection_dim)
        nn.init.normal_(self.token_embedding.weight, std=0.5)
        self.tokenizer: ToyTokenizer | None = None  # attached by load_toy_base; needed only by `encode`

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds (B, L, joint_attention_dim), pooled (B, pooled_projection_dim))."""
        x = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]
        h = self.norm(x)
        x = x + self.mix(h, h, h, key_padding_mask=~attention_mask, need_weights=False)[0]
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return x, self.pooled_proj(pooled)

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize with the attached tokenizer and embed, on this encoder's device and dtype."""
        if self.tokenizer is None:
            raise RuntimeError(
                "ToyTextEncoder.encode needs a tokenizer: load both with pslider_core.toy.load_toy_base(), or set "
                "`text_encoder.tokenizer = ToyTokenizer.from_pretrained(<base>/tokenizer)`."
            )
        ids, mask = self.tokenizer(prompts)
        embeds, pooled = self(ids.to(self.device), mask.to(self.device))
        return embeds.to(self.dtype), pooled.to(self.dtype)
