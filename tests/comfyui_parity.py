"""Parity script for tests/test_comfyui_integration.py, run by ComfyUI's Python (COMFYUI_PYTHON) in a subprocess.

    COMFYUI_PATH=/path/to/ComfyUI PYTHONPATH=torchvision-stub python tests/comfyui_parity.py OUT.json

For the same file and w, the ComfyUI-patched model's velocity must equal the trainer-side conditioned diffusers
transformer's (tiny SD3 and tiny Flux/Kontext, each with a plain and a w-conditioned LoRA), and the unpatched model
must predict afterwards what it predicted before. Writes the measured differences to OUT.json; the test asserts on
them. It imports only the standard library, ComfyUI, torch, safetensors and this repository (diffusers and peft for
the trainer side), never pytest, so the Python that runs ComfyUI needs no test tools.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")


def _import_pack(name: str):
    """The repository as ComfyUI imports a custom node folder; its comfy_entrypoint run once."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    extension = asyncio.run(module.comfy_entrypoint())
    nodes = {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}
    return module, nodes


def _comfy_velocity(patcher, x, sigma, **conds):
    """One apply_model call as a sampler makes it (wrappers merged into transformer_options), as a velocity."""
    import comfy.model_management
    import comfy.patcher_extension

    comfy.model_management.load_models_gpu([patcher])
    options = copy.deepcopy(patcher.model_options["transformer_options"])
    comfy.patcher_extension.merge_nested_dicts(options.setdefault("wrappers", {}), patcher.wrappers, copy_dict1=False)
    options["cond_or_uncond"] = [0]
    denoised = patcher.model.apply_model(x, sigma, transformer_options=options, **conds)
    return (x - denoised) / sigma.view(-1, *([1] * (x.ndim - 1)))


def _parity_case(backbone: str, core, nodes, folder: Path, reward_ranks: int = 0) -> dict:
    """`reward_ranks` > 0: a w-conditioned LoRA (2 shared ranks, then `reward_ranks` per reward), whose reward ranks
    the pack adds through hooks at ComfyUI's key map (fused qkv slices for SD3 and Flux)."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.patcher_extension
    import comfy.sd
    import comfy.supported_models
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    adapter = core.get_backbone(backbone)
    pipe = adapter.tiny_pipeline(seed=0)
    base_state = {k: v.detach().clone().contiguous() for k, v in pipe.transformer.state_dict().items()}
    rank = 2 + 2 * reward_ranks if reward_ranks else 4
    slider = core.ParetoSlider.attach(pipe.transformer, backbone, ["photo", "sketch"],
                                      lora=core.LoraSpec(rank, 2 * rank, adapter.lora_target_modules),
                                      reward_ranks=reward_ranks)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in slider.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    name = f"{backbone}_{reward_ranks}_parity.safetensors"
    slider.save(folder / name)

    reference = type(pipe.transformer).from_config(pipe.transformer.config).eval()
    reference.load_state_dict(base_state)
    batch, w = 2, [0.3, 0.7]
    gen = torch.Generator().manual_seed(5)
    size = 32
    if backbone == "sd3":
        x = torch.randn(batch, 16, size // 8, size // 8, generator=gen)
        cond = {"prompt_embeds": torch.randn(batch, 8, 32, generator=gen),
                "pooled_projections": torch.randn(batch, 32, generator=gen)}
        comfy_conds = {"c_crossattn": cond["prompt_embeds"], "y": cond["pooled_projections"]}
        unet = folder / "tiny_sd3_unet.safetensors"
        save_file(base_state, str(unet))
        model = comfy.sd.load_diffusion_model(str(unet))
    else:
        x = torch.randn(batch, 4, size // 8, size // 8, generator=gen)
        cond = {"prompt_embeds": torch.randn(batch, 8, 32, generator=gen),
                "pooled_projections": torch.randn(batch, 16, generator=gen),
                "reference_latents": torch.randn(batch, 4, size // 8, size // 8 + 2, generator=gen)}
        comfy_conds = {"c_crossattn": cond["prompt_embeds"], "y": cond["pooled_projections"],
                       "guidance": torch.full((batch,), adapter.guidance_scale),
                       "ref_latents": [cond["reference_latents"]]}
        config = pipe.transformer.config
        unet_config = {
            "image_model": "flux", "in_channels": config.in_channels // 4, "out_channels": config.in_channels // 4,
            "vec_in_dim": config.pooled_projection_dim, "context_in_dim": config.joint_attention_dim,
            "hidden_size": config.num_attention_heads * config.attention_head_dim, "mlp_ratio": 4.0,
            "num_heads": config.num_attention_heads, "depth": config.num_layers,
            "depth_single_blocks": config.num_single_layers, "axes_dim": list(config.axes_dims_rope),
            "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": config.guidance_embeds,
        }
        model_config = comfy.supported_models.Flux(unet_config)
        model_config.set_inference_dtype(torch.float32, None)
        base_model = model_config.get_model({})
        base_model.load_model_weights(comfy.model_detection.convert_diffusers_mmdit(dict(base_state), ""), "")
        model = comfy.model_patcher.ModelPatcher(base_model, torch.device("cpu"), torch.device("cpu"))
    sigma = torch.full((batch,), 0.6)

    with torch.no_grad():
        v_base = adapter.predict_velocity(pipe, reference, x, sigma, cond)
        ours = core.ParetoSlider.from_file(folder / name, reference, backbone)
        with ours.condition(w):
            v_conditioned = adapter.predict_velocity(pipe, reference, x, sigma, cond)
        base_before = _comfy_velocity(model, x, sigma, **comfy_conds)
        repeat = _comfy_velocity(model, x, sigma, **comfy_conds)
        weights_before = {k: v.clone() for k, v in model.model.state_dict().items()}
        patched = nodes["ParetoSliderApply"].execute(
            model=model, file=name, strength=1.0, **{f"w{i + 1}": (w[i] if i < 2 else 0.0) for i in range(8)}
        )[0]
        v_patched = _comfy_velocity(patched, x, sigma, **comfy_conds)
        base_after = _comfy_velocity(model, x, sigma, **comfy_conds)
        weights_after = model.model.state_dict()
    return {
        "base_comfy_vs_diffusers": float((base_before - v_base).abs().max()),
        "effect": float((v_conditioned - v_base).abs().max()),
        "patched_comfy_vs_conditioned_diffusers": float((v_patched - v_conditioned).abs().max()),
        # the unpatched model after the patched one ran: its weights bit for bit, its prediction, and the same
        # prediction made twice before any patching (the kernels' own run-to-run difference)
        "weights_changed": max(float((weights_after[k] - v).abs().max()) for k, v in weights_before.items()),
        "wrappers_left": len(model.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "pareto_slider")),
        "leak": float((base_after - base_before).abs().max()),
        "repeat": float((repeat - base_before).abs().max()),
        "output_max": float(base_before.abs().max()),
    }


def _parity_main(out: Path) -> None:
    sys.path.insert(0, COMFYUI_PATH)
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import folder_paths
    import torch

    torch.set_num_threads(1)
    _, nodes = _import_pack("pareto_slider_parity")
    core = sys.modules["pareto_slider_parity.pslider_core"]
    folder = out.parent / "sliders"
    folder.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("pareto_slider", str(folder))
    cases = {b: _parity_case(b, core, nodes, folder) for b in ("sd3", "fluxkontext")}
    cases.update({f"{b}_reward_ranks": _parity_case(b, core, nodes, folder, 2) for b in ("sd3", "fluxkontext")})
    out.write_text(json.dumps(cases))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: COMFYUI_PATH=/path/to/ComfyUI python {sys.argv[0]} OUT.json")
    _parity_main(Path(sys.argv[1]))
