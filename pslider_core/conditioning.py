"""Reversible preference hooks on a diffusers transformer: w enters by hooks, never by a copied `forward`."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from .modules import PreferenceModules

if TYPE_CHECKING:
    from .backbones.base import BackboneAdapter


def tile_to_batch(v: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat per-sample vectors (B_w, D) to a transformer batch that is a multiple of B_w.

    Pipelines build CFG batches as `torch.cat([x] * k)`, so sample i of every chunk shares w_i: tile, not
    interleave.
    """
    if v.shape[0] == batch:
        return v
    if batch % v.shape[0]:
        raise ValueError(
            f"The transformer batch ({batch}) is not a multiple of the number of preference vectors "
            f"({v.shape[0]}); pass one w per sample or one w for the whole batch."
        )
    return v.repeat(batch // v.shape[0], 1)


def expand_rows(v: torch.Tensor, rows: int) -> torch.Tensor:
    """(B, D) per-sample vectors -> (rows, D) for embeddings flattened batch-major per token (B*T, D)."""
    if rows == v.shape[0]:
        return v
    if rows % v.shape[0]:
        raise ValueError(f"Cannot spread {v.shape[0]} preference vectors over {rows} embedding rows.")
    return v.repeat_interleave(rows // v.shape[0], dim=0)


def add_to_tokens(out: torch.Tensor, m: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """out (B, N, D) + m (B, D) on the tokens where mask (N,) is true (all tokens when mask is None)."""
    delta = m[:, None, :].to(out.dtype)
    if mask is not None:
        if mask.shape[0] != out.shape[1]:
            raise ValueError(
                f"Token mask covers {mask.shape[0]} tokens but the feed-forward output has {out.shape[1]}; "
                "feed-forward chunking is not supported with preference hooks."
            )
        delta = delta * mask.to(device=out.device, dtype=out.dtype)[None, :, None]
    return out + delta


def _hidden_states(args: tuple, kwargs: dict) -> torch.Tensor:
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if not isinstance(hidden, torch.Tensor):
        raise TypeError("Preference hooks expect the transformer to be called with `hidden_states` first.")
    return hidden


class _CallState:
    """Per-forward values shared by the hooks: computed once per transformer call, not once per block."""

    def __init__(self) -> None:
        self.batch = 0
        self.global_vec: torch.Tensor | None = None
        self.block_vec: torch.Tensor | None = None
        self.token_mask: torch.Tensor | None = None


@contextmanager
def preference_conditioning(
    transformer: nn.Module,
    modules: PreferenceModules,
    adapter: "BackboneAdapter",
    w: torch.Tensor,
) -> Iterator[None]:
    """Condition every forward of `transformer` inside the block on w (B_w, M) or (M,); hooks are removed on exit.

    The transformer batch may be any multiple of B_w (CFG), the global embedding may be per token (LTX-2), and
    the adapter may mark tokens the block path must leave alone (Kontext reference tokens).
    """
    w = w.unsqueeze(0) if w.ndim == 1 else w
    state = _CallState()
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def before_forward(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = _hidden_states(args, kwargs)
        state.batch = hidden.shape[0]
        g, m = modules(w.to(hidden.device))
        state.global_vec = tile_to_batch(g, state.batch)
        state.block_vec = tile_to_batch(m, state.batch) if m is not None else None
        state.token_mask = adapter.target_token_mask(args, kwargs)

    def after_global(_module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        return out + expand_rows(state.global_vec, out.shape[0]).to(out.dtype)

    def after_block_ff(_module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        return add_to_tokens(out, state.block_vec, state.token_mask)

    try:
        handles.append(transformer.register_forward_pre_hook(before_forward, with_kwargs=True))
        handles.append(transformer.get_submodule(adapter.global_module).register_forward_hook(after_global))
        if modules.block_projector is not None:
            for name in adapter.block_modules(transformer):
                handles.append(transformer.get_submodule(name).register_forward_hook(after_block_ff))
        yield
    finally:
        for handle in handles:
            handle.remove()


def matching_modules(root: nn.Module, pattern: str) -> list[str]:
    """Names of submodules whose full dotted name matches `pattern` exactly, in model order."""
    regex = re.compile(pattern)
    names = [name for name, _ in root.named_modules() if regex.fullmatch(name)]
    if not names:
        raise ValueError(f"No module of {type(root).__name__} matches {pattern!r}.")
    return names

