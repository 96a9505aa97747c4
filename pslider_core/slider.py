"""A diffusers transformer with a ParetoSlider attached: LoRA adapter + preference modules + reward spec."""

from __future__ import annotations

import dataclasses
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .backbones import BackboneAdapter, get_backbone
from .conditioning import preference_hooks
from .file_format import ParetoSliderFile, ParetoSliderFileError, load_pareto_slider, save_pareto_slider
from .lora import LoraSpec, add_lora, check_lora_fits, export_lora, full_tensor, load_lora, lora_modules
from .module_config import PreferenceModuleConfig
from .modules import PreferenceModules
from .preference import PreferenceSpec

ADAPTER_NAME = "pareto_slider"


class ParetoSlider:
    """Owns the preference modules and knows which peft adapter on the transformer is its LoRA."""

    def __init__(
        self,
        transformer: nn.Module,
        adapter: BackboneAdapter,
        modules: PreferenceModules,
        spec: PreferenceSpec,
        lora: LoraSpec | None,
        base_model: str = "",
        adapter_name: str = ADAPTER_NAME,
    ) -> None:
        self.transformer = transformer
        self.adapter = adapter
        self.modules = modules
        self.spec = spec
        self.lora = lora
        self.base_model = base_model
        self.adapter_name = adapter_name
        preference_hooks(transformer, adapter)  # registered once, inactive outside `condition`

    # ------------------------------------------------------------------ construction
    @classmethod
    def attach(
        cls,
        transformer: nn.Module,
        backbone: str,
        reward_names: Sequence[str],
        *,
        reward_descriptions: Sequence[str] = (),
        mode: str = "global+block",
        num_freqs: int = 1,
        lora: LoraSpec | None = None,
        reward_ranks: int = 0,
        base_model: str = "",
        adapter_name: str = ADAPTER_NAME,
    ) -> "ParetoSlider":
        """Fresh, trainable: a new LoRA adapter (if `lora`) and zero-initialised modules on `transformer`.

        `reward_ranks` > 0: the LoRA's last `reward_ranks` x M ranks are the rewards', scaled by w
        (`PreferenceModuleConfig.reward_ranks`); `lora.rank` counts them."""
        adapter = get_backbone(backbone)
        spec = PreferenceSpec(tuple(reward_names), tuple(reward_descriptions))
        config = PreferenceModuleConfig(
            num_rewards=spec.num_rewards, inner_dim=adapter.inner_dim(transformer), mode=mode, num_freqs=num_freqs,
            reward_ranks=reward_ranks,
        )
        config.check_lora_rank(lora.rank if lora is not None else 0)
        if lora is not None:
            lora = dataclasses.replace(lora, exclude_modules=tuple(adapter.unreachable_lora_modules(transformer)))
            add_lora(transformer, lora, adapter_name)
        modules = PreferenceModules(config).to(transformer.device)
        return cls(transformer, adapter, modules, spec, lora, base_model, adapter_name)

    @classmethod
    def from_file(
        cls,
        source: str | os.PathLike | ParetoSliderFile,
        transformer: nn.Module,
        backbone: str | None = None,
        adapter_name: str = ADAPTER_NAME,
    ) -> "ParetoSlider":
        """Load a file onto `transformer`, refusing files for another backbone or another base model."""
        data = source if isinstance(source, ParetoSliderFile) else load_pareto_slider(source, backbone)
        if backbone is not None and data.backbone != backbone:
            raise ParetoSliderFileError(
                f"The file was trained for backbone {data.backbone!r} but is applied to a {backbone!r} model."
            )
        adapter = get_backbone(data.backbone)
        check_compatible(data, adapter, transformer)
        if data.lora_state:
            load_lora(transformer, data.lora_state, adapter.lora_key_prefix, adapter_name)
        modules = data.build_modules().to(transformer.device)
        return cls(transformer, adapter, modules, data.spec, data.lora, data.base_model, adapter_name)

    # ------------------------------------------------------------------ use
    def condition(self, weights: Sequence[float] | torch.Tensor) -> AbstractContextManager[None]:
        """Context in which the transformer is conditioned on `weights` (validated, put on the simplex)."""
        return self.adapter.condition(self.transformer, self.modules, self.spec.normalize(weights))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """LoRA parameters of this adapter and all module parameters."""
        for name, param in self.transformer.named_parameters():
            if f".{self.adapter_name}." in name and "lora_" in name:
                yield param
        yield from self.modules.parameters()

    def to_file(self, training: dict[str, Any] | None = None) -> ParetoSliderFile:
        """Whole tensors on the CPU; with FSDP2-sharded weights every process must call it (it gathers them)."""
        lora_state = (
            export_lora(self.transformer, self.lora, self.adapter_name, self.adapter.lora_key_prefix)
            if self.lora is not None else {}
        )
        return ParetoSliderFile(
            backbone=self.adapter.name, base_model=self.base_model, spec=self.spec,
            module_config=self.modules.config,
            module_state={k: full_tensor(v.detach()).float().cpu() for k, v in self.modules.state_dict().items()},
            lora=self.lora, lora_state=lora_state, training=dict(training or {}),
        )

    def save(self, path: str | os.PathLike, training: dict[str, Any] | None = None) -> Path:
        return save_pareto_slider(path, self.to_file(training))


def check_compatible(data: ParetoSliderFile, adapter: BackboneAdapter, transformer: nn.Module) -> None:
    """The file's shapes must match this base model (same inner dim, LoRA layers present with same sizes)."""
    inner = adapter.inner_dim(transformer)
    if data.module_config.inner_dim != inner:
        raise ParetoSliderFileError(
            f"The file's preference modules are {data.module_config.inner_dim} wide but this {adapter.name} "
            f"transformer's inner dim is {inner}: it was trained on a different base model ({data.base_model!r})."
        )
    try:
        check_lora_fits(transformer, lora_modules(data.lora_state, adapter.lora_key_prefix))
    except ValueError as err:
        raise ParetoSliderFileError(f"{err} (file trained on {data.base_model!r}).") from None
