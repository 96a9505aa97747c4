"""Fake of comfy/sd.py: load_lora_for_models, with the real control flow (key map, load, clone, add_patches)."""

from __future__ import annotations

import logging
from typing import Any

from . import lora as comfy_lora


def load_lora_for_models(model: Any, clip: Any, lora: dict, strength_model: float, strength_clip: float):
    key_map = comfy_lora.model_lora_keys_unet(model.model, {}) if model is not None else {}
    loaded = comfy_lora.load_lora(lora, key_map)
    new_modelpatcher = None
    k: set = set()
    if model is not None:
        new_modelpatcher = model.clone()
        k = set(new_modelpatcher.add_patches(loaded, strength_model))
    new_clip = clip.clone() if clip is not None else None
    for x in loaded:
        if x not in k:
            logging.warning("NOT LOADED {}".format(x))
    return new_modelpatcher, new_clip
