"""Which LoRA keys of a ParetoSlider file stock ComfyUI applies to a model; run by ComfyUI's Python.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfyui-python benchmarks/comfyui_lora_keys.py IN.json OUT.json

`benchmarks/real_width.py` writes IN.json: per case, the diffusers transformer's state-dict shapes (a full-depth
model built on the meta device) and the LoRA tensors' shapes under their file keys. Everything here is ComfyUI's own
code, on meta tensors: `model_detection.convert_diffusers_mmdit` + `model_config_from_unet` detect the model from the
diffusers keys as `UNETLoader` does (its unet_config: depth, `x_block_self_attn_layers` for MMDiT-X...), the model is
built on meta, and the steps of `comfy.sd.load_lora_for_models` run one by one: `comfy.lora.model_lora_keys_unet`
(the `transformer.` keys that `comfy.utils.mmdit_to_diffusers` / `flux_to_diffusers` give), `comfy.lora.load_lora`
and `ModelPatcher.add_patches` (which keeps patches whose weight exists). A key counts as mapped when its patch was
kept and the LoRA's product fits the weight, or the slice of a fused qkv weight, it patches. OUT.json: per case the
detected model class, the config and the unmapped keys. Imports only ComfyUI, torch and the standard library.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _meta(shapes: dict[str, list[int]]) -> dict[str, Any]:
    import torch

    return {k: torch.empty(shape, device="meta", dtype=torch.bfloat16) for k, shape in shapes.items()}


def _fits(patch_key: Any, up: Any, down: Any, state: dict[str, Any]) -> bool:
    """up @ down has the shape of the weight (or qkv slice: (key, (dim, start, length))) the patch changes."""
    key, offset = (patch_key, None) if isinstance(patch_key, str) else (patch_key[0], patch_key[1])
    weight = state[key]
    if offset is not None:
        weight = weight.narrow(*offset)
    return tuple(weight.shape) == (up.shape[0], down.shape[1])


def check(case: dict[str, dict[str, list[int]]]) -> dict[str, Any]:
    """Detect and build the model from the diffusers shapes, load the LoRA keys as ComfyUI's loader does."""
    import comfy.lora
    import comfy.lora_convert
    import comfy.model_detection
    import comfy.model_patcher
    import torch

    diffusers = _meta(case["transformer"])
    converted = comfy.model_detection.convert_diffusers_mmdit(diffusers, "")
    config = comfy.model_detection.model_config_from_unet(converted, "") if converted is not None else None
    if config is None:
        raise SystemExit("ComfyUI did not recognise the transformer's keys as a model it supports.")
    meta = torch.device("meta")
    patcher = comfy.model_patcher.ModelPatcher(config.get_model(converted, "", device=meta), meta, meta)
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    lora = comfy.lora_convert.convert_lora(_meta(case["lora"]))
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    state = patcher.model.state_dict()
    key_of = {id(tensor): key for key, tensor in lora.items()}  # an adapter's loaded_keys is load_lora's shared set
    mapped: set[str] = set()
    for patch_key in patcher.add_patches(patches, 1.0):
        up, down = patches[patch_key].weights[:2]
        if _fits(patch_key, up, down, state):
            mapped.update((key_of[id(up)], key_of[id(down)]))
    return {
        "model": type(config).__name__,
        "unet_config": {k: v for k, v in config.unet_config.items() if isinstance(v, (int, float, str, list, bool))},
        "unmapped": sorted(set(case["lora"]) - mapped),
    }


def main(source: Path, out: Path) -> None:
    comfyui = os.environ.get("COMFYUI_PATH", "")
    if not comfyui:
        raise SystemExit("Set COMFYUI_PATH to a ComfyUI checkout.")
    sys.path.insert(0, comfyui)
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    cases = json.loads(source.read_text())
    out.write_text(json.dumps({name: check(case) for name, case in cases.items()}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: COMFYUI_PATH=/path/to/ComfyUI python {sys.argv[0]} IN.json OUT.json")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
