"""One transformer, three policies: trained, lagged old, reference (method.md, training loop step 5).

The trained policy is the peft adapter "pareto_slider" plus the preference modules; the old policy is a second
adapter with its own copy of the modules, moved towards the trained one after each epoch; the reference policy is
the base model: adapters disabled and no w. They share the frozen base weights, so the three cost one model's memory.

Under FSDP2 (`shard_policies`) every transformer block is its own unit and the root unit, this module, holds the rest
of the transformer and the preference modules; every velocity goes through this module's forward, so the root's
parameters are gathered whenever the transformer or a preference hook runs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any, Callable

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.distributed import get_world_size
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from pslider_core import ParetoSlider
from pslider_core.backbones import BackboneAdapter, Conditioning
from pslider_core.lora import add_lora

from .data import InputError

CURRENT, OLD, REFERENCE = "current", "old", "reference"
OLD_ADAPTER = "pareto_slider_old"
MODULE_PREFIX = "preference."


class Policies(nn.Module):
    """Velocity of the trained, old or reference policy; the module that DDP / FSDP wrap and train."""

    def __init__(
        self, slider: ParetoSlider, adapter: BackboneAdapter, pipe: Any, conditioned: bool, with_old: bool,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        """`autocast`: mixed-precision context of every forward (accelerate's prepare adds it under DDP; FSDP does
        not prepare this module, so the trainer passes `accelerator.autocast`)."""
        super().__init__()
        self.autocast = autocast
        self.transformer = slider.transformer
        self.preference = slider.modules
        self.adapter = adapter
        self.pipe = pipe
        self.conditioned = conditioned
        self.current_adapter = slider.adapter_name
        self.old_preference: nn.Module | None = None
        if with_old:
            with warnings.catch_warnings():  # peft warns that a second adapter is being added: that is the point
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                add_lora(self.transformer, slider.lora, OLD_ADAPTER)
            self.old_preference = copy.deepcopy(self.preference).requires_grad_(False)
        self._layers = [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]
        self.collect_parameters()
        self.requires_grad_(False)
        for param in self.trainable:
            param.data = param.data.float()  # trained weights stay float32 under mixed precision
            param.requires_grad_(True)
        for param in self.old:
            param.data = param.data.float()
        self._active: str | None = ""
        self._switch(self.current_adapter)
        with torch.no_grad():
            for old, new in zip(self.old, self.trainable):
                old.copy_(new)

    # ------------------------------------------------------------------ parameters
    def collect_parameters(self) -> None:
        """(Re)list the trained and old tensors; FSDP2 replaces every parameter with a sharded one (a DTensor)."""
        conditioned = self.conditioned
        self.named_trainable = self._named(self.current_adapter, self.preference if conditioned else None)
        with_old = self.old_preference is not None
        self.named_old = self._named(OLD_ADAPTER, self.old_preference if conditioned else None) if with_old else []
        if with_old and [n for n, _ in self.named_old] != [self._as_old(n) for n, _ in self.named_trainable]:
            raise RuntimeError("The old policy's tensors do not line up with the trained policy's.")

    def _named(self, adapter_name: str, modules: nn.Module | None) -> list[tuple[str, nn.Parameter]]:
        lora = [(n, p) for n, p in self.transformer.named_parameters() if f".{adapter_name}." in n and "lora_" in n]
        extra = [(MODULE_PREFIX + n, p) for n, p in modules.named_parameters()] if modules is not None else []
        return lora + extra

    def _as_old(self, name: str) -> str:
        return name if name.startswith(MODULE_PREFIX) else name.replace(f".{self.current_adapter}.", f".{OLD_ADAPTER}.")

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable]

    @property
    def old(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_old]

    @property
    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_trainable if not n.startswith(MODULE_PREFIX)]

    @property
    def module_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_trainable if n.startswith(MODULE_PREFIX)]

    # ------------------------------------------------------------------ policy switching
    def _switch(self, adapter_name: str | None) -> None:
        """Activate one LoRA adapter (None: all disabled) by setting the two fields peft's layers read in forward.

        peft's `set_adapter` / `enable_adapters` also re-set requires_grad on every adapter tensor of every layer, for
        three switches per loss pass: 3.4% of a tiny epoch. Here requires_grad is set once (trained: on, old: off).
        """
        if adapter_name == self._active:
            return
        for layer in self._layers:
            layer._disable_adapters = adapter_name is None
            if adapter_name is not None:
                layer._active_adapter = [adapter_name]
        self._active = adapter_name

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, w: torch.Tensor | None, policy: str
    ) -> torch.Tensor:
        """v(x, sigma) of `policy` (CURRENT, OLD or REFERENCE) conditioned on w (B, M); the reference ignores w."""
        modules = {CURRENT: self.preference, OLD: self.old_preference, REFERENCE: None}[policy]
        self._switch({CURRENT: self.current_adapter, OLD: OLD_ADAPTER, REFERENCE: None}[policy])
        with ExitStack() as stack:
            stack.enter_context(self.autocast())
            if self.conditioned and modules is not None:
                stack.enter_context(self.adapter.condition(self.transformer, modules, w))
            return self.adapter.predict_velocity(self.pipe, self.transformer, x, sigma, cond)


def shard_policies(policies: Policies, block_classes: Sequence[str], device: torch.device) -> Policies:
    """FSDP2 over all processes: each transformer block (classes `block_classes`) one unit, `policies` the root.

    Every unit, the root too, reshards after each forward, so that outside a forward every parameter is its sharded
    DTensor: the optimizer, the old-policy lag, EMA and checkpoint loading change those, and a gathered copy kept
    from an earlier forward would go stale. Modules keep their names, so preference hooks and LoRA names still work.
    """
    mesh = init_device_mesh(device.type, (get_world_size(),))
    blocks = [m for m in policies.transformer.modules() if type(m).__name__ in block_classes]
    missing = sorted(set(block_classes) - {type(m).__name__ for m in blocks})
    if missing:
        raise InputError(
            f"FSDP wraps transformer blocks of the classes {list(block_classes)}, but this "
            f"{type(policies.transformer).__name__} has no module of class {missing}. Remove "
            "fsdp_transformer_layer_cls_to_wrap from the accelerate config (the backbone's own blocks are used) or "
            "name block classes of this model."
        )
    for block in reversed(blocks):  # innermost first, should one block class contain another
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(policies, mesh=mesh, reshard_after_forward=True)
    policies.collect_parameters()
    return policies
