"""The memory model (pslider_core/memory.py): real configs, meta-built weights, measured activations, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from pslider_core import get_backbone
from pslider_core import memory as M

torch.set_num_threads(1)

TINY = ("sd3", "fluxkontext", "ltx2")

# models.md (shared reference): parameters of the real transformers
REAL_TRANSFORMERS = {
    "stabilityai/stable-diffusion-3.5-medium": ("sd3", 2.24e9),
    "stabilityai/stable-diffusion-3.5-large": ("sd3", 8.06e9),
    "black-forest-labs/FLUX.1-Kontext-dev": ("fluxkontext", 11.9e9),
    "Lightricks/LTX-2": ("ltx2", 18.9e9),
}


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """Each tiny pipeline saved with save_pretrained (what --base points at), once per module."""
    folders = {}
    for name in TINY:
        folder = tmp_path_factory.mktemp(name)
        get_backbone(name).tiny_pipeline(seed=0).save_pretrained(folder)
        folders[name] = folder
    return folders


def _size(adapter):
    return {"num_frames": 1, **adapter.tiny_sample_size}


# ---------------------------------------------------------------------- real configs
@pytest.mark.parametrize("hub_id", sorted(REAL_TRANSFORMERS))
def test_real_transformer_has_the_published_parameter_count(hub_id):
    backbone, published = REAL_TRANSFORMERS[hub_id]
    adapter = get_backbone(backbone)
    index = json.loads((M.shipped_configs(hub_id) / M.MODEL_INDEX).read_text())
    assert index["_class_name"] == adapter.pipeline_class.__name__
    transformer = M.model_from_config(adapter.transformer_class, M.shipped_configs(hub_id) / "transformer", torch.bfloat16)
    assert M.parameter_count(transformer) == pytest.approx(published, rel=0.01)
    assert all(p.device.type == "meta" for p in transformer.parameters())


def test_real_text_encoders_have_their_published_sizes():
    t5 = M.model_from_config(
        M._component_class("transformers", "T5EncoderModel"),
        M.shipped_configs("black-forest-labs/FLUX.1-Kontext-dev") / "text_encoder_2", torch.bfloat16,
    )
    assert M.parameter_count(t5) == pytest.approx(4.76e9, rel=0.01)  # T5 v1.1 XXL encoder
    clip_g = M.model_from_config(
        M._component_class("transformers", "CLIPTextModelWithProjection"),
        M.shipped_configs("stabilityai/stable-diffusion-3.5-medium") / "text_encoder_2", torch.bfloat16,
    )
    assert M.parameter_count(clip_g) / 1e6 == pytest.approx(694.66, rel=1e-3)  # open_clip: ViT-bigG-14 text
    gemma = M.model_from_config(
        M._component_class("transformers", "Gemma3ForConditionalGeneration"),
        M.shipped_configs("Lightricks/LTX-2") / "text_encoder", torch.bfloat16,
    )
    assert M.module_bytes(gemma) == pytest.approx(24.4e9, rel=0.02)  # Gemma 3 12B, about 24 GB in bf16


@pytest.mark.parametrize("hub_id, millions", [
    ("openai/clip-vit-large-patch14", 427.62),  # open_clip docs/model_profile.csv: ViT-L-14
    ("yuvalkirstain/PickScore_v1", 986.11),  # ViT-H-14
])
def test_real_reward_models_have_their_published_sizes(hub_id, millions):
    from transformers import CLIPModel

    model = M.model_from_config(CLIPModel, M.shipped_configs(hub_id), torch.float32)
    assert M.parameter_count(model) / 1e6 == pytest.approx(millions, rel=1e-3)


def test_unknown_hub_id_names_the_fix():
    with pytest.raises(FileNotFoundError, match="Pass --base a local folder"):
        M.config_folder("someone/unknown-model")


# ---------------------------------------------------------------------- weights on meta == weights loaded
@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_meta_pipeline_holds_the_bytes_from_pretrained_loads(name, dtype, tiny_folders):
    adapter = get_backbone(name)
    meta = M.build_pipeline(adapter, tiny_folders[name], dtype)
    real = adapter.pipeline_class.from_pretrained(tiny_folders[name], dtype=dtype)
    for component, module in real.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        built = getattr(meta, component)
        assert M.module_bytes(built) == M.module_bytes(module), component
        assert sorted((n, t.dtype) for n, t in built.state_dict().items()) == sorted(
            (n, t.dtype) for n, t in module.state_dict().items()
        ), component


# ---------------------------------------------------------------------- the measurement tools
def _tiny_step(backbone, pipe, device):
    adapter = get_backbone(backbone)
    adapter.max_sequence_length = 16
    size = _size(adapter)
    slider = M.attach_trainables(adapter, pipe.transformer, ["a", "b"], rank=4, alpha=4.0, mode="global+block",
                                 num_freqs=1)
    gen = torch.Generator().manual_seed(0)
    x = adapter.initial_noise(pipe, 2, size["height"], size["width"], gen, size["num_frames"]).to(device)
    cond = adapter.random_conditioning(pipe, 2, **size, generator=gen, device=device)
    w = torch.tensor([[0.3, 0.7], [0.6, 0.4]], device=device)
    return adapter, slider, x, cond, w


@pytest.mark.parametrize("name", TINY)
def test_meta_measurement_equals_the_same_step_on_cpu(name, tiny_folders):
    """Tensors saved for backward, kept by checkpointing and the step's peak: meta and a real CPU run agree."""
    results = {}
    for device in ("cpu", "meta"):
        adapter = get_backbone(name)
        if device == "meta":
            pipe = M.build_pipeline(adapter, tiny_folders[name], torch.float32)
        else:
            pipe = adapter.pipeline_class.from_pretrained(tiny_folders[name], dtype=torch.float32)
            for module in pipe.components.values():
                if isinstance(module, torch.nn.Module):
                    module.requires_grad_(False).eval()
        adapter, slider, x, cond, w = _tiny_step(name, pipe, device)
        for checkpointing in (False, True):
            if checkpointing:
                pipe.transformer.enable_gradient_checkpointing()
            results[device, checkpointing] = M.measure_velocity(
                adapter, pipe, slider, x, cond, w, train=True, autocast=None, check=device == "meta"
            )
    for checkpointing in (False, True):
        assert results["meta", checkpointing] == results["cpu", checkpointing]
    plain, checkpointed = results["meta", False], results["meta", True]
    assert plain.saved > 0 and plain.kept >= plain.saved  # kept = saved + the output
    assert plain.kept - plain.saved <= 2 * x.numel() * 4
    assert checkpointed.kept < plain.kept / 2 and checkpointed.peak < plain.peak
    assert checkpointed.attention_calls == 2 * plain.attention_calls  # every block recomputed in the backward


def test_live_bytes_matches_the_cpu_allocator(tmp_path, tiny_pipelines):
    """The tracker's high-water mark of a real training step equals the CPU allocator's (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    pipe = get_backbone("sd3").tiny_pipeline(seed=0)
    adapter, slider, x, cond, w = _tiny_step("sd3", pipe, "cpu")
    trained = list(slider.trainable_parameters())
    for param in trained:
        param.grad = torch.zeros_like(param)

    def step():
        with adapter.condition(pipe.transformer, slider.modules, w):
            v = adapter.predict_velocity(pipe, pipe.transformer, x, torch.full((2,), 0.5), cond)
            v.square().mean().backward()

    step()  # lazily created state (autograd, peft) out of the way
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    timeline = tmp_path / "memory.json"
    prof.export_memory_timeline(str(timeline), device="cpu")
    _times, sizes = json.loads(timeline.read_text())
    totals = [sum(row) for row in sizes]
    allocator_peak = max(totals) - totals[0]
    tracker = M.LiveBytes()
    with tracker:
        step()
    assert tracker.peak == pytest.approx(allocator_peak, rel=0.01)


# CPU autocast's op lists (aten/src/ATen/autocast_mode.cpp, AutocastCPU), to check the emulation against the real thing
CPU_AUTOCAST = M.AutocastPolicy(
    lower_precision=frozenset({
        "conv1d", "conv2d", "conv3d", "bmm", "mm", "linalg_vecdot", "baddbmm", "addmm", "addbmm", "linear",
        "matmul", "__matmul__", "conv_tbc", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "prelu",
        "scaled_dot_product_attention",
    }),
    float32=frozenset({"mse_loss", "cdist", "prod", "trace", "grid_sampler", "binary_cross_entropy", "kl_div",
                       "l1_loss", "smooth_l1_loss", "huber_loss", "nll_loss", "cosine_embedding_loss"}),
    promote=frozenset({"stack", "cat", "index_copy"}),
)


def _saved(fn):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((tuple(t.shape), t.dtype)) or t,
                                                  lambda t: t):
        fn()
    return saved


def test_emulated_autocast_saves_what_real_autocast_saves():
    """With CPU autocast's lists the emulation saves the same tensors as torch.autocast('cpu') on a tiny SD3."""
    pipe = get_backbone("sd3").tiny_pipeline(seed=0)
    adapter, slider, x, cond, w = _tiny_step("sd3", pipe, "cpu")
    pipe.transformer.to(torch.bfloat16)

    def forward():
        with adapter.condition(pipe.transformer, slider.modules, w):
            adapter.predict_velocity(pipe, pipe.transformer, x, torch.full((2,), 0.5), cond)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        real = _saved(forward)
    with M.EmulatedAutocast(torch.bfloat16, CPU_AUTOCAST):
        emulated = _saved(forward)
    assert any(dtype == torch.bfloat16 for _, dtype in real)
    assert emulated == real


def test_flash_attention_stand_in_saves_linear_memory():
    q = torch.empty((2, 4, 1024, 64), device="meta", dtype=torch.bfloat16, requires_grad=True)
    tracker = M.LiveBytes()
    with tracker, M.gpu_like_attention() as calls:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        out.float().sum().backward()
    assert calls == [1] and out.shape == q.shape
    scores = 2 * 4 * 1024 * 1024 * 2  # what the math path would materialise
    assert tracker.peak < scores / 2


# ---------------------------------------------------------------------- random conditioning
@pytest.mark.parametrize("name", [*TINY, "toy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_conditioning_has_the_shapes_of_encode_prompts(name, dtype):
    adapter = get_backbone(name)
    adapter.max_sequence_length = 16
    pipe = adapter.tiny_pipeline(seed=0)
    for module in vars(pipe).values():
        if isinstance(module, torch.nn.Module):
            module.to(dtype)
    size = _size(adapter)
    prompts = ["a red circle", "a blue square"]
    sources = torch.rand(2, 3, size["height"], size["width"]) if adapter.needs_source else None
    with torch.no_grad():
        encoded = adapter.encode_prompts(pipe, prompts, sources, **size)
    drawn = adapter.random_conditioning(pipe, 2, **size, generator=torch.Generator().manual_seed(1))
    assert sorted(drawn) == sorted(encoded)
    for key, value in encoded.items():
        if isinstance(value, torch.Tensor):
            assert (drawn[key].shape, drawn[key].dtype, drawn[key].device) == (value.shape, value.dtype,
                                                                                  value.device), key
        else:
            assert drawn[key] == value, key
    again = adapter.random_conditioning(pipe, 2, **size, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(again[k], v) for k, v in drawn.items() if isinstance(v, torch.Tensor))


# ---------------------------------------------------------------------- the estimate and the CLI
def _config(backbone, base, **overrides):
    from trainer.config import resolve_config

    adapter = get_backbone(backbone)
    size = _size(adapter)
    values = {
        "backbone": backbone, "base": str(base), "rewards": "brightness,saturation", "batch_size": 2,
        "height": size["height"], "width": size["width"], "num_frames": size["num_frames"], "prompts_per_epoch": 2,
        "images_per_prompt": 4, "slots_per_prompt": 2, "max_sequence_length": 16, "lora_rank": 4,
        "lora_alpha": 4.0, "mixed_precision": "bf16", "gradient_checkpointing": True,
    }
    return resolve_config({}, {**values, **overrides})


def test_stages_follow_the_residency_options(tiny_folders):
    folder = tiny_folders["fluxkontext"]
    offloaded = M.estimate_memory(_config("fluxkontext", folder))
    kept = M.estimate_memory(_config("fluxkontext", folder, offload_text_encoders=False, offload_vae=False))
    text = sum(c.bytes for c in offloaded.components if c.role == "text encoder")
    vae = sum(c.bytes for c in offloaded.components if c.role == "VAE")
    assert text > 0 and vae > 0
    training = {s.name: s.total for s in offloaded.stages}["training"]
    assert {s.name: s.total for s in kept.stages}["training"] == training + text + vae
    assert offloaded.stages[0].name == "encode" and dict(offloaded.stages[0].items)["text encoders"] == text
    no_ema = M.estimate_memory(_config("fluxkontext", folder, ema=False, objective="grpo"))
    assert no_ema.copies["EMA"] == no_ema.copies["old policy"] == 0
    assert no_ema.copies["Adam m"] == offloaded.copies["Adam m"]


def test_estimate_memory_cli_prints_every_component_without_loading_weights(monkeypatch):
    from diffusers import DiffusionPipeline, ModelMixin
    from transformers import PreTrainedModel

    from trainer.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("--estimate-memory loaded weights")

    for cls in (DiffusionPipeline, ModelMixin, PreTrainedModel):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(refuse))
    result = CliRunner().invoke(main, ["--estimate-memory", "--config", "trainer/configs/sd3.toml"])
    assert result.exit_code == 0, result.output
    out = result.output
    for name in ("transformer (SD3Transformer2DModel", "text_encoder (", "text_encoder_2 (", "text_encoder_3 (T5",
                 "vae (AutoencoderKL", "reward model yuvalkirstain/PickScore_v1",
                 "reward model openai/clip-vit-large-patch14", "Adam m", "EMA", "old policy", "gradients",
                 "without checkpointing", "with checkpointing", "  encode", "  rollout", "  rewards", "  training",
                 "FSDP2 per-GPU peak"):
        assert name in out, name
    assert "fits 64 GiB on one GPU" in out
