"""Fake of comfy/model_patcher.py: ModelPatcher's cloning, object patches, weight patches and wrappers.

Same attribute and method names and the same copy semantics on clone() as the real class (patch lists and
wrapper lists copied, model_options deep-copied, the underlying model shared). Simplifications: no devices, no
low-VRAM loading, no hooks/callbacks machinery; weight patches are ("lora", (up, down)) tuples applied as
weight += strength * up @ down by patch_model() and restored by unpatch_model().
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from . import utils


class ModelPatcher:
    def __init__(self, model: torch.nn.Module, load_device: Any, offload_device: Any, size=0,
                 weight_inplace_update=False):
        self.size = size
        self.model = model
        self.patches: dict[str, list] = {}
        self.backup: dict[str, torch.Tensor] = {}
        self.object_patches: dict[str, Any] = {}
        self.object_patches_backup: dict[str, Any] = {}
        self.model_options: dict = {"transformer_options": {}}
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.parent = None
        self.wrappers: dict[str, dict[str, list[Callable]]] = {}
        self.callbacks: dict[str, dict[str, list[Callable]]] = {}

    def clone(self) -> "ModelPatcher":
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size,
                           weight_inplace_update=self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.backup = self.backup
        n.object_patches_backup = self.object_patches_backup
        n.parent = self
        for k, w in self.wrappers.items():
            n.wrappers[k] = {k1: w1.copy() for k1, w1 in w.items()}
        for k, c in self.callbacks.items():
            n.callbacks[k] = {k1: c1.copy() for k1, c1 in c.items()}
        return n

    def is_clone(self, other: Any) -> bool:
        return hasattr(other, "model") and self.model is other.model

    def add_object_patch(self, name: str, obj: Any) -> None:
        self.object_patches[name] = obj

    def get_model_object(self, name: str) -> Any:
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return utils.get_attr(self.model, name)

    def add_patches(self, patches: dict, strength_patch=1.0, strength_model=1.0) -> list:
        p = set()
        model_sd = self.model.state_dict()
        for k in patches:
            offset, function = None, None
            if isinstance(k, str):
                key = k
            else:
                key, offset = k[0], k[1]
                function = k[2] if len(k) > 2 else None
            if key in model_sd:
                p.add(k)
                self.patches.setdefault(key, []).append((strength_patch, patches[k], strength_model, offset, function))
        return list(p)

    def add_wrapper(self, wrapper_type: str, wrapper: Callable) -> None:
        self.add_wrapper_with_key(wrapper_type, None, wrapper)

    def add_wrapper_with_key(self, wrapper_type: str, key: str, wrapper: Callable) -> None:
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type: str, key: str) -> None:
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type: str, key: str) -> list[Callable]:
        return self.wrappers.get(wrapper_type, {}).get(key, [])

    def get_all_wrappers(self, wrapper_type: str) -> list[Callable]:
        return [w for ws in self.wrappers.get(wrapper_type, {}).values() for w in ws]

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        for k, obj in self.object_patches.items():
            old = utils.set_attr(self.model, k, obj)
            self.object_patches_backup.setdefault(k, old)
        if load_weights:
            with torch.no_grad():
                for key, entries in self.patches.items():
                    weight = utils.get_attr(self.model, key)
                    self.backup.setdefault(key, weight.detach().clone())
                    for strength, (kind, (up, down)), strength_model, _offset, _function in entries:
                        if kind != "lora":
                            raise NotImplementedError(f"The fake ModelPatcher applies LoRA patches only, got {kind}.")
                        weight.mul_(strength_model).add_(strength * (up.float() @ down.float()).to(weight.dtype))
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True) -> None:
        if unpatch_weights:
            with torch.no_grad():
                for key, weight in self.backup.items():
                    utils.get_attr(self.model, key).copy_(weight)
            self.backup.clear()
        for k, obj in self.object_patches_backup.items():
            utils.set_attr(self.model, k, obj)
        self.object_patches_backup.clear()
