"""Patch a MODEL with a ParetoSlider file: the LoRA through ComfyUI's own loader, w through an APPLY_MODEL wrapper
(and a w-conditioned LoRA's reward ranks through the same wrapper's hooks, `reward_ranks.py`).

Why a wrapper with forward hooks rather than object patches: the vector to add depends on the call (which rows
are which latent under CFG batching, the current sigma for schedules), and only the APPLY_MODEL call sees that
(`transformer_options`). The wrapper hooks the adapter's module paths for one call and removes the hooks in
`finally`; it replaces no module and no `forward`, so state-dict keys, LoRA weight patches and other packs'
patches stay as they are, and it lives in the clone's wrapper dict, so the input MODEL is never changed.
"""

from __future__ import annotations

from typing import Any

import comfy.patcher_extension
import comfy.sd
import torch

from ..pslider_core.conditioning import add_to_tokens, expand_rows
from .families import HookPoints, hook_points, target_token_mask
from .files import LoadedSlider
from .reward_ranks import RewardRanks, reward_ranks, split_lora
from .weights import WeightPolicy

WRAPPER_KEY = "pareto_slider"


def _transformer_options(args: tuple, kwargs: dict) -> dict:
    """BaseModel.apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)."""
    options = kwargs.get("transformer_options")
    if options is None and len(args) > 5:
        options = args[5]
    return options or {}


class PreferenceWrapper:
    """APPLY_MODEL wrapper adding the file's preference vectors for the duration of one model call."""

    def __init__(self, loaded: LoadedSlider, policy: WeightPolicy, points: HookPoints,
                 ranks: RewardRanks | None = None) -> None:
        self.loaded = loaded
        self.policy = policy
        self.points = points
        self.ranks = ranks

    def weights(self, sigma: torch.Tensor, options: dict, base_model: Any) -> torch.Tensor:
        """(rows, M) preferences for the rows of this call."""
        chunks = len(options.get("cond_or_uncond") or [0])
        return self.policy.rows(sigma, chunks, options, base_model).to(sigma.device)

    def vectors(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(global (rows, D), block (rows, D) or None) for (rows, M) preferences."""
        return self.loaded.modules.to(w.device)(w)

    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        x, sigma = args[0], args[1]
        base_model = executor.class_obj
        w = self.weights(sigma, _transformer_options(args, kwargs), base_model)
        global_vec, block_vec = self.vectors(w)
        diffusion_model = base_model.diffusion_model
        family = self.points.family

        def add_global(_module: torch.nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
            return out + expand_rows(global_vec, out.shape[0]).to(out.dtype)

        def add_block(_module: torch.nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
            return add_to_tokens(out, block_vec, target_token_mask(family, x, diffusion_model, out.shape[1]))

        handles = [base_model.get_submodule(self.points.global_module).register_forward_hook(add_global)]
        try:
            if self.ranks is not None:
                handles += self.ranks.hooks(base_model, w)
            if block_vec is not None:
                for path in self.points.block_modules:
                    handles.append(base_model.get_submodule(path).register_forward_hook(add_block))
            return executor(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()


def patch_model(model: Any, loaded: LoadedSlider, strength: float, policy: WeightPolicy | list) -> Any:
    """A clone of `model` with the file's LoRA at `strength` and its preference modules following `policy`, or, given
    a list of `controls.ControlTerm`, their combination (guidance, regional or per-frame weights)."""
    points = hook_points(model, loaded.data, loaded.name)
    lora_state, ranks = loaded.data.lora_state, None
    if loaded.data.module_config.reward_ranks and strength != 0.0:
        lora_state, ranked = split_lora(loaded)
        ranks = reward_ranks(model, loaded, ranked, strength)
    if isinstance(policy, list):
        from .controls import ControlWrapper

        wrapper: Any = ControlWrapper(loaded, points, policy, ranks)
    else:
        wrapper = PreferenceWrapper(loaded, policy, points, ranks)
    if lora_state and strength != 0.0:
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora_state, strength, 0)
    else:
        patched = model.clone()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, wrapper)
    return patched
