"""Real-width checks (`benchmarks/real_width.py`), the fast subset: SD3.5 Medium's real config at real width with
2 blocks trains one step of its shipped preset (float32 here: this CPU has no bf16 instructions, and bf16 matmuls take
several times longer; the benchmark runs bf16), the full-depth counts on meta against the config's arithmetic, and
the file size computed without writing against a written file."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import real_width  # noqa: E402
from real_runs import CONFIGS  # noqa: E402

from pslider_core import LoraSpec, ParetoSlider, get_backbone  # noqa: E402
from pslider_core.file_format import saved_file_size  # noqa: E402
from pslider_core.memory import config_folder  # noqa: E402

MEDIUM = CONFIGS["sd35-medium"]
# the 384 x 384 patch sin-cos table of the real config (7 s to build here) is cropped to a 64 px image's 4 x 4 patches
SMALL_POSITION_TABLE = {"pos_embed_max_size": 16}


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> real_width.WidthCheck:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the suite's single thread suits tiny models; these matmuls are large
    try:
        check, _ = real_width.check_width(MEDIUM, tmp_path_factory.mktemp("medium"), precision="no",
                                          transformer=SMALL_POSITION_TABLE)
    finally:
        torch.set_num_threads(threads)
    return check


def _medium_config() -> dict:
    return json.loads((config_folder(MEDIUM.base) / "transformer" / "config.json").read_text())


def test_one_step_at_real_width_is_finite_with_a_gradient_for_every_trainable(medium):
    assert medium.shapes == {"state": (2, 16, 8, 8), "velocity": (2, 16, 8, 8), "samples": (2, 3, 64, 64)}
    assert math.isfinite(medium.loss) and medium.skipped_steps == 0
    # block 0: 8 LoRA layers; block 1 (context_pre_only): no to_add_out, add_q_proj left out; 2 tensors each
    lora = [n for n in medium.gradients if not n.startswith("preference.")]
    assert len(lora) == 2 * (8 + 6)
    assert not any(".1.attn.add_q_proj." in n for n in lora)
    assert len(medium.gradients) - len(lora) == 14  # global MLP 2 layers, block projector 5, weight and bias each
    assert medium.no_gradient == []


def test_the_unreachable_layer_is_excluded_and_carries_no_lora(medium):
    assert medium.excluded == ("transformer_blocks.1.attn.add_q_proj",)
    assert medium.file.lora.exclude_modules == medium.excluded
    assert medium.still_trained == []


def test_the_written_file_has_the_computed_size(medium):
    assert medium.file_bytes == medium.computed_bytes


def test_full_depth_counts_are_the_configs_arithmetic(medium):
    config = _medium_config()
    depth = real_width.check_depth(MEDIUM, medium.file)
    layers, width, rank = config["num_layers"], config["num_attention_heads"] * config["attention_head_dim"], 32
    assert config["caption_projection_dim"] == width  # so every targeted layer is width -> width
    # 8 attention projections per block; the last block has no to_add_out and leaves add_q_proj out
    assert depth.lora_params == rank * 2 * width * (8 * (layers - 1) + 6)
    assert depth.excluded == (f"transformer_blocks.{layers - 1}.attn.add_q_proj",)
    rewards, encoding, block_pe = 2, 2 * 2 * 1, 768  # sin and cos of 1 frequency per reward
    global_mlp = rewards * width + width + width * width + width
    block = encoding * block_pe + block_pe + block_pe * width + width + 3 * (width * width + width)
    assert depth.module_params == global_mlp + block
    header = depth.file_bytes - 4 * (depth.lora_params + depth.module_params)
    assert 8 < header < 200_000  # 8-byte length, JSON header (380 LoRA keys, 14 module keys, metadata)


def test_saved_file_size_equals_the_written_file_also_from_meta(tmp_path):
    adapter = get_backbone("sd3")
    transformer = adapter.tiny_pipeline(seed=0).transformer
    lora = LoraSpec(4, 8.0, adapter.lora_target_modules)
    training = {"note": "quotes \" and backslashes \\ and non-ASCII é survive", "steps": [1, 2]}
    slider = ParetoSlider.attach(transformer, "sd3", ["brightness", "saturation"], lora=lora, base_model="a/b")
    written = slider.save(tmp_path / "tiny.safetensors", training).stat().st_size
    assert saved_file_size(slider.to_file(training)) == written
    with torch.device("meta"):
        on_meta = type(transformer).from_config(transformer.config)
    meta_slider = ParetoSlider.attach(on_meta, "sd3", ["brightness", "saturation"], lora=lora, base_model="a/b")
    real_width.materialise_trainables(meta_slider)
    assert next(on_meta.parameters()).is_meta
    assert saved_file_size(meta_slider.to_file(training)) == written
    assert saved_file_size(meta_slider.to_file({**training, "x": 1})) != written


@pytest.mark.comfyui
@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="set COMFYUI_PATH to a ComfyUI checkout")
def test_comfyui_maps_every_full_depth_lora_key_and_reports_the_ones_it_does_not(tmp_path, monkeypatch):
    from test_comfyui_integration import subprocess_env, write_torchvision_stub

    monkeypatch.setenv("PYTHONPATH", subprocess_env(write_torchvision_stub(tmp_path / "stub"))["PYTHONPATH"])
    cases = {}
    for name in ("sd35-medium", "kontext"):
        real = CONFIGS[name]
        adapter = real.adapter()
        template = ParetoSlider.attach(adapter.tiny_pipeline(seed=0).transformer, adapter.name, ["a", "b"],
                                       lora=LoraSpec(32, 64.0, adapter.lora_target_modules)).to_file()
        cases[name] = real_width.check_depth(real, template)
    # Medium's last block has no attn2 (MMDiT-X only in blocks 0-12): ComfyUI's key map names it, the model lacks it
    planted = {"transformer.transformer_blocks.23.attn2.to_q.lora_A.weight": [32, 1536],
               "transformer.transformer_blocks.23.attn2.to_q.lora_B.weight": [1536, 32]}
    cases["sd35-medium"].lora_shapes.update(planted)
    results = real_width.comfyui_unmapped(cases, tmp_path)
    assert results["sd35-medium"]["model"] == "SD3"
    assert results["sd35-medium"]["unet_config"]["x_block_self_attn_layers"] == list(range(13))
    assert results["sd35-medium"]["unmapped"] == sorted(planted)
    assert results["kontext"]["model"] == "Flux" and results["kontext"]["unmapped"] == []
    assert len(cases["kontext"].lora_shapes) == 2 * (19 * 8 + 38 * 4)


def test_the_benchmark_refuses_unknown_configs_naming_the_known_ones():
    result = CliRunner().invoke(real_width.main, ["--configs", "sd35-xl"])
    assert result.exit_code == 2 and "sd35-xl" in result.output and "sd35-medium" in result.output
