"""A w-conditioned LoRA (reward ranks) through the nodes, on the fakes' tiny LTX-2 (whose file keys are ComfyUI
module names, so the fake key map places them; SD3 and Flux map diffusers names onto fused qkv weights, which
tests/comfyui_parity.py checks against a real ComfyUI): at one w the file is the plain LoRA with each reward's
ranks times w_m, row by row under CFG, sweeps and per-frame weights, at the node's strength."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import fakes
import pytest
import torch
from fakes.tiny import Library, tiny_model
from test_nodes_patching import cfg_conds, flat, no_hooks_left, sliders, step

from pslider_core import load_pareto_slider
from pslider_core.file_format import save_pareto_slider

PACK = fakes.load_pack()
Apply, Sweep, Schedule = (PACK.nodes[n] for n in ("ParetoSliderApply", "ParetoSliderSweep", "ParetoSliderSchedule"))

import folder_paths  # noqa: E402  (fakes, installed by load_pack)

SHARED, PER_REWARD = 2, 1  # the fake file's ranks: 2 shared, then one per reward


@pytest.fixture
def library():
    lib = Library(Path(folder_paths.models_dir), f"t{uuid.uuid4().hex[:8]}")
    yield lib
    lib.remove()


def plain_at(library: Library, ranked: str, w: tuple[float, float]) -> str:
    """The ranked file as a plain LoRA file with its reward ranks' B columns times w (what it is at that w)."""
    data = load_pareto_slider(library.path(ranked))
    scale = torch.tensor([1.0] * SHARED + [w[0]] * PER_REWARD + [w[1]] * PER_REWARD)
    state = {k: v * scale if "lora_B" in k else v for k, v in data.lora_state.items()}
    config = dataclasses.replace(data.module_config, reward_ranks=0)
    name = f"plain_{w[0]}_{w[1]}.safetensors"
    save_pareto_slider(library.path(name), dataclasses.replace(data, module_config=config, lora_state=state))
    return f"{library.tag}/{name}"


def apply(model, name, *w, strength=1.0):
    return Apply.execute(model=model, file=name, strength=strength, **sliders(*w))[0]


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_at_one_w_the_file_is_the_plain_lora_with_its_reward_ranks_times_w(library, strength):
    library.add("r.safetensors", "ltx2", reward_ranks=PER_REWARD)
    ranked = f"{library.tag}/r.safetensors"
    model = tiny_model("ltx2")
    x, sigma, conds = cfg_conds("ltx2", 2)
    for w in ((0.3, 0.7), (1.0, 0.0)):
        got = step(apply(model, ranked, *w, strength=strength), "ltx2", x, sigma, conds)
        want = step(apply(model, plain_at(library, "r.safetensors", w), *w, strength=strength), "ltx2", x, sigma,
                    conds)
        torch.testing.assert_close(flat(got), flat(want), atol=1e-4, rtol=1e-4)  # merged weight vs per-row path
    other = step(apply(model, plain_at(library, "r.safetensors", (1.0, 0.0)), 0.3, 0.7, strength=strength), "ltx2",
                 x, sigma, conds)
    assert (flat(other) - flat(got)).abs().max() > 1e-3  # the reward ranks' w is the one the rows are given
    assert no_hooks_left(model)


def test_the_shared_ranks_are_weight_patches_and_the_reward_ranks_are_not(library):
    name = library.add("r.safetensors", "ltx2", reward_ranks=PER_REWARD)
    patched = apply(tiny_model("ltx2"), name, 0.5, 0.5)
    lora = load_pareto_slider(library.path("r.safetensors")).lora_state
    patches = [entry[1] for entries in patched.patches.values() for entry in entries]
    assert len(patches) == sum("lora_A" in k for k in lora)
    assert all(p[1][0].shape[1] == SHARED and p[1][1].shape[0] == SHARED for p in patches)  # (up, down) of rank 2


def test_sweep_and_frame_schedule_rows_each_get_their_own_reward_ranks(library):
    name = library.add("r.safetensors", "ltx2", reward_ranks=PER_REWARD)
    model = tiny_model("ltx2")
    x, sigma, conds = cfg_conds("ltx2", 2)
    swept = step(Sweep.execute(model=model, file=name, strength=1.0, points=2)[0], "ltx2", x, sigma, conds)
    for i, w in enumerate(((1.0, 0.0), (0.0, 1.0))):
        alone = step(apply(model, name, *w), "ltx2", x, sigma, conds)
        for chunk in range(2):
            for got, want in zip(swept[chunk], alone[chunk]):
                torch.testing.assert_close(got[i], want[i], atol=1e-5, rtol=1e-5)
    frames = Schedule.execute(model=model, file=name, strength=1.0, over="frames",
                              **sliders(1.0, 0.0, prefix="start_w"), **sliders(0.0, 1.0, prefix="end_w"))[0]
    got = step(frames, "ltx2", x, sigma, conds)
    start = step(apply(model, name, 1.0, 0.0), "ltx2", x, sigma, conds)
    torch.testing.assert_close(got[0][0][:, :, 0], start[0][0][:, :, 0], atol=1e-5, rtol=1e-5)  # first frame: start
    assert no_hooks_left(model)


def test_reward_ranks_the_key_map_cannot_place_are_logged_as_comfyui_logs_its_own(library, caplog):
    """The fakes' key map knows no diffusers names (SD3 files' keys), as the real one knows none of another model's."""
    name = library.add("r.safetensors", "sd3", reward_ranks=PER_REWARD)
    with caplog.at_level("WARNING"):
        patched = apply(tiny_model("sd3"), name, 0.3, 0.7)
    lora = load_pareto_slider(library.path("r.safetensors")).lora_state
    modules = {k.removesuffix(".lora_A.weight") for k in lora if "lora_A" in k}
    logged = {m for m in modules if f"lora key not loaded: {m} (ParetoSlider reward ranks" in caplog.text}
    assert logged == modules
    assert patched.get_wrappers("apply_model", "pareto_slider")[0].ranks.layers == ()


def test_strength_zero_adds_neither_patches_nor_rank_hooks(library):
    name = library.add("r.safetensors", "ltx2", reward_ranks=PER_REWARD)
    model = tiny_model("ltx2")
    patched = apply(model, name, 0.3, 0.7, strength=0.0)
    assert patched.patches == {}
    assert patched.get_wrappers("apply_model", "pareto_slider")[0].ranks is None
