"""Every node executed on tiny ComfyUI-style models (fakes of comfy.model_base/model_patcher/samplers): the hooks
really change outputs, each row gets its own w under CFG batching, nothing leaks, and bad input is a clear error."""

from __future__ import annotations

import copy
import math
import uuid
from pathlib import Path

import fakes
import pytest
import torch
from fakes.tiny import Library, step_inputs, tiny_model

from pslider_core import load_pareto_slider

PACK = fakes.load_pack()
Apply, Sweep, Schedule = (PACK.nodes[n] for n in ("ParetoSliderApply", "ParetoSliderSweep", "ParetoSliderSchedule"))

import folder_paths  # noqa: E402  (fakes, installed by load_pack)
from comfy import patcher_extension, sampler_helpers, samplers  # noqa: E402
from comfy.model_base import SD3, ModelConfig  # noqa: E402

BACKBONES = ["sd3", "fluxkontext", "ltx2"]
APPLY = patcher_extension.WrappersMP.APPLY_MODEL


@pytest.fixture
def library():
    lib = Library(Path(folder_paths.models_dir), f"t{uuid.uuid4().hex[:8]}")
    yield lib
    lib.remove()


def sliders(*w: float, prefix: str = "w") -> dict[str, float]:
    return {f"{prefix}{i + 1}": (w[i] if i < len(w) else 0.0) for i in range(8)}


def apply(model, name, *w, strength=1.0):
    return Apply.execute(model=model, file=name, strength=strength, **sliders(*w))


def step(patcher, backbone, x, sigma, conds, sample_sigmas=None):
    """One sampler model evaluation: wrappers merged as sampling does, object/weight patches applied, conds batched
    together (cond+uncond = CFG). Returns one output per cond (LTXAV: [video, audio] per cond)."""
    options = copy.deepcopy(patcher.model_options)
    sampler_helpers.prepare_model_patcher(patcher, {}, options)
    if sample_sigmas is not None:
        options["transformer_options"]["sample_sigmas"] = sample_sigmas
    patcher.patch_model()
    try:
        if backbone != "ltx2":
            return samplers.calc_cond_batch(patcher.model, [[c] for c in conds], x, sigma, options)
        chunks = len(conds)
        opts = {**options["transformer_options"], "cond_or_uncond": list(range(chunks)), "sigmas": sigma}
        out = patcher.model.apply_model(
            [torch.cat([t] * chunks) for t in x], torch.cat([sigma] * chunks),
            c_crossattn=torch.cat([c["c_crossattn"] for c in conds]), transformer_options=opts,
        )
        return [[o.chunk(chunks)[i] for o in out] for i in range(chunks)]
    finally:
        patcher.unpatch_model()


def flat(outputs) -> torch.Tensor:
    """All outputs of a step as one vector (LTXAV returns a list per cond)."""
    parts = [o if isinstance(o, torch.Tensor) else torch.cat([t.flatten() for t in o]) for o in outputs]
    return torch.cat([p.flatten() for p in parts])


def cfg_conds(backbone, batch, seed=0):
    x, sigma, cond = step_inputs(backbone, batch, seed)
    _, _, uncond = step_inputs(backbone, batch, seed + 100)
    return x, sigma, [cond, uncond]


def no_hooks_left(model) -> bool:
    return all(not m._forward_hooks for m in model.model.modules())


# ---------------------------------------------------------------------------------------------- apply
@pytest.mark.parametrize("family", BACKBONES)
def test_apply_changes_the_prediction_on_a_clone_and_leaves_the_input_model_as_it_was(family, library):
    name = library.add("f.safetensors", family)
    model = tiny_model(family)
    x, sigma, conds = cfg_conds(family, 2)
    before = flat(step(model, family, x, sigma, conds))
    out = apply(model, name, 0.2, 0.6)
    patched = out[0]
    assert patched is not model and patched.model is model.model
    assert model.wrappers == {} and model.patches == {}
    assert len(patched.get_wrappers(APPLY, "pareto_slider")) == 1
    changed = flat(step(patched, family, x, sigma, conds))
    assert (changed - before).abs().max() > 1e-3
    assert torch.equal(flat(step(model, family, x, sigma, conds)), before), "a plain model afterwards is unchanged"
    assert no_hooks_left(model)
    assert out.ui == {"text": ["photo 0.25 · sketch 0.75"], "weights": [[0.25, 0.75]]}


@pytest.mark.parametrize("family", BACKBONES)
def test_weights_steer_the_prediction_and_only_their_ratio_matters(family, library):
    name = library.add("f.safetensors", family)
    model = tiny_model(family)
    x, sigma, conds = cfg_conds(family, 1)
    photo = flat(step(apply(model, name, 1.0, 0.0)[0], family, x, sigma, conds))
    sketch = flat(step(apply(model, name, 0.0, 1.0)[0], family, x, sigma, conds))
    assert (photo - sketch).abs().max() > 1e-3
    a = flat(step(apply(model, name, 0.2, 0.6)[0], family, x, sigma, conds))
    b = flat(step(apply(model, name, 0.1, 0.3)[0], family, x, sigma, conds))
    assert torch.equal(a, b)


def _probe(outputs: dict, paths: list[str]):
    """An APPLY_MODEL wrapper recording what the given modules return during the call."""

    def wrapper(executor, *args, **kwargs):
        base = executor.class_obj
        handles = [
            base.get_submodule(p).register_forward_hook(lambda _m, _a, out, p=p: outputs.setdefault(p, []).append(out))
            for p in paths
        ]
        try:
            return executor(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()

    return wrapper


@pytest.mark.parametrize("family", BACKBONES)
def test_vectors_are_added_exactly_at_the_adapter_paths_row_by_row_under_cfg(family, library):
    """Probes outside and inside the ParetoSlider wrapper see each module's output before and after the addition."""
    name = library.add("f.safetensors", family)
    modules = load_pareto_slider(library.path("f.safetensors")).build_modules()
    adapter = PACK.module.pslider_core.get_backbone(family)
    paths = [adapter.comfy_global_module, adapter.comfy_block_module.format(i=1)]
    model = tiny_model(family)
    before, after = {}, {}
    model.add_wrapper_with_key(APPLY, "probe_outer", _probe(before, paths))
    patched = Sweep.execute(model=model, file=name, strength=0.0, points=2)[0]  # w (1,0) then (0,1)
    patched.add_wrapper_with_key(APPLY, "probe_inner", _probe(after, paths))
    x, sigma, conds = cfg_conds(family, 2)
    step(patched, family, x, sigma, conds)
    g, m = modules(torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 2))  # chunk-major rows: latent 0, 1, 0, 1
    glob_diff = after[paths[0]][0] - before[paths[0]][0]
    rows_per_sample = glob_diff.shape[0] // 4  # LTX embeds one timestep per latent frame
    torch.testing.assert_close(glob_diff, g.repeat_interleave(rows_per_sample, 0), atol=1e-5, rtol=1e-5)
    block_diff = after[paths[1]][0] - before[paths[1]][0]
    torch.testing.assert_close(block_diff, m[:, None, :].expand_as(block_diff), atol=1e-5, rtol=1e-5)


def test_flux_kontext_reference_tokens_are_left_alone(library):
    name = library.add("f.safetensors", "fluxkontext")
    path = "diffusion_model.double_blocks.0.img_mlp"
    model = tiny_model("fluxkontext")
    before, after = {}, {}
    model.add_wrapper_with_key(APPLY, "probe_outer", _probe(before, [path]))
    patched = apply(model, name, 0.3, 0.7, strength=0.0)[0]
    patched.add_wrapper_with_key(APPLY, "probe_inner", _probe(after, [path]))
    x, sigma, cond = step_inputs("fluxkontext", 1)
    options = copy.deepcopy(patched.model_options)
    sampler_helpers.prepare_model_patcher(patched, {}, options)
    reference = [torch.randn(1, 4, 6, 4)]  # 6 reference tokens after the 4 target tokens
    patched.model.apply_model(x, sigma, ref_latents=reference, **cond,
                              transformer_options={**options["transformer_options"], "cond_or_uncond": [0]})
    diff = after[path][0] - before[path][0]
    assert diff.shape[1] == 4 + 6
    assert diff[:, :4].abs().min() > 0, "target tokens get the block vector"
    assert torch.equal(diff[:, 4:], torch.zeros_like(diff[:, 4:])), "reference tokens are untouched"


# ---------------------------------------------------------------------------------------------- sweep
@pytest.mark.parametrize("family", BACKBONES)
def test_sweep_row_i_equals_applying_w_i_alone_under_cfg(family, library):
    name = library.add("f.safetensors", family)
    model = tiny_model(family)
    out = Sweep.execute(model=model, file=name, strength=1.0, points=3)
    assert out[1] == 3
    assert out.ui["weights"] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    x, sigma, conds = cfg_conds(family, 3)
    swept = step(out[0], family, x, sigma, conds)
    for i, w in enumerate(out.ui["weights"]):
        x_i = [v[i : i + 1] for v in x] if family == "ltx2" else x[i : i + 1]
        alone = step(apply(model, name, *w)[0], family, x_i, sigma[i : i + 1],
                     [{k: v[i : i + 1] for k, v in c.items()} for c in conds])
        for chunk in range(2):
            got = swept[chunk]
            expected = alone[chunk]
            if family == "ltx2":
                for g_part, e_part in zip(got, expected):
                    torch.testing.assert_close(g_part[i : i + 1], e_part, atol=1e-4, rtol=1e-4)
            else:
                torch.testing.assert_close(got[i : i + 1], expected, atol=1e-4, rtol=1e-4)


def test_sweep_with_three_rewards_walks_the_simplex_grid(library):
    name = library.add("f.safetensors", "sd3", reward_names=("photo", "sketch", "anime"), lora=False)
    out = Sweep.execute(model=tiny_model("sd3"), file=name, strength=1.0, points=3)
    assert out[1] == 6
    grid = [tuple(w) for w in out.ui["weights"]]
    assert len(set(grid)) == 6 and all(math.isclose(sum(w), 1.0) and min(w) >= 0 for w in grid)
    assert {w for w in grid if 1.0 in w} == {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)}
    assert out.ui["text"][0] == "0: photo 1 · sketch 0 · anime 0"


def test_sweep_repeats_over_a_multiple_batch_and_refuses_a_mismatched_one(library):
    name = library.add("f.safetensors", "sd3", lora=False)
    patched = Sweep.execute(model=tiny_model("sd3"), file=name, strength=1.0, points=2)[0]
    x, sigma, conds = cfg_conds("sd3", 2)
    x4 = torch.cat([x, x])
    conds4 = [{k: torch.cat([v, v]) for k, v in c.items()} for c in conds]
    out = step(patched, "sd3", x4, torch.cat([sigma, sigma]), conds4)[0]
    torch.testing.assert_close(out[:2], out[2:])
    assert (out[0] - out[1]).abs().max() > 1e-3
    x3 = x4[:3]
    with pytest.raises(ValueError, match="latent batch has 3 images but the ParetoSlider sweep has 2 points"):
        step(patched, "sd3", x3, sigma[:1].repeat(3), [{k: v[:3] for k, v in c.items()} for c in conds4])
    assert no_hooks_left(patched)


# ---------------------------------------------------------------------------------------------- schedule
def test_schedule_moves_from_start_to_end_weights_over_the_sampler_sigmas(library):
    name = library.add("f.safetensors", "sd3", lora=False)
    model = tiny_model("sd3")
    out = Schedule.execute(model=model, file=name, strength=1.0, **sliders(1.0, 0.0, prefix="start_w"),
                           **sliders(0.0, 1.0, prefix="end_w"))
    assert out.ui["text"] == ["start: photo 1 · sketch 0", "end: photo 0 · sketch 1"]
    sample_sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    x, _, conds = cfg_conds("sd3", 1)
    for sigma, w in ((1.0, (1.0, 0.0)), (0.625, (0.5, 0.5)), (0.25, (0.0, 1.0))):
        s = torch.tensor([sigma])
        got = flat(step(out[0], "sd3", x, s, conds, sample_sigmas))
        expected = flat(step(apply(model, name, *w)[0], "sd3", x, s, conds))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # outside a sampler (no sample_sigmas) the model's own sigma range is used: sigma_max means the start
    top = torch.tensor([float(model.model.model_sampling.sigma_max)])
    torch.testing.assert_close(flat(step(out[0], "sd3", x, top, conds)),
                               flat(step(apply(model, name, 1.0, 0.0)[0], "sd3", x, top, conds)))


# ---------------------------------------------------------------------------------------------- LTX-2, LoRA
def test_ltx2_changes_video_only_and_its_lora_reaches_video_attention_at_the_node_strength(library):
    name = library.add("f.safetensors", "ltx2")
    model = tiny_model("ltx2")
    x, sigma, conds = cfg_conds("ltx2", 1)
    base = step(model, "ltx2", x, sigma, conds)
    for strength in (0.0, 0.5):
        patched = apply(model, name, 0.3, 0.7, strength=strength)[0]
        out = step(patched, "ltx2", x, sigma, conds)
        for chunk in range(2):
            assert (out[chunk][0] - base[chunk][0]).abs().max() > 1e-3, "video follows the preference"
            assert torch.equal(out[chunk][1], base[chunk][1]), "audio is untouched"
        if strength == 0.0:
            assert patched.patches == {}
        else:
            lora = load_pareto_slider(library.path("f.safetensors")).lora_state
            assert set(patched.patches) == {k.replace(".lora_A.weight", ".weight") for k in lora if "lora_A" in k}
            assert all(".attn1." in k or ".attn2." in k for k in patched.patches)
            assert {e[0] for entries in patched.patches.values() for e in entries} == {0.5}


def test_chained_nodes_stack_and_other_packs_object_patches_still_apply(library):
    first = library.add("a.safetensors", "sd3", lora=False)
    second = library.add("b.safetensors", "sd3", seed=3, lora=False)
    model = tiny_model("sd3")
    x, sigma, conds = cfg_conds("sd3", 1)
    one = apply(model, first, 0.5, 0.5)[0]
    both = apply(one, second, 0.5, 0.5)[0]
    assert len(both.get_wrappers(APPLY, "pareto_slider")) == 2
    assert (flat(step(both, "sd3", x, sigma, conds)) - flat(step(one, "sd3", x, sigma, conds))).abs().max() > 1e-3
    other = model.clone()  # another pack replaces the timestep embedder by an object patch
    replacement = copy.deepcopy(model.model.diffusion_model.t_embedder)
    with torch.no_grad():
        replacement.mlp[2].bias.add_(1.0)
    other.add_object_patch("diffusion_model.t_embedder", replacement)
    combined = apply(other, first, 0.5, 0.5)[0]
    only_other, only_ours = (flat(step(m, "sd3", x, sigma, conds)) for m in (other, one))
    result = flat(step(combined, "sd3", x, sigma, conds))
    assert (result - only_other).abs().max() > 1e-3 and (result - only_ours).abs().max() > 1e-3
    assert model.model.diffusion_model.t_embedder is not replacement, "object patches are undone after sampling"


def test_hooks_are_removed_when_the_model_call_fails(library):
    name = library.add("f.safetensors", "sd3", lora=False)
    patched = apply(tiny_model("sd3"), name, 0.5, 0.5)[0]
    x, sigma, conds = cfg_conds("sd3", 1)
    conds = [{**c, "c_crossattn": c["c_crossattn"][..., :5]} for c in conds]  # wrong text width
    with pytest.raises(RuntimeError):
        step(patched, "sd3", x, sigma, conds)
    assert no_hooks_left(patched)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ((0.0, 0.0), "must not all be zero"),
        ((float("nan"), 0.5), "finite"),
        ((0.5, 0.5, 0.4), "sketch\\) but w3 = 0.4"),
    ],
)
def test_bad_weights_are_clear_errors(weights, message, library):
    name = library.add("f.safetensors", "sd3", lora=False)
    with pytest.raises(ValueError, match=message):
        apply(tiny_model("sd3"), name, *weights)


@pytest.mark.parametrize(
    ("node", "name", "value", "fix"),
    [
        ("apply", "strength", math.nan, "set strength to a number from 0 to 2"),
        ("apply", "w2", math.inf, "set w2 to a number from 0 to 1"),
        ("sweep", "strength", -math.inf, "set strength to a number from 0 to 2"),
        ("schedule", "strength", math.nan, "set strength to a number from 0 to 2"),
        ("schedule", "end_w1", math.nan, "set end_w1 to a number from 0 to 1"),
    ],
)
def test_non_finite_float_inputs_are_node_errors_naming_the_input(node, name, value, fix, library):
    """A NaN strength used to render an all-NaN latent without an error (ComfyUI's range check lets NaN through)."""
    file = library.add("f.safetensors", "sd3")
    inputs = {"apply": {"strength": 1.0, **sliders(0.5, 0.5)}, "sweep": {"strength": 1.0, "points": 3},
              "schedule": {"strength": 1.0, **sliders(1.0, prefix="start_w"), **sliders(0.0, 1.0, prefix="end_w")}}
    cls = {"apply": Apply, "sweep": Sweep, "schedule": Schedule}[node]
    with pytest.raises(ValueError) as err:
        cls.execute(model=tiny_model("sd3"), file=file, **{**inputs[node], name: value})
    message = str(err.value)
    assert message.startswith(f"{name} = {value}: ParetoSlider inputs must be finite numbers") and fix in message


def test_schedule_names_the_bad_slider(library):
    name = library.add("f.safetensors", "sd3", lora=False)
    with pytest.raises(ValueError, match="end_w5 = 0.2"):
        Schedule.execute(model=tiny_model("sd3"), file=name, strength=1.0, **sliders(1.0, prefix="start_w"),
                         **sliders(1.0, 0, 0, 0, 0.2, prefix="end_w"))


def test_files_the_nodes_cannot_drive_are_refused(library):
    many = library.add("many.safetensors", "sd3", reward_names=tuple(f"r{i}" for i in range(9)), lora=False)
    with pytest.raises(ValueError, match="9 rewards but slider nodes have 8 sliders"):
        apply(tiny_model("sd3"), many, 1.0)
    single = library.add("one.safetensors", "sd3", reward_names=("photo",), lora=False)
    with pytest.raises(ValueError, match="at least 2 rewards"):
        Sweep.execute(model=tiny_model("sd3"), file=single, strength=1.0, points=3)


def test_a_file_for_another_backbone_names_both(library):
    name = library.add("f.safetensors", "sd3", lora=False)
    with pytest.raises(ValueError) as err:
        apply(tiny_model("fluxkontext"), name, 0.5, 0.5)
    assert "backbone 'sd3'" in str(err.value) and "ComfyUI Flux" in str(err.value)


def test_an_unsupported_model_family_and_a_wrong_width_are_refused(library):
    name = library.add("f.safetensors", "sd3", lora=False)
    model = tiny_model("sd3")
    other = model.clone()
    other.model = type("HunyuanVideo", (SD3,), {})(ModelConfig())
    with pytest.raises(ValueError, match="ComfyUI HunyuanVideo model, which no ParetoSlider backbone covers"):
        apply(other, name, 0.5, 0.5)
    wide = library.add("wide.safetensors", "sd3", inner_dim=48, lora=False)
    with pytest.raises(ValueError, match="48 wide .* this MODEL is 32 wide"):
        apply(model, wide, 0.5, 0.5)


def test_a_global_only_file_hooks_the_global_vector_only(library):
    name = library.add("g.safetensors", "sd3", mode="global", lora=False)
    model = tiny_model("sd3")
    patched = apply(model, name, 0.5, 0.5)[0]
    wrapper = patched.get_wrappers(APPLY, "pareto_slider")[0]
    assert wrapper.points.block_modules == ()
    x, sigma, conds = cfg_conds("sd3", 1)
    assert (flat(step(patched, "sd3", x, sigma, conds)) - flat(step(model, "sd3", x, sigma, conds))).abs().max() > 1e-3
