"""Building blocks of the tiny pipelines (tests and demos): tokenizers from in-memory vocabularies, a tiny T5
encoder and a tiny VAE, all built from configs with no download."""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL
from torch import nn
from transformers import CLIPTokenizer, GemmaTokenizer, T5Config, T5EncoderModel, T5Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

_PRINTABLE = [chr(c) for c in range(32, 127)]


def tiny_clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """Byte-level CLIP BPE with no merges: every byte is a token, so any prompt tokenizes."""
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_t5_tokenizer(max_length: int = 32) -> T5Tokenizer:
    """Character-level unigram T5 tokenizer over printable ASCII."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in _PRINTABLE]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def tiny_gemma_tokenizer(max_length: int = 32) -> GemmaTokenizer:
    """Character-level Gemma tokenizer over printable ASCII."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for c in _PRINTABLE + ["\u2581"]:
        vocab.setdefault(c, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_t5_encoder(tokenizer: T5Tokenizer, d_model: int = 32) -> T5EncoderModel:
    """One-layer T5 encoder over `tokenizer`'s vocabulary; dropout off so outputs are deterministic."""
    return T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=2 * d_model, d_kv=8, num_layers=1, num_heads=4,
                 relative_attention_num_buckets=8, dropout_rate=0.0)
    )


def tiny_vae(latent_channels: int, shift_factor: float, scaling_factor: float) -> AutoencoderKL:
    """Two-level AutoencoderKL (vae_scale_factor 2) with the real model's latent statistics."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=shift_factor, scaling_factor=scaling_factor,
    )


def eval_components(pipe: Any) -> Any:
    """Put every model of a freshly built pipeline in eval mode (built from configs they start in train mode)."""
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            component.eval()
    return pipe
