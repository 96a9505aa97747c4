"""The toy base model: a tiny SD3Transformer2DModel working directly on 32x32 RGB pixels, plus the toy text encoder.

Why pixels and no VAE: at 32x32 a patch size of 4 gives 64 tokens, as cheap as a latent model, and nothing has to be
trained or trusted besides the transformer itself. Model space = pixels scaled to [-1, 1] (see `pipeline.py`).
The directory layout mirrors a diffusers pipeline folder (`transformer/`, `text_encoder/`, `tokenizer/`) plus
`toy_base.json`, which records the world (palette, shapes, held-out pairs) and how the weights were made.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from torch import nn

from . import BASE_DIR
from .dataset import BACKGROUND, COLORS, HELDOUT, IMAGE_SIZE, SHAPES
from .text_encoder import ToyTextEncoder, ToyTokenizer

INFO_FILE = "toy_base.json"
VOCAB = ["a", "an", *COLORS, *SHAPES]


def build_toy_base(
    hidden: int = 96, head_dim: int = 32, layers: int = 4, patch: int = 4, text_dim: int = 64, max_length: int = 6
) -> tuple[SD3Transformer2DModel, ToyTextEncoder, ToyTokenizer]:
    """Freshly initialised transformer, text encoder and tokenizer of the toy world."""
    if hidden % head_dim:
        raise ValueError(f"hidden ({hidden}) must be a multiple of head_dim ({head_dim}).")
    if IMAGE_SIZE % patch:
        raise ValueError(f"patch ({patch}) must divide the toy image size ({IMAGE_SIZE}).")
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE,
        patch_size=patch,
        in_channels=3,
        out_channels=3,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=hidden // head_dim,
        joint_attention_dim=text_dim,
        caption_projection_dim=hidden,
        pooled_projection_dim=text_dim,
        pos_embed_max_size=IMAGE_SIZE // patch,
    )
    tokenizer = ToyTokenizer(VOCAB, max_length)
    text_encoder = ToyTextEncoder(
        vocab_size=tokenizer.vocab_size,
        max_length=max_length,
        joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim,
    )
    text_encoder.tokenizer = tokenizer
    return transformer, text_encoder, tokenizer


def save_toy_base(
    directory: str | os.PathLike,
    transformer: SD3Transformer2DModel,
    text_encoder: ToyTextEncoder,
    tokenizer: ToyTokenizer,
    info: dict,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write the base folder; weights are stored in `dtype` (fp16 keeps each file well under 5 MB)."""
    path = Path(directory)
    for name, model in (("transformer", transformer), ("text_encoder", text_encoder)):
        # nn.Module.to: ModelMixin.to warns about fp32-only modules even when a model has none
        nn.Module.to(copy.deepcopy(model), dtype).save_pretrained(path / name, safe_serialization=True)
    tokenizer.save_pretrained(path / "tokenizer")
    world = {
        "image_size": IMAGE_SIZE,
        "patch_size": transformer.config.patch_size,
        "model_space": "RGB pixels scaled to [-1, 1]; no VAE",
        "background": list(BACKGROUND),
        "colors": {k: list(v) for k, v in COLORS.items()},
        "shapes": list(SHAPES),
        "heldout": [list(pair) for pair in HELDOUT],
        "weights_dtype": str(dtype).removeprefix("torch."),
    }
    (path / INFO_FILE).write_text(json.dumps({**world, **info}, indent=1))


def load_toy_base(
    path: str | os.PathLike | None = None, torch_dtype: torch.dtype = torch.float32
) -> tuple[SD3Transformer2DModel, ToyTextEncoder, ToyTokenizer, dict]:
    """(transformer, text_encoder with its tokenizer attached, tokenizer, info) in eval mode; shipped base by default."""
    base = Path(path) if path is not None else BASE_DIR
    if not (base / INFO_FILE).is_file():
        raise FileNotFoundError(
            f"{base} is not a toy base folder (no {INFO_FILE}); pass a folder written by "
            f"`python scripts/pretrain_toy_base.py --out DIR`, or nothing for the shipped one."
        )
    info = json.loads((base / INFO_FILE).read_text())
    transformer = SD3Transformer2DModel.from_pretrained(base / "transformer", torch_dtype=torch_dtype)
    text_encoder = ToyTextEncoder.from_pretrained(base / "text_encoder", torch_dtype=torch_dtype)
    tokenizer = ToyTokenizer.from_pretrained(base / "tokenizer")
    text_encoder.tokenizer = tokenizer
    return transformer.eval(), text_encoder.eval(), tokenizer, info
