"""Fake of comfy/lora.py: the generic key map ("diffusion_model.<module>") and lora_A/lora_B loading.

The real model_lora_keys_unet also maps diffusers names ("transformer.<diffusers module>") onto ComfyUI's fused
weights for SD3 and Flux; that mapping is ComfyUI's job and is exercised by the integration tests against a real
ComfyUI. Here such keys are reported as not loaded, as the real function does for keys it cannot map.
"""

from __future__ import annotations

import logging

import torch


def model_lora_keys_unet(model: torch.nn.Module, key_map: dict = {}) -> dict:  # noqa: B006 (real signature)
    for k in model.state_dict():
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            key_map[k[: -len(".weight")]] = k
    return key_map


def load_lora(lora: dict, to_load: dict, log_missing=True) -> dict:
    patch_dict, loaded_keys = {}, set()
    for x, target in to_load.items():
        a_name, b_name = f"{x}.lora_A.weight", f"{x}.lora_B.weight"
        if a_name in lora and b_name in lora:
            patch_dict[target] = ("lora", (lora[b_name], lora[a_name]))
            loaded_keys.update((a_name, b_name))
    if log_missing:
        for x in lora:
            if x not in loaded_keys:
                logging.warning("lora key not loaded: {}".format(x))
    return patch_dict
