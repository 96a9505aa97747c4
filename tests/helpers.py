"""Test helpers shared by several test modules."""

from __future__ import annotations

import torch

from pslider_core import get_backbone


def transformer_inputs(backbone: str, pipe, prompts: list[str], seed: int = 0):
    """(x, sigma, cond) for one velocity call of a tiny pipeline, sources included for editing backbones."""
    adapter = get_backbone(backbone)
    size = {"num_frames": 1, **adapter.tiny_sample_size}
    gen = torch.Generator().manual_seed(seed)
    sources = None
    if adapter.needs_source:
        sources = torch.rand(len(prompts), 3, size["height"], size["width"], generator=gen)
    with torch.no_grad():
        cond = adapter.encode_prompts(pipe, prompts, sources, **size)
    x = adapter.initial_noise(pipe, len(prompts), size["height"], size["width"], gen, size["num_frames"])
    sigma = torch.full((len(prompts),), 0.6)
    return x, sigma, cond


def randomize_(params, seed: int = 0, std: float = 0.05) -> None:
    """Give every parameter random values so that zero-initialised paths become visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def save_tiny_clip(path) -> str:
    """A tiny random CLIPModel with its tokenizer and image processor, saved with save_pretrained (what reward
    specs' `model=` and `processor=` point at)."""
    import string

    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + string.punctuation:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    width = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, **width),
        vision_config=dict(image_size=32, patch_size=8, **width),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def save_tiny_dinov2(path) -> str:
    """A tiny random Dinov2Model with its image processor, saved with save_pretrained."""
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessorPil(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
    return str(path)
