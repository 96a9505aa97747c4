"""Preference hooks on a diffusers transformer: w enters by hooks, never by a copied `forward`.

The hooks are registered once per transformer (`preference_hooks`) and add nothing until a `conditioned(modules, w)`
context sets what they add; registering them per forward cost 4% of a tiny training epoch. Activation checkpointing
recomputes each block in the backward pass, after the conditioned forward has returned: the hooks' own checkpoint
function (installed whenever the transformer checkpoints) replays that forward's vectors during recomputation, so
recomputed blocks compute exactly what the forward did (otherwise they lose the block vector, and Kontext's token
mask changes the number of saved tensors).

A w-conditioned LoRA (`PreferenceModuleConfig.reward_ranks`) is one more hook, on each peft adapter's lora_A layers:
it scales the reward-owned ranks of the down-projection by the call's w, per sample.
"""

from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .modules import PreferenceModules

if TYPE_CHECKING:
    from .backbones.base import BackboneAdapter

HOOKS_ATTRIBUTE = "_pareto_slider_hooks"


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


@dataclass(frozen=True)
class _Call:
    """What one transformer call adds: computed once per call, not once per block."""

    global_vec: torch.Tensor
    block_vec: torch.Tensor | None
    token_mask: torch.Tensor | None
    rank_scale: torch.Tensor | None = None  # (batch, M x reward_ranks): the LoRA's reward-owned ranks' scales


class PreferenceHooks:
    """The hooks of one transformer; what they add comes from the innermost `conditioned` context (nothing outside)."""

    def __init__(self, transformer: nn.Module, adapter: "BackboneAdapter") -> None:
        self.transformer = transformer
        self.adapter = adapter
        self._active: tuple[PreferenceModules, torch.Tensor] | None = None
        self._call: _Call | None = None
        self._checkpoint_fn: Callable[..., Any] = self.checkpoint  # one bound method, compared by identity
        self._lora_adapters: tuple[str, ...] = ()  # the peft adapters whose lora_A layers are hooked
        self._handles = [
            transformer.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            transformer.get_submodule(adapter.global_module).register_forward_hook(self._after_global),
        ]
        for name in adapter.block_modules(transformer):
            self._handles.append(transformer.get_submodule(name).register_forward_hook(self._after_block_ff))

    @contextmanager
    def conditioned(self, modules: PreferenceModules, w: torch.Tensor) -> Iterator[None]:
        """Condition every forward inside the block on w (B_w, M) or (M,) with `modules`; nests, restores on exit."""
        previous = self._active
        self._active = (modules, w.unsqueeze(0) if w.ndim == 1 else w)
        try:
            yield
        finally:
            self._active = previous

    def remove(self) -> None:
        """Unregister every hook (the transformer is then exactly the base model again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._lora_adapters = ()
        if getattr(self.transformer, HOOKS_ATTRIBUTE, None) is self:
            delattr(self.transformer, HOOKS_ATTRIBUTE)

    # ------------------------------------------------------------------ hooks
    def _before_forward(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._ensure_checkpoint_replay()
        if self._active is None:
            self._call = None
            return
        modules, w = self._active
        batch = _hidden_states(args, kwargs).shape[0]
        w = w.to(_hidden_states(args, kwargs).device)
        g, m = modules(w)
        rank_scale = None
        if modules.config.reward_ranks:
            self._ensure_lora_hooks()
            rank_scale = tile_to_batch(reward_rank_scale(w, modules.config.reward_ranks), batch)
        self._call = _Call(
            tile_to_batch(g, batch), tile_to_batch(m, batch) if m is not None else None,
            self.adapter.target_token_mask(args, kwargs), rank_scale,
        )

    def _after_global(self, _module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if self._call is None:
            return None
        return out + expand_rows(self._call.global_vec, out.shape[0]).to(out.dtype)

    def _after_block_ff(self, _module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if self._call is None or self._call.block_vec is None:
            return None
        return add_to_tokens(out, self._call.block_vec, self._call.token_mask)

    def _after_lora_a(self, _module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if self._call is None or self._call.rank_scale is None:
            return None  # outside a w-conditioned call the LoRA applies whole, as a plain one does
        return scale_reward_ranks(out, self._call.rank_scale)

    def _ensure_lora_hooks(self) -> None:
        """Hook every peft adapter's lora_A layers (the old policy's adapter is added after the slider's): one dict
        lookup per forward, one module walk when the set of adapters changed."""
        adapters = tuple(getattr(self.transformer, "peft_config", None) or ())
        if adapters == self._lora_adapters:
            return
        hooked = set(self._lora_adapters)
        for module in self.transformer.modules():
            lora_a = getattr(module, "lora_A", None)
            if isinstance(lora_a, nn.ModuleDict):
                for name, layer in lora_a.items():
                    if name not in hooked:
                        self._handles.append(layer.register_forward_hook(self._after_lora_a))
        self._lora_adapters = adapters

    # ------------------------------------------------------------------ activation checkpointing
    def checkpoint(self, module: nn.Module, *args: Any) -> Any:
        """diffusers' gradient-checkpointing function (non-reentrant torch checkpoint of one block) that replays the
        current call's vectors while the block is recomputed in the backward pass."""
        call = self._call
        return checkpoint(module.__call__, *args, use_reentrant=False,
                          context_fn=lambda: (nullcontext(), self._replaying(call)))

    @contextmanager
    def _replaying(self, call: _Call | None) -> Iterator[None]:
        current, self._call = self._call, call
        try:
            yield
        finally:
            self._call = current

    def _ensure_checkpoint_replay(self) -> None:
        """Whoever turned checkpointing on (before or after the hooks were added), blocks checkpoint through
        `self.checkpoint`: one attribute check per forward, one module walk when it was not yet so."""
        transformer = self.transformer
        if getattr(transformer, "gradient_checkpointing", False) and (
            getattr(transformer, "_gradient_checkpointing_func", None) is not self._checkpoint_fn
        ):
            transformer._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=self._checkpoint_fn)


def reward_rank_scale(w: torch.Tensor, reward_ranks: int) -> torch.Tensor:
    """w (B, M) -> the scales (B, M x reward_ranks) of the LoRA's reward-owned ranks: w_m for each of reward m's."""
    return w.repeat_interleave(reward_ranks, dim=1)


def scale_reward_ranks(out: torch.Tensor, rank_scale: torch.Tensor) -> torch.Tensor:
    """A LoRA's down-projection `out` (rows, ..., r) with its last ranks multiplied by `rank_scale` (B, R) per
    sample; rows are B or B x tokens (flattened batch-major)."""
    reward = rank_scale.shape[1]
    shared = out.shape[-1] - reward
    if shared < 0:
        raise ValueError(
            f"The LoRA has rank {out.shape[-1]} but the preference modules scale {reward} reward-owned ranks."
        )
    scale = expand_rows(rank_scale, out.shape[0]).to(out.dtype)
    scale = scale.view(scale.shape[0], *([1] * (out.ndim - 2)), reward)
    return torch.cat([out[..., :shared], out[..., shared:] * scale], dim=-1)


def preference_hooks(transformer: nn.Module, adapter: "BackboneAdapter") -> PreferenceHooks:
    """The transformer's preference hooks, registered on first use."""
    hooks = getattr(transformer, HOOKS_ATTRIBUTE, None)
    if hooks is None:
        hooks = PreferenceHooks(transformer, adapter)
        setattr(transformer, HOOKS_ATTRIBUTE, hooks)
    return hooks


def preference_conditioning(
    transformer: nn.Module,
    modules: PreferenceModules,
    adapter: "BackboneAdapter",
    w: torch.Tensor,
) -> Iterator[None]:
    """Condition every forward of `transformer` inside the block on w (B_w, M) or (M,).

    The transformer batch may be any multiple of B_w (CFG), the global embedding may be per token (LTX-2), and
    the adapter may mark tokens the block path must leave alone (Kontext reference tokens).
    """
    return preference_hooks(transformer, adapter).conditioned(modules, w)


def matching_modules(root: nn.Module, pattern: str) -> list[str]:
    """Names of submodules whose full dotted name matches `pattern` exactly, in model order."""
    regex = re.compile(pattern)
    names = [name for name, _ in root.named_modules() if regex.fullmatch(name)]
    if not names:
        raise ValueError(f"No module of {type(root).__name__} matches {pattern!r}.")
    return names
