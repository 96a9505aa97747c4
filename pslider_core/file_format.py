"""The ParetoSlider file: one .safetensors with the LoRA, the preference modules and JSON metadata.

Keys: LoRA tensors under the backbone's prefix (`transformer.` / `diffusion_model.`), modules under
`pareto_slider.`; metadata key `pareto_slider` holds the JSON that rebuilds everything without the trainer.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .backbones import available_backbones, get_backbone
from .lora import LoraSpec, lora_modules
from .modules import PreferenceModuleConfig, PreferenceModules
from .preference import PreferenceSpec

FORMAT_VERSION = 1
METADATA_KEY = "pareto_slider"
MODULE_PREFIX = "pareto_slider."


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

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "backbone": self.backbone,
            "base_model": self.base_model,
            "reward_names": list(self.spec.reward_names),
            "reward_descriptions": list(self.spec.reward_descriptions),
            "module_config": self.module_config.to_dict(),
            "lora": self.lora.to_dict() if self.lora is not None else None,
            "training": self.training,
        }

    def build_modules(self) -> PreferenceModules:
        """Preference modules with this file's weights (float32, CPU, eval mode)."""
        modules = PreferenceModules(self.module_config)
        modules.load_state_dict(self.module_state, strict=True)
        return modules.eval()


def save_pareto_slider(path: str | os.PathLike, data: ParetoSliderFile) -> Path:
    """Write atomically (temp file in the same folder + rename): a crash never leaves a half-written file."""
    path = Path(path)
    tensors = {MODULE_PREFIX + k: v.detach().float().cpu().contiguous() for k, v in data.module_state.items()}
    for key, value in data.lora_state.items():
        if key.startswith(MODULE_PREFIX):
            raise ParetoSliderFileError(f"LoRA key {key!r} collides with the module prefix {MODULE_PREFIX!r}.")
        tensors[key] = value.detach().float().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(data.metadata())})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_header(path: str | os.PathLike, expected_backbone: str | None = None) -> dict[str, Any]:
    """The ParetoSlider metadata alone (cheap: reads the safetensors header, no tensors), checked to be for
    `expected_backbone` when given, so a wrong file fails before any model loads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No ParetoSlider file at {str(path)!r}; check the path.")
    try:
        with open(path, "rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise ParetoSliderFileError(f"{path.name} is not a safetensors file (only {len(raw_len)} bytes).")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(100_000_000, path.stat().st_size - 8):
                raise ParetoSliderFileError(
                    f"{path.name} is not a safetensors file or is truncated (header length {header_len})."
                )
            header = json.loads(handle.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ParetoSliderFileError(f"{path.name} is not a safetensors file: its header is not JSON ({err}).") from None
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise ParetoSliderFileError(
            f"{path.name} is a safetensors file without ParetoSlider metadata (a plain LoRA or model?). "
            "Load plain LoRAs with a LoRA loader; ParetoSlider files are written by pslider-train."
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ParetoSliderFileError(f"{path.name}: the '{METADATA_KEY}' metadata is not valid JSON ({err}).") from None
    _check_metadata(meta, path.name)
    if expected_backbone is not None and meta["backbone"] != expected_backbone:
        raise ParetoSliderFileError(
            f"{path.name} was trained for backbone {meta['backbone']!r}, not {expected_backbone!r}: use it with a "
            f"{meta['backbone']} base model (--backbone {meta['backbone']}), or pick a file trained on "
            f"{expected_backbone}."
        )
    return meta


def _check_metadata(meta: dict[str, Any], name: str) -> None:
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ParetoSliderFileError(f"{name}: format_version must be a positive integer, got {version!r}.")
    if version > FORMAT_VERSION:
        raise ParetoSliderFileError(
            f"{name} uses ParetoSlider file format {version}, newer than this version reads ({FORMAT_VERSION}); "
            "upgrade pareto-slider."
        )
    for key in ("backbone", "reward_names", "module_config"):
        if key not in meta:
            raise ParetoSliderFileError(f"{name}: the metadata lacks {key!r}; the file is damaged or not ours.")
    if meta["backbone"] not in available_backbones():
        raise ParetoSliderFileError(
            f"{name} was trained for backbone {meta['backbone']!r}, which this version does not know "
            f"(known: {available_backbones()}); upgrade pareto-slider."
        )


def load_pareto_slider(path: str | os.PathLike, expected_backbone: str | None = None) -> ParetoSliderFile:
    """Read and validate a file; every failure is a `ParetoSliderFileError` (or FileNotFoundError) saying why."""
    path = Path(path)
    meta = read_header(path, expected_backbone)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ParetoSliderFileError(f"{path.name} is damaged or truncated: {err}.") from None
    try:
        spec = PreferenceSpec(tuple(meta["reward_names"]), tuple(meta.get("reward_descriptions") or ()))
        module_config = PreferenceModuleConfig.from_dict(meta["module_config"])
        lora = LoraSpec.from_dict(meta["lora"]) if meta.get("lora") else None
    except (TypeError, ValueError, KeyError) as err:
        raise ParetoSliderFileError(f"{path.name}: invalid metadata: {err}") from None
    if module_config.num_rewards != spec.num_rewards:
        raise ParetoSliderFileError(
            f"{path.name}: modules are built for {module_config.num_rewards} rewards but the file names "
            f"{spec.num_rewards} ({list(spec.reward_names)})."
        )
    module_state = {k[len(MODULE_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODULE_PREFIX)}
    lora_state = {k: v for k, v in tensors.items() if not k.startswith(MODULE_PREFIX)}
    data = ParetoSliderFile(
        backbone=meta["backbone"], base_model=str(meta.get("base_model", "")), spec=spec,
        module_config=module_config, module_state=module_state, lora=lora, lora_state=lora_state,
        training=dict(meta.get("training") or {}), format_version=meta["format_version"],
    )
    _check_tensors(data, path.name)
    return data


def _check_tensors(data: ParetoSliderFile, name: str) -> None:
    expected = PreferenceModules(data.module_config).state_dict()
    missing = sorted(set(expected) - set(data.module_state))
    extra = sorted(set(data.module_state) - set(expected))
    if missing or extra:
        raise ParetoSliderFileError(
            f"{name}: preference-module tensors do not match its module_config "
            f"(missing {missing[:4]}, unexpected {extra[:4]}); the file is damaged or was edited."
        )
    for key, ref in expected.items():
        if tuple(data.module_state[key].shape) != tuple(ref.shape):
            raise ParetoSliderFileError(
                f"{name}: tensor {MODULE_PREFIX}{key} has shape {tuple(data.module_state[key].shape)}, "
                f"expected {tuple(ref.shape)} from its module_config."
            )
    prefix = get_backbone(data.backbone).lora_key_prefix
    try:
        lora_modules(data.lora_state, prefix)
    except ValueError as err:
        raise ParetoSliderFileError(f"{name}: {err}") from None
