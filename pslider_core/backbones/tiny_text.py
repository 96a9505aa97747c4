"""Tokenizers built from in-memory vocabularies, so tiny pipelines need no download (tests and demos)."""

from __future__ import annotations

from transformers import CLIPTokenizer, GemmaTokenizer, T5Tokenizer
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
