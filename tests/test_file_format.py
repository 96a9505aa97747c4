"""The ParetoSlider file: round trips, stock-loader compatibility of the LoRA part, and every malformed case."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from helpers import randomize_, transformer_inputs
from safetensors import safe_open
from safetensors.torch import save_file

from pslider_core import (
    LoraSpec,
    ParetoSlider,
    ParetoSliderFileError,
    get_backbone,
    load_pareto_slider,
    read_header,
)
from pslider_core.file_format import METADATA_KEY, MODULE_PREFIX

REWARDS = ["photo", "sketch"]


def _trained_file(backbone: str, tmp_path, seed: int = 0):
    """A ParetoSlider with random (so visible) LoRA and module weights, saved to disk."""
    adapter = get_backbone(backbone)
    pipe = adapter.tiny_pipeline(seed=0)
    slider = ParetoSlider.attach(
        pipe.transformer, backbone, REWARDS, reward_descriptions=["looks real", "pencil lines"],
        lora=LoraSpec(4, 8, adapter.lora_target_modules), base_model="tiny",
    )
    randomize_(slider.trainable_parameters(), seed=seed)
    path = slider.save(tmp_path / f"{backbone}.safetensors", training={"epochs": 3})
    return pipe, slider, path


def test_save_load_apply_reproduces_outputs_exactly(backbone, tmp_path):
    pipe, slider, path = _trained_file(backbone, tmp_path)
    adapter = get_backbone(backbone)
    x, sigma, cond = transformer_inputs(backbone, pipe, ["a red circle", "a blue square"])
    fresh = adapter.tiny_pipeline(seed=0)
    loaded = ParetoSlider.from_file(path, fresh.transformer, backbone=backbone)
    assert loaded.spec.reward_names == tuple(REWARDS)
    with torch.no_grad():
        for w in ([1.0, 0.0], [0.25, 0.75]):
            with slider.condition(w):
                want = adapter.predict_velocity(pipe, slider.transformer, x, sigma, cond)
            with loaded.condition(w):
                got = adapter.predict_velocity(fresh, loaded.transformer, x, sigma, cond)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_metadata_and_key_layout(backbone, tmp_path):
    _, slider, path = _trained_file(backbone, tmp_path)
    meta = read_header(path)
    assert meta["format_version"] == 1 and meta["backbone"] == backbone and meta["base_model"] == "tiny"
    assert meta["reward_names"] == REWARDS and meta["reward_descriptions"] == ["looks real", "pencil lines"]
    assert meta["module_config"]["mode"] == "global+block" and meta["lora"]["rank"] == 4
    assert meta["training"] == {"epochs": 3}
    prefix = get_backbone(backbone).lora_key_prefix
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    lora_keys = [k for k in keys if not k.startswith(MODULE_PREFIX)]
    assert lora_keys and all(k.startswith(prefix) and (".lora_A." in k or ".lora_B." in k) for k in lora_keys)
    assert not any(k.endswith(".alpha") for k in keys)


def test_lora_scale_is_folded_into_lora_b(backbone, tmp_path):
    _, slider, path = _trained_file(backbone, tmp_path)
    data = load_pareto_slider(path)
    prefix = slider.adapter.lora_key_prefix
    key_b = next(k for k in data.lora_state if k.endswith("lora_B.weight"))
    module = key_b[len(prefix) : -len(".lora_B.weight")]
    raw_b = slider.transformer.get_submodule(module).lora_B[slider.adapter_name].weight
    torch.testing.assert_close(data.lora_state[key_b], raw_b.detach() * 2.0)  # alpha 8 / rank 4


def test_lora_part_loads_into_stock_diffusers_pipeline(backbone, tmp_path):
    """The file minus pareto_slider.* loads with diffusers' load_lora_weights: no key ignored, right strength."""
    adapter = get_backbone(backbone)
    if not hasattr(adapter.pipeline_class, "load_lora_weights"):
        pytest.skip(f"{backbone} has no diffusers pipeline (its transformer's LoRA layout is tested elsewhere)")
    pipe, slider, path = _trained_file(backbone, tmp_path)
    data = load_pareto_slider(path)
    stock = adapter.tiny_pipeline(seed=0)
    x, sigma, cond = transformer_inputs(backbone, stock, ["a red circle"])
    with torch.no_grad():
        before = adapter.predict_velocity(stock, stock.transformer, x, sigma, cond)
    stock.load_lora_weights(dict(data.lora_state), adapter_name="stock")
    lora_layers = {n for n, m in stock.transformer.named_modules() if hasattr(m, "lora_A") and "stock" in m.lora_A}
    file_modules = {k[len(adapter.lora_key_prefix) : -len(".lora_A.weight")] for k in data.lora_state if "lora_A" in k}
    assert lora_layers == file_modules, "some LoRA keys were ignored by diffusers"
    with torch.no_grad():
        after = adapter.predict_velocity(stock, stock.transformer, x, sigma, cond)
        ours = adapter.predict_velocity(pipe, slider.transformer, x, sigma, cond)  # LoRA on, no w hooks
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(after, ours, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- malformed files
@pytest.fixture
def good_file(tmp_path):
    return _trained_file("sd3", tmp_path)[2]


def _rewrite(path, tensors=None, meta_update=None, drop_meta=False):
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
        data = {k: handle.get_tensor(k) for k in handle.keys()}
    meta.update(meta_update or {})
    data.update(tensors or {})
    save_file(data, str(path), metadata=None if drop_meta else {METADATA_KEY: json.dumps(meta)})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No ParetoSlider file"):
        load_pareto_slider(tmp_path / "nope.safetensors")


def test_not_safetensors(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x80\x04this is a pickle, not safetensors" * 10)
    with pytest.raises(ParetoSliderFileError, match="not a safetensors file"):
        load_pareto_slider(path)


def test_truncated(good_file):
    raw = good_file.read_bytes()
    good_file.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ParetoSliderFileError, match="damaged or truncated"):
        load_pareto_slider(good_file)


def test_truncated_inside_header(good_file):
    raw = good_file.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    good_file.write_bytes(raw[: 8 + header_len // 2])
    with pytest.raises(ParetoSliderFileError, match="truncated"):
        load_pareto_slider(good_file)


def test_plain_lora_without_metadata(good_file):
    _rewrite(good_file, drop_meta=True)
    with pytest.raises(ParetoSliderFileError, match="without ParetoSlider metadata"):
        load_pareto_slider(good_file)


def test_future_format_version(good_file):
    _rewrite(good_file, meta_update={"format_version": 99})
    with pytest.raises(ParetoSliderFileError, match="newer than this version reads"):
        load_pareto_slider(good_file)


def test_unknown_backbone(good_file):
    _rewrite(good_file, meta_update={"backbone": "sdxl"})
    with pytest.raises(ParetoSliderFileError, match="'sdxl'.*upgrade"):
        load_pareto_slider(good_file)


def test_module_shapes_not_matching_config(good_file):
    _rewrite(good_file, tensors={MODULE_PREFIX + "global_mlp.0.weight": torch.zeros(5, 3)})
    with pytest.raises(ParetoSliderFileError, match="global_mlp.0.weight has shape"):
        load_pareto_slider(good_file)


def test_reward_count_not_matching_modules(good_file):
    _rewrite(good_file, meta_update={"reward_names": ["a", "b", "c"], "reward_descriptions": []})
    with pytest.raises(ParetoSliderFileError, match="built for 2 rewards"):
        load_pareto_slider(good_file)


def test_lora_pair_incomplete(good_file):
    with safe_open(str(good_file), framework="pt") as handle:
        meta = handle.metadata()
        data = {k: handle.get_tensor(k) for k in handle.keys()}
    del data[next(k for k in data if k.endswith("lora_B.weight"))]
    save_file(data, str(good_file), metadata=meta)
    with pytest.raises(ParetoSliderFileError, match="lacks its lora_B"):
        load_pareto_slider(good_file)


def test_other_base_model_is_refused(good_file):
    adapter = get_backbone("sd3")
    pipe = adapter.tiny_pipeline()
    config = dict(pipe.transformer.config)
    config.update(attention_head_dim=32)  # inner dim 64 instead of 128
    other = type(pipe.transformer).from_config(config)
    with pytest.raises(ParetoSliderFileError, match="different base model"):
        ParetoSlider.from_file(good_file, other)


def test_other_backbone_is_refused(good_file):
    with pytest.raises(ParetoSliderFileError, match="trained for backbone 'sd3', not 'ltx2'"):
        load_pareto_slider(good_file, expected_backbone="ltx2")


def test_atomic_save_leaves_no_temp_files(good_file):
    assert [p.name for p in good_file.parent.iterdir()] == [good_file.name]
