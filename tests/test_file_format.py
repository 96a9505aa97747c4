"""The ParetoSlider file: round trips, stock-loader compatibility of the LoRA part, and every malformed case."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch
from helpers import randomize_, transformer_inputs
from safetensors import safe_open
from safetensors.torch import save_file

from pslider_core import (
    LoraSpec,
    ParetoSlider,
    ParetoSliderFileError,
    PreferenceModuleConfig,
    PreferenceModules,
    get_backbone,
    load_pareto_slider,
    read_header,
)
from pslider_core.file_format import METADATA_KEY, MODULE_PREFIX, module_tensor_shapes

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
@pytest.fixture(scope="module")
def pristine_file(tmp_path_factory):
    return _trained_file("sd3", tmp_path_factory.mktemp("pristine"))[2]


@pytest.fixture
def good_file(pristine_file, tmp_path):
    return Path(shutil.copy(pristine_file, tmp_path / pristine_file.name))


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


def test_foreign_model_file_is_named_as_such(tmp_path):
    """A checkpoint with int tensors is 'not ours' first, not 'an int tensor where floats belong'."""
    path = tmp_path / "model.safetensors"
    save_file({"steps": torch.zeros(1, dtype=torch.int64), "w": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ParetoSliderFileError, match="without ParetoSlider metadata"):
        read_header(path)


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


def test_atomic_save_leaves_no_temp_files(pristine_file):
    assert [p.name for p in pristine_file.parent.iterdir()] == [pristine_file.name]


# --------------------------------------------------------------------------- hostile files (fuzzed: test_file_fuzz.py)
def _edit_meta(path, keys: tuple[str, ...], value) -> None:
    """Set one (possibly nested) metadata field, tensors unchanged."""
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
        data = {k: handle.get_tensor(k) for k in handle.keys()}
    target = meta
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    save_file(data, str(path), metadata={METADATA_KEY: json.dumps(meta)})


@pytest.mark.parametrize(
    ("keys", "value", "named"),
    [
        (("lora",), -1, "'lora'"),
        (("training",), 1.5, "'training'"),
        (("module_config", "inner_dim"), 2.5, "inner_dim"),
        (("module_config", "inner_dim"), 10**9, "inner_dim"),
        (("module_config", "num_freqs"), 10**9, "num_freqs"),
        (("module_config", "block_pe_dim"), 1e9, "block_pe_dim"),
        (("module_config", "block_layers"), True, "block_layers"),
        (("module_config", "mode"), ["global"], "conditioning mode"),
        (("lora", "alpha"), math.nan, "alpha"),
        (("lora", "rank"), 4.0, "rank"),
        (("lora", "target_modules"), [1], "target_modules"),
        (("reward_names",), ["photo", ""], "'reward_names'"),
        (("reward_descriptions",), "looks real", "'reward_descriptions'"),
        (("base_model",), 3, "'base_model'"),
        (("format_version",), "1", "'format_version'"),
    ],
)
def test_metadata_of_the_wrong_type_or_range_is_refused_naming_the_field(good_file, keys, value, named):
    """The fuzz's first findings: each was a traceback (AttributeError, TypeError) or a huge allocation."""
    _edit_meta(good_file, keys, value)
    for read in (read_header, load_pareto_slider):
        with pytest.raises(ParetoSliderFileError, match="re-export it with pslider-train") as err:
            read(good_file)
        assert named in str(err.value)


def test_lora_tensors_need_lora_metadata_of_their_rank(good_file):
    _edit_meta(good_file, ("lora",), None)
    with pytest.raises(ParetoSliderFileError, match="holds LoRA tensors .* 'lora' is null"):
        read_header(good_file)
    _edit_meta(good_file, ("lora",), {"rank": 3, "alpha": 8.0, "target_modules": ["attn.to_q"]})
    with pytest.raises(ParetoSliderFileError, match=r"'lora.rank' is 3 but its LoRA tensors have rank \[4\]"):
        read_header(good_file)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_tensors_are_refused(good_file, bad):
    key = MODULE_PREFIX + "global_mlp.2.weight"
    with safe_open(str(good_file), framework="pt") as handle:
        tensor = handle.get_tensor(key)
    tensor.view(-1)[7] = bad
    _rewrite(good_file, tensors={key: tensor})
    read_header(good_file)  # the header alone is fine
    with pytest.raises(ParetoSliderFileError, match="global_mlp.2.weight' holds NaN or infinite values"):
        load_pareto_slider(good_file)


def _edit_header(path, edit) -> None:
    """Apply `edit` to the raw safetensors header (a dict), the tensor bytes unchanged."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h[MODULE_PREFIX + "global_mlp.0.bias"].update(dtype="I32"), "dtype 'I32', but ParetoSlider tensors"),
        (lambda h: h[MODULE_PREFIX + "global_mlp.0.bias"].update(shape=[10**9, 10**9]), "takes 4000000000000000000"),
        (lambda h: h[MODULE_PREFIX + "global_mlp.0.bias"].update(data_offsets=[0, 10**12]), "invalid data_offsets"),
        (lambda h: h.pop(MODULE_PREFIX + "global_mlp.0.bias"), "overlap or leave a gap"),
        (lambda h: h.update(__metadata__=[]), "__metadata__ is not a map of strings"),
    ],
)
def test_header_tensor_entries_are_checked_before_any_tensor_is_read(good_file, edit, message):
    _edit_header(good_file, edit)
    with pytest.raises(ParetoSliderFileError, match=message):
        read_header(good_file)


@pytest.mark.parametrize(
    "config",
    [
        PreferenceModuleConfig(num_rewards=2, inner_dim=8),
        PreferenceModuleConfig(num_rewards=3, inner_dim=16, num_freqs=3, block_pe_dim=12, block_layers=1),
        PreferenceModuleConfig(num_rewards=1, inner_dim=4, block_pe_dim=5, block_layers=6),
        PreferenceModuleConfig(num_rewards=4, inner_dim=8, mode="global"),
    ],
)
def test_module_tensor_shapes_are_those_of_the_built_modules(config):
    built = {k: tuple(v.shape) for k, v in PreferenceModules(config).state_dict().items()}
    assert module_tensor_shapes(config) == built


def test_building_modules_checks_the_weights_first(good_file):
    data = load_pareto_slider(good_file)
    data.module_config = PreferenceModuleConfig(num_rewards=2, inner_dim=65536)  # 16 GiB if built
    with pytest.raises(ParetoSliderFileError, match="global_mlp.0.weight has shape"):
        data.build_modules()


@pytest.mark.parametrize("value", [2.5, 8.0, True, "8", 0, 65537])
def test_module_config_takes_only_integers_in_range(value):
    with pytest.raises(ValueError, match="inner_dim must be an integer from 1 to 65536"):
        PreferenceModuleConfig(num_rewards=2, inner_dim=value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([4], "must be a JSON object"),
        ({"rank": 4.0, "alpha": 8}, "rank must be an integer"),
        ({"rank": 4, "alpha": 10**400}, "alpha must be a finite number"),
        ({"rank": 4, "alpha": -1.0}, "alpha must be a finite number"),
        ({"rank": 4, "alpha": 8, "target_modules": "attn"}, None),
        ({"rank": 4, "alpha": 8, "target_modules": [None]}, "target_modules must be a string or a list of strings"),
        ({"rank": 4, "alpha": 8, "exclude_modules": "a.b"}, "exclude_modules must be a list of strings"),
    ],
)
def test_lora_spec_from_dict_checks_types(data, message):
    if message is None:
        assert LoraSpec.from_dict(data) == LoraSpec(4, 8.0, "attn")
        spec = LoraSpec(4, 8.0, ("attn.to_q",), ("blocks.1.attn.to_q",))
        assert LoraSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    else:
        with pytest.raises(ValueError, match=message):
            LoraSpec.from_dict(data)
