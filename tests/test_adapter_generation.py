"""Every registered backbone adapter's generation steps reproduce its diffusers pipeline, on tiny real models.

An Euler loop written here from the adapter's encode_prompts / initial_noise / sigmas / predict_velocity / decode
must give the pipeline's own `__call__` output for the same seed and step count (no CFG); the tiny pipeline must
survive save_pretrained -> adapter.load_pipeline; the hook points and LoRA targets must be the intended modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig

from pslider_core.backbones import BackboneAdapter, available_backbones, get_backbone, select_conditioning

STEPS = 3
SEED = 7


Size = dict[str, int]  # height, width, num_frames
PipelineCall = Callable[[BackboneAdapter, Any, list[str], "torch.Tensor | None", torch.Generator, Size], Any]


def _sd3_pipeline(adapter: BackboneAdapter, pipe: Any, prompts: list[str], sources: Any, gen: torch.Generator,
                  size: Size):
    return pipe(
        prompt=prompts, height=size["height"], width=size["width"], num_inference_steps=STEPS,
        guidance_scale=1.0, generator=gen, output_type="pt", max_sequence_length=adapter.max_sequence_length,
    ).images


def _kontext_pipeline(adapter: BackboneAdapter, pipe: Any, prompts: list[str], sources: Any, gen: torch.Generator,
                     size: Size):
    height, width = size["height"], size["width"]
    return pipe(
        image=sources, prompt=prompts, height=height, width=width, num_inference_steps=STEPS,
        guidance_scale=adapter.guidance_scale, generator=gen, output_type="pt",
        max_sequence_length=adapter.max_sequence_length, max_area=height * width, _auto_resize=False,
    ).images


def _ltx2_pipeline(adapter: BackboneAdapter, pipe: Any, prompts: list[str], sources: Any, gen: torch.Generator,
                   size: Size):
    return pipe(
        prompt=prompts, **size, frame_rate=adapter.frame_rate, num_inference_steps=STEPS,
        generator=gen, output_type="pt", max_sequence_length=adapter.max_sequence_length,
        # every guidance off: no CFG, STG, modality isolation or rescale, for video and audio alike
        guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0, audio_guidance_scale=1.0,
        audio_stg_scale=0.0, audio_modality_scale=1.0, audio_guidance_rescale=0.0,
    )


# how to call each diffusers-backed backbone's own pipeline with the adapter's settings and CFG off
PIPELINE_CALLS: dict[str, PipelineCall] = {
    "sd3": _sd3_pipeline,
    "fluxkontext": _kontext_pipeline,
    "ltx2": _ltx2_pipeline,
}
DIFFUSERS_BACKBONES = [
    name for name in available_backbones() if issubclass(get_backbone(name).pipeline_class, DiffusionPipeline)
]
PROMPTS = ["a red circle", "a blue square"]  # words every tiny text encoder knows, the toy one included


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _adapter_and_pipe(name: str) -> tuple[BackboneAdapter, Any]:
    adapter = get_backbone(name)
    adapter.max_sequence_length = 16  # short text sequences keep the tiny models fast
    pipe = adapter.tiny_pipeline(seed=0)
    if isinstance(pipe, DiffusionPipeline):
        pipe.set_progress_bar_config(disable=True)
    return adapter, pipe


def _sources(adapter: BackboneAdapter) -> torch.Tensor | None:
    """Source images for editing backbones, wider than the target so both token grids differ."""
    if not adapter.needs_source:
        return None
    size = adapter.tiny_sample_size
    return torch.rand(
        len(PROMPTS), 3, size["height"], size["width"] + 16, generator=torch.Generator().manual_seed(1)
    )


@torch.no_grad()
def _noise(adapter: BackboneAdapter, pipe: Any, size: Size | None = None) -> torch.Tensor:
    size = size or adapter.tiny_sample_size
    generator = torch.Generator().manual_seed(SEED)
    return adapter.initial_noise(pipe, len(PROMPTS), size["height"], size["width"], generator, size["num_frames"])


@torch.no_grad()
def _euler(adapter: BackboneAdapter, pipe: Any, sources: torch.Tensor | None, size: Size | None = None) -> torch.Tensor:
    """Deterministic flow-matching Euler sampling from the adapter's steps; returns the clean state."""
    size = size or adapter.tiny_sample_size
    cond = adapter.encode_prompts(pipe, PROMPTS, sources, **size)
    x = _noise(adapter, pipe, size)
    sigmas = adapter.sigmas(pipe, STEPS, x, cond)
    assert sigmas.shape == (STEPS + 1,) and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    for i in range(STEPS):
        v = adapter.predict_velocity(pipe, pipe.transformer, x, sigmas[i].expand(x.shape[0]), cond)
        assert v.shape == x.shape
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def _assert_matches_pipeline(adapter: BackboneAdapter, pipe: Any, size: Size) -> None:
    """The adapter's Euler loop and decoders give the pipeline's own output at this size."""
    sources = _sources(adapter)
    x0 = _euler(adapter, pipe, sources, size)
    with torch.no_grad():
        ours = adapter.decode(pipe, x0, **size)
        theirs = PIPELINE_CALLS[adapter.name](
            adapter, pipe, PROMPTS, sources, torch.Generator().manual_seed(SEED), size
        )

    frames = theirs.frames if adapter.modality == "video" else theirs
    expected_shape = (len(PROMPTS), 3, size["height"], size["width"])
    if adapter.modality == "video":
        expected_shape = (len(PROMPTS), size["num_frames"], *expected_shape[1:])
    assert ours.shape == expected_shape
    assert 0.0 <= float(ours.min()) and float(ours.max()) <= 1.0
    assert float(ours.std()) > 1e-3, "decoded output is flat: the comparison would prove nothing"
    torch.testing.assert_close(ours, frames, atol=1e-5, rtol=1e-4)

    if adapter.generates_audio:
        with torch.no_grad():
            audio, rate = adapter.decode_audio(pipe, x0, **size)
        assert rate == pipe.vocoder.config.output_sampling_rate
        torch.testing.assert_close(audio, theirs.audio, atol=1e-5, rtol=1e-4)
    else:
        with pytest.raises(NotImplementedError, match=f"{adapter.name}' generates no audio.*ltx2"):
            adapter.decode_audio(pipe, x0, **size)


@pytest.mark.parametrize("name", DIFFUSERS_BACKBONES)
def test_generation_steps_match_pipeline(name: str) -> None:
    if name not in PIPELINE_CALLS:
        pytest.fail(f"Backbone {name!r} has a diffusers pipeline but no entry in PIPELINE_CALLS ({__file__}).")
    adapter, pipe = _adapter_and_pipe(name)
    _assert_matches_pipeline(adapter, pipe, adapter.tiny_sample_size)


@pytest.mark.parametrize("name", available_backbones())
def test_save_and_load_pipeline_round_trip(name: str, tmp_path) -> None:
    adapter, pipe = _adapter_and_pipe(name)
    pipe.save_pretrained(tmp_path)
    loaded = adapter.load_pipeline(tmp_path)
    assert type(loaded) is adapter.pipeline_class
    sources = _sources(adapter)
    with torch.no_grad():
        before = adapter.decode(pipe, _euler(adapter, pipe, sources), **adapter.tiny_sample_size)
        after = adapter.decode(loaded, _euler(adapter, loaded, sources), **adapter.tiny_sample_size)
    assert torch.equal(before, after)

    transformer = adapter.load_transformer(tmp_path)
    assert isinstance(transformer, adapter.transformer_class)
    reference = pipe.transformer.state_dict()
    assert all(torch.equal(t, reference[k]) for k, t in transformer.state_dict().items())


@pytest.mark.parametrize("name", available_backbones())
def test_hook_points(name: str) -> None:
    """Block path: one image/video feed-forward per dual-stream block; global path: a vector of inner_dim."""
    adapter, pipe = _adapter_and_pipe(name)
    transformer = pipe.transformer
    blocks = adapter.block_modules(transformer)
    assert blocks == [f"transformer_blocks.{i}.ff" for i in range(len(transformer.transformer_blocks))]
    assert adapter.comfy_block_modules(2) == [adapter.comfy_block_module.format(i=i) for i in range(2)]
    assert adapter.comfy_global_module.startswith("diffusion_model.")

    seen: list[torch.Tensor] = []
    handle = transformer.get_submodule(adapter.global_module).register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        _euler(adapter, pipe, _sources(adapter))
    finally:
        handle.remove()
    assert len(seen) == STEPS
    assert seen[0].shape == (len(PROMPTS), adapter.inner_dim(transformer))


# LoRA targets of the tiny models, written out: attention projections only, by full name
EXPECTED_LORA = {
    "sd3": [
        f"transformer_blocks.{i}.attn.{p}" for i in range(2) for p in ("to_q", "to_k", "to_v", "to_out.0")
    ] + [f"transformer_blocks.{i}.attn.{p}" for i in range(2) for p in ("add_q_proj", "add_k_proj", "add_v_proj")]
    + ["transformer_blocks.0.attn.to_add_out"],  # the last SD3 block keeps no context output
    "fluxkontext": [
        f"transformer_blocks.0.attn.{p}"
        for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    ] + [f"single_transformer_blocks.0.{p}" for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_out")],
    "ltx2": [
        f"transformer_blocks.{i}.{a}.{p}" for i in range(2) for a in ("attn1", "attn2")
        for p in ("to_q", "to_k", "to_v", "to_out.0")
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_LORA))
def test_lora_targets(name: str) -> None:
    adapter, pipe = _adapter_and_pipe(name)
    transformer = pipe.transformer
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=adapter.lora_target_modules))
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in transformer.named_modules() if n.endswith(".lora_A")}
    assert wrapped == set(EXPECTED_LORA[name])


def _capture_kontext_call() -> tuple[BackboneAdapter, tuple, dict, int, int, list[torch.Tensor]]:
    """One Kontext call's args/kwargs, its numbers of target and reference tokens, and the block ff output."""
    adapter, pipe = _adapter_and_pipe("fluxkontext")
    calls: list[tuple[tuple, dict]] = []
    ff_out: list[torch.Tensor] = []
    transformer = pipe.transformer
    handles = [
        transformer.register_forward_pre_hook(lambda m, a, kw: calls.append((a, kw)), with_kwargs=True),
        transformer.get_submodule(adapter.block_modules(transformer)[0]).register_forward_hook(
            lambda m, a, out: ff_out.append(out)
        ),
    ]
    try:
        sources = _sources(adapter)
        cond = adapter.encode_prompts(pipe, PROMPTS, sources, **adapter.tiny_sample_size)
        x = _noise(adapter, pipe)
        with torch.no_grad():
            adapter.predict_velocity(pipe, transformer, x, torch.ones(len(PROMPTS)), cond)
    finally:
        for handle in handles:
            handle.remove()
    args, kwargs = calls[0]
    packed = 2 * pipe.vae_scale_factor  # pixels per token side: VAE factor, then 2x2 packing
    targets = (x.shape[2] // 2) * (x.shape[3] // 2)
    references = (sources.shape[2] // packed) * (sources.shape[3] // packed)
    return adapter, args, kwargs, targets, references, ff_out


def test_kontext_mask_marks_exactly_the_target_tokens() -> None:
    adapter, args, kwargs, targets, references, ff_out = _capture_kontext_call()
    assert targets != references
    mask = adapter.target_token_mask(args, kwargs)
    assert mask.dtype == torch.bool and mask.shape == (targets + references,)
    assert mask[:targets].all() and not mask[targets:].any()
    assert ff_out[0].shape[1] == mask.shape[0], "the mask must align with the image-stream feed-forward tokens"

    # the same ids passed positionally, and in the legacy batched (B, N, 3) form
    order = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids")
    positional = tuple(kwargs[k] for k in order)
    assert torch.equal(adapter.target_token_mask(positional, {}), mask)
    legacy = dict(kwargs, img_ids=kwargs["img_ids"].expand(2, -1, -1))
    assert torch.equal(adapter.target_token_mask((), legacy), mask)


def test_kontext_requires_sources() -> None:
    adapter, pipe = _adapter_and_pipe("fluxkontext")
    size = adapter.tiny_sample_size
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        adapter.encode_prompts(pipe, PROMPTS, **size)
    with pytest.raises(ValueError, match="one per prompt"):
        adapter.encode_prompts(pipe, PROMPTS, torch.rand(1, 3, 32, 32), **size)
    with pytest.raises(ValueError, match=r"values in \[-"):
        adapter.encode_prompts(pipe, PROMPTS, torch.rand(2, 3, 32, 32) * 2 - 1, **size)  # [-1, 1], not [0, 1]


def test_ltx2_state_layout() -> None:
    adapter, pipe = _adapter_and_pipe("ltx2")
    size = adapter.tiny_sample_size
    x = _noise(adapter, pipe)
    cond = adapter.encode_prompts(pipe, PROMPTS, **size)
    layout = adapter.layout_of(cond)
    assert layout == adapter.layout(pipe, **size)
    assert adapter.layout_of(select_conditioning(cond, [1, 1, 0])) is layout  # shared by every sample
    video, audio = layout.split(x)
    assert video.shape == (2, layout.video_tokens, pipe.transformer.config.in_channels)
    assert audio.shape == (2, layout.audio_frames, pipe.transformer.config.audio_in_channels)
    assert torch.equal(torch.cat([video, audio], dim=1), x)

    with pytest.raises(ValueError, match="num_frames the state was created with"):
        adapter.sigmas(pipe, STEPS, x[:, 1:], cond)
    without_layout = {k: v for k, v in cond.items() if k != "shared_layout"}
    with pytest.raises(ValueError, match="holds no LTX-2 layout"):
        adapter.predict_velocity(pipe, pipe.transformer, x, torch.ones(2), without_layout)
    with pytest.raises(ValueError, match="multiples of"):
        adapter.layout(pipe, 33, 32, 5)
    with pytest.raises(ValueError, match="num_frames the state was created with"):
        adapter.decode(pipe, x, size["height"], size["width"], size["num_frames"] + 4)


def test_ltx2_sizes_with_equal_token_counts_in_one_process() -> None:
    """32x96 and 96x32 give states of one shape; each conditioning carries its own grid, so both match the pipeline."""
    adapter, pipe = _adapter_and_pipe("ltx2")
    wide, tall = {"height": 32, "width": 96, "num_frames": 5}, {"height": 96, "width": 32, "num_frames": 5}
    assert _noise(adapter, pipe, wide).shape == _noise(adapter, pipe, tall).shape
    assert adapter.layout(pipe, **wide) != adapter.layout(pipe, **tall)
    for size in (wide, tall):
        _assert_matches_pipeline(adapter, pipe, size)
