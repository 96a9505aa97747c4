"""Fake of comfy/sampler_helpers.py: prepare_model_patcher copies the ModelPatcher's wrappers into the options
the model calls receive (the real one also registers hooks from conds)."""

from __future__ import annotations

from typing import Any

from . import patcher_extension


def prepare_model_patcher(model: Any, conds: dict, model_options: dict) -> dict:
    patcher_extension.merge_nested_dicts(
        model_options["transformer_options"].setdefault("wrappers", {}), model.wrappers, copy_dict1=False
    )
    patcher_extension.merge_nested_dicts(
        model_options["transformer_options"].setdefault("callbacks", {}), model.callbacks, copy_dict1=False
    )
    return model_options.setdefault("to_load_options", {})
