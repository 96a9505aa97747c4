"""The ParetoSlider file: one .safetensors with the LoRA, the preference modules and JSON metadata.

Keys: LoRA tensors under the backbone's prefix (`transformer.` / `diffusion_model.`), modules under
`pareto_slider.`; metadata key `pareto_slider` holds the JSON that rebuilds everything without the trainer.

Files come from anywhere (downloads, shared folders of a long-lived ComfyUI server), so everything is checked
before anything is built from it: the safetensors header (tensor entries inside the file), the metadata schema
(types, ranges) and the tensors against the metadata (names, shapes, float dtypes, finite values). Shapes are
compared by arithmetic, never by building the modules, so a hostile config cannot make the loader allocate more
than the file holds. Every refusal is a `ParetoSliderFileError` naming the field and the fix.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_file
from .backbones import available_backbones, get_backbone
from .lora import LoraSpec, lora_modules
from .module_config import CONFIG_LIMITS, PreferenceModuleConfig
from .modules import PreferenceModules
from .preference import PreferenceSpec

FORMAT_VERSION = 2  # 2: module_config.reward_ranks (a w-conditioned LoRA); files without it are still written as 1
REWARD_RANKS_VERSION = 2
METADATA_KEY = "pareto_slider"
MODULE_PREFIX = "pareto_slider."
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_TENSORS = 65536  # a LoRA on every linear layer of the largest backbone holds a few thousand
MAX_TENSOR_DIMS = 8
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}

_DAMAGED = "the file is damaged or truncated: download or copy it again"
_EDITED = "the file is damaged or was edited: download it again, or re-export it with pslider-train"

_REPR = reprlib.Repr()  # values from a hostile file can be megabytes long: messages show their start
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 160, 80, 8, 8
_short = _REPR.repr


class ParetoSliderFileError(ValueError):
    """A file that cannot be used as a ParetoSlider file; the message says why and what to do."""


@dataclass
class ParetoSliderFile:
    """Everything a ParetoSlider file holds, in memory."""

    backbone: str
    base_model: str
    spec: PreferenceSpec
    module_config: PreferenceModuleConfig
    module_state: dict[str, torch.Tensor]
    lora: LoraSpec | None = None
    lora_state: dict[str, torch.Tensor] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def reward_names(self) -> tuple[str, ...]:
        return self.spec.reward_names

    @property
    def written_version(self) -> int:
        """The oldest format that holds this file: readers of format 1 would apply a w-conditioned LoRA as a plain
        one, so only files that have one say 2 (and older readers refuse them)."""
        return REWARD_RANKS_VERSION if self.module_config.reward_ranks else 1

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": self.written_version,
            "backbone": self.backbone,
            "base_model": self.base_model,
            "reward_names": list(self.spec.reward_names),
            "reward_descriptions": list(self.spec.reward_descriptions),
            "module_config": self.module_config.to_dict(),
            "lora": self.lora.to_dict() if self.lora is not None else None,
            "training": self.training,
        }

    def build_modules(self) -> PreferenceModules:
        """Preference modules with this file's weights (float32, CPU, eval mode). The weights are checked against
        the config first: building allocates whatever the config asks for."""
        _check_module_state(self.module_config, self.module_state, "the ParetoSlider file")
        modules = PreferenceModules(self.module_config)
        modules.load_state_dict(self.module_state, strict=True)
        return modules.eval()


def save_pareto_slider(path: str | os.PathLike, data: ParetoSliderFile) -> Path:
    """Write atomically (temp file in the same folder + rename): a crash never leaves a half-written file, and the
    file's mode follows the umask, so a ComfyUI running as another user can read it."""
    path = Path(path)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in _file_tensors(data).items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=_file_metadata(data))
    return path


def saved_file_size(data: ParetoSliderFile) -> int:
    """Bytes `save_pareto_slider` writes for `data`, from the tensors' shapes alone (meta tensors will do, so
    full-size models need no memory): safetensors' layout is an 8-byte header length, the JSON header (the metadata,
    then every tensor as float32 in name order with its data offsets) padded with spaces to a multiple of 8, then
    the tensor data."""
    entries: dict[str, Any] = {"__metadata__": _file_metadata(data)}
    offset = 0
    for key, tensor in sorted(_file_tensors(data).items()):
        size = tensor.numel() * 4
        entries[key] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = len(json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode())
    return 8 + header + -header % 8 + offset


def _file_tensors(data: ParetoSliderFile) -> dict[str, torch.Tensor]:
    """The file's tensors under their keys (modules under MODULE_PREFIX, the LoRA's as given), not yet copied."""
    tensors = {MODULE_PREFIX + k: v for k, v in data.module_state.items()}
    for key, value in data.lora_state.items():
        if key.startswith(MODULE_PREFIX):
            raise ParetoSliderFileError(f"LoRA key {key!r} collides with the module prefix {MODULE_PREFIX!r}.")
        tensors[key] = value
    return tensors


def _file_metadata(data: ParetoSliderFile) -> dict[str, str]:
    return {METADATA_KEY: json.dumps(data.metadata())}


def read_header(path: str | os.PathLike, expected_backbone: str | None = None) -> dict[str, Any]:
    """The ParetoSlider metadata (cheap: reads the safetensors header, no tensor data), validated in full against
    the header's tensor entries and checked to be for `expected_backbone` when given, so a wrong or damaged file
    fails before any model loads. Raises only `ParetoSliderFileError` and FileNotFoundError."""
    return _read_header(Path(path), expected_backbone)[0]


def load_pareto_slider(path: str | os.PathLike, expected_backbone: str | None = None) -> ParetoSliderFile:
    """Read and validate a file; every failure is a `ParetoSliderFileError` (or FileNotFoundError) saying why."""
    path = Path(path)
    _, data = _read_header(path, expected_backbone)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ParetoSliderFileError(f"{path.name}: its tensors cannot be read ({_clip(err)}); {_DAMAGED}.") from None
    data.module_state, data.lora_state = _split_state(tensors)
    _check_tensors(data, path.name)  # again on the real tensors: the file may have changed since its header was read
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ParetoSliderFileError(
                f"{path.name}: tensor {_short(key)} holds NaN or infinite values (a diverged training run, or damage); "
                "use an earlier checkpoint of the run, or download the file again."
            )
    return data


def module_tensor_shapes(config: PreferenceModuleConfig) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes of `PreferenceModules(config)`, by arithmetic: checking tensors against a config must
    not allocate what the config asks for."""
    m, d = config.num_rewards, config.inner_dim
    shapes = {"global_mlp.0.weight": (d, m), "global_mlp.0.bias": (d,),
              "global_mlp.2.weight": (d, d), "global_mlp.2.bias": (d,)}
    if config.mode == "global+block":  # encoding (0), Linear (1), block_layers x [Linear, ReLU], last Linear
        shapes["block_projector.1.weight"] = (config.block_pe_dim, 2 * m * config.num_freqs)
        shapes["block_projector.1.bias"] = (config.block_pe_dim,)
        width = config.block_pe_dim
        for i in range(config.block_layers):
            shapes[f"block_projector.{2 + 2 * i}.weight"] = (d, width)
            shapes[f"block_projector.{2 + 2 * i}.bias"] = (d,)
            width = d
    return shapes


def _read_header(path: Path, expected_backbone: str | None) -> tuple[dict[str, Any], ParetoSliderFile]:
    """(metadata, the file's contents with meta-device tensors): everything that can be checked without reading
    tensor data, in the order that best explains a bad file (not safetensors, not ours, newer, invalid metadata,
    other backbone, then the tensors)."""
    header, data_size = _safetensors_header(path)
    meta = _metadata_json(header, path.name)
    data = _parse_metadata(meta, path.name)
    if expected_backbone is not None and data.backbone != expected_backbone:
        raise ParetoSliderFileError(
            f"{path.name} was trained for backbone {data.backbone!r}, not {expected_backbone!r}: use it with a "
            f"{data.backbone} base model (--backbone {data.backbone}), or pick a file trained on "
            f"{expected_backbone}."
        )
    data.module_state, data.lora_state = _split_state(_tensor_layout(header, data_size, path.name))
    _check_tensors(data, path.name)
    return meta, data


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """(the header's JSON object, the number of tensor-data bytes after it)."""
    if not path.is_file():
        raise FileNotFoundError(f"No ParetoSlider file at {str(path)!r}; check the path.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise ParetoSliderFileError(f"{path.name} is not a safetensors file (only {len(raw_len)} bytes).")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise ParetoSliderFileError(
                    f"{path.name} is not a safetensors file or is truncated (header length {header_len}, file size "
                    f"{size}); {_DAMAGED}."
                )
            raw = handle.read(header_len)
    except OSError as err:
        raise ParetoSliderFileError(f"{path.name} cannot be read ({err}); check its permissions and the disk.") \
            from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ParetoSliderFileError(
            f"{path.name} is not a safetensors file: its header is not UTF-8 text; {_DAMAGED}."
        ) from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, over-long numbers, too deep nesting
        raise ParetoSliderFileError(
            f"{path.name} is not a safetensors file: its header is not JSON ({_clip(err)}); {_DAMAGED}."
        ) from None
    if not isinstance(header, dict) or not raw.startswith(b"{"):  # safetensors refuses anything else
        raise ParetoSliderFileError(
            f"{path.name} is not a safetensors file: its header is not a JSON object; {_DAMAGED}."
        )
    return header, size - 8 - header_len


def _tensor_layout(header: dict[str, Any], data_size: int, name: str) -> dict[str, torch.Tensor]:
    """The header's tensor entries as meta-device tensors (shape and dtype, no data), each checked to be a float
    tensor whose bytes lie in the file, the entries covering the data exactly as safetensors requires."""
    count = len(header) - ("__metadata__" in header)
    if count > MAX_TENSORS:
        raise ParetoSliderFileError(
            f"{name}: its header lists {count} tensors, more than a ParetoSlider file holds ({MAX_TENSORS}); {_EDITED}."
        )
    layout: dict[str, torch.Tensor] = {}
    spans: list[tuple[int, int, str]] = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        where = f"{name}: tensor {_short(key)}"
        if not _is_text(key) or not isinstance(entry, dict):
            raise ParetoSliderFileError(f"{where} has an invalid header entry; {_DAMAGED}.")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:
            raise ParetoSliderFileError(
                f"{where} has dtype {_short(dtype)}, but ParetoSlider tensors are float "
                f"({', '.join(FLOAT_DTYPES)}); {_EDITED}."
            )
        if not (isinstance(shape, list) and len(shape) <= MAX_TENSOR_DIMS
                and all(_is_int(n) and n >= 0 for n in shape)):
            raise ParetoSliderFileError(f"{where} has an invalid shape {_short(shape)}; {_DAMAGED}.")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise ParetoSliderFileError(
                f"{where} has invalid data_offsets {_short(offsets)} (the file holds {data_size} bytes of tensor "
                f"data); {_DAMAGED}."
            )
        nbytes = math.prod(shape) * FLOAT_DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise ParetoSliderFileError(
                f"{where}: shape {shape} in {dtype} takes {nbytes} bytes but its data_offsets span "
                f"{offsets[1] - offsets[0]}; {_DAMAGED}."
            )
        spans.append((offsets[0], offsets[1], key))
        layout[key] = torch.empty(shape, dtype=FLOAT_DTYPES[dtype], device="meta")
    end = 0
    for begin, stop, key in sorted(spans):
        if begin != end:
            raise ParetoSliderFileError(
                f"{name}: the data of tensor {_short(key)} starts at byte {begin}, not {end} (tensors overlap "
                f"or leave a gap); {_DAMAGED}."
            )
        end = stop
    if end != data_size:
        raise ParetoSliderFileError(
            f"{name}: its header describes {end} bytes of tensor data but the file holds {data_size}; {_DAMAGED}."
        )
    return layout


def _metadata_json(header: dict[str, Any], name: str) -> dict[str, Any]:
    """The parsed JSON under the header's `__metadata__` key `pareto_slider`."""
    extra = header.get("__metadata__")
    if extra is not None and not (isinstance(extra, dict) and all(map(_is_text, [*extra, *extra.values()]))):
        raise ParetoSliderFileError(f"{name}: its safetensors __metadata__ is not a map of strings; {_DAMAGED}.")
    raw = (extra or {}).get(METADATA_KEY)
    if raw is None:
        raise ParetoSliderFileError(
            f"{name} is a safetensors file without ParetoSlider metadata (a plain LoRA or model?). "
            "Load plain LoRAs with a LoRA loader; ParetoSlider files are written by pslider-train."
        )
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise ParetoSliderFileError(
            f"{name}: the '{METADATA_KEY}' metadata is not valid JSON ({_clip(err)}); {_EDITED}."
        ) from None
    if not isinstance(meta, dict):
        raise ParetoSliderFileError(f"{name}: the '{METADATA_KEY}' metadata is not a JSON object; {_EDITED}.")
    return meta


def _parse_metadata(meta: dict[str, Any], name: str) -> ParetoSliderFile:
    """The file's contents as the metadata describes them (no tensors yet), every field type- and range-checked.
    Optional fields (base_model, reward_descriptions, lora, training) may be absent or null."""
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        raise _wrong_type(name, "format_version", "a positive integer", version)
    if version > FORMAT_VERSION:
        raise ParetoSliderFileError(
            f"{name} uses ParetoSlider file format {version}, newer than this version reads ({FORMAT_VERSION}); "
            "upgrade pareto-slider."
        )
    for key in ("backbone", "reward_names", "module_config"):
        if key not in meta:
            raise ParetoSliderFileError(f"{name}: the metadata lacks {key!r}; {_EDITED}.")
    backbone = meta["backbone"]
    if not _is_text(backbone):
        raise _wrong_type(name, "backbone", "a string", backbone)
    if backbone not in available_backbones():
        raise ParetoSliderFileError(
            f"{name} was trained for backbone {_short(backbone)}, which this version does not know "
            f"(known: {available_backbones()}); upgrade pareto-slider."
        )
    base_model = _optional(meta, "base_model", "")
    if not _is_text(base_model):
        raise _wrong_type(name, "base_model", "a string", base_model)
    names, descriptions = meta["reward_names"], _optional(meta, "reward_descriptions", [])
    limit = CONFIG_LIMITS["num_rewards"]
    if not (isinstance(names, list) and 1 <= len(names) <= limit and all(_is_text(n) and n.strip() for n in names)):
        raise _wrong_type(name, "reward_names", f"a list of 1 to {limit} non-empty strings", names)
    if not (isinstance(descriptions, list) and len(descriptions) in (0, len(names))
            and all(map(_is_text, descriptions))):
        raise _wrong_type(name, "reward_descriptions", f"a list of {len(names)} strings (one per reward) or empty",
                          descriptions)
    try:
        spec = PreferenceSpec(tuple(names), tuple(descriptions))
    except ValueError as err:
        raise _invalid(name, "reward_names", err) from None
    try:
        module_config = PreferenceModuleConfig.from_dict(meta["module_config"])
    except ValueError as err:
        raise _invalid(name, "module_config", err) from None
    if module_config.num_rewards != spec.num_rewards:
        raise ParetoSliderFileError(
            f"{name}: modules are built for {module_config.num_rewards} rewards but the file names "
            f"{spec.num_rewards} ({_short(list(spec.reward_names))}); {_EDITED}."
        )
    lora_meta = _optional(meta, "lora", None)
    try:
        lora = None if lora_meta is None else LoraSpec.from_dict(lora_meta)
    except ValueError as err:
        raise _invalid(name, "lora", err) from None
    if module_config.reward_ranks:
        if version < REWARD_RANKS_VERSION:
            raise ParetoSliderFileError(
                f"{name} says format {version}, which cannot hold module_config.reward_ranks "
                f"({module_config.reward_ranks}); {_EDITED}."
            )
        try:
            module_config.check_lora_rank(lora.rank if lora is not None else 0)
        except ValueError as err:
            raise _invalid(name, "module_config", err) from None
    training = _optional(meta, "training", {})
    if not isinstance(training, dict):
        raise _wrong_type(name, "training", "a JSON object", training)
    return ParetoSliderFile(
        backbone=backbone, base_model=base_model, spec=spec, module_config=module_config, module_state={},
        lora=lora, lora_state={}, training=training, format_version=version,
    )


def _split_state(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(module state without its prefix, LoRA state with its file keys)."""
    modules = {k[len(MODULE_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODULE_PREFIX)}
    return modules, {k: v for k, v in tensors.items() if not k.startswith(MODULE_PREFIX)}


def _check_tensors(data: ParetoSliderFile, name: str) -> None:
    """The tensors against the metadata (works on meta-device tensors): module names and shapes from the config;
    LoRA keys in pairs of one rank, the metadata's, present exactly when the metadata describes a LoRA."""
    _check_module_state(data.module_config, data.module_state, name)
    try:
        modules = lora_modules(data.lora_state, get_backbone(data.backbone).lora_key_prefix)
    except ValueError as err:
        raise ParetoSliderFileError(f"{name}: {_clip(err)}; {_EDITED}.") from None
    ranks = sorted({a.shape[0] for a, _ in modules.values()})
    if data.lora is None and modules:
        raise ParetoSliderFileError(
            f"{name} holds LoRA tensors (rank {ranks}) but its metadata field 'lora' is null; {_EDITED}."
        )
    if data.lora is not None and ranks != [data.lora.rank]:
        raise ParetoSliderFileError(
            f"{name}: metadata field 'lora.rank' is {data.lora.rank} but its LoRA tensors have rank {ranks or 'none'}; "
            f"{_EDITED}."
        )


def _check_module_state(config: PreferenceModuleConfig, state: dict[str, torch.Tensor], name: str) -> None:
    """Module tensors against the config's arithmetic shapes: what must hold before the modules are built."""
    expected = module_tensor_shapes(config)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ParetoSliderFileError(
            f"{name}: preference-module tensors do not match its module_config "
            f"(missing {_short(missing)}, unexpected {_short(extra)}); {_EDITED}."
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ParetoSliderFileError(
                f"{name}: tensor {MODULE_PREFIX}{key} has shape {tuple(state[key].shape)}, expected {shape} from "
                f"its module_config; {_EDITED}."
            )


def _wrong_type(name: str, field_name: str, wanted: str, got: Any) -> ParetoSliderFileError:
    return ParetoSliderFileError(
        f"{name}: metadata field {field_name!r} must be {wanted}, got {_short(got)}; {_EDITED}."
    )


def _invalid(name: str, field_name: str, err: ValueError) -> ParetoSliderFileError:
    return ParetoSliderFileError(
        f"{name}: metadata field {field_name!r} is invalid: {_clip(err)}; {_EDITED}."
    )


def _clip(err: Exception) -> str:
    """An error's text for a message: its start only (it may quote the file), without the final full stop."""
    text = str(err).rstrip(".")
    return text if len(text) <= 300 else text[:300] + "..."


def _optional(meta: dict[str, Any], key: str, default: Any) -> Any:
    value = meta.get(key)
    return default if value is None else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    """A str that encodes as UTF-8: JSON escapes allow lone surrogates, which break printing, CSV and safetensors."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
