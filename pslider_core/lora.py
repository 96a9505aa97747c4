"""LoRA on the transformer through peft, stored with its scale folded into lora_B.

Stock ComfyUI applies alpha/rank only when `.alpha` tensors exist and diffusers' `load_lora_weights` rejects
them, so the one form both load at the trained strength is alpha == rank with the scale folded into lora_B.
"""

from __future__ import annotations

import re
import reprlib
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # peft is imported where LoRA layers are made or read: the node pack never does
    from peft import LoraConfig

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


@dataclass(frozen=True)
class LoraSpec:
    """Rank, alpha and target modules (suffix names, or one regex string) of the trained LoRA, and the full names of
    targeted layers left out because no gradient can reach them (`BackboneAdapter.unreachable_lora_modules`)."""

    rank: int = 32
    alpha: float = 64.0
    target_modules: tuple[str, ...] | str = ()
    exclude_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"LoRA rank must be >= 1 and alpha > 0; got rank={self.rank}, alpha={self.alpha}.")
        if not isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "exclude_modules", tuple(self.exclude_modules))

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def peft_config(self) -> LoraConfig:
        from peft import LoraConfig

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=targets, init_lora_weights="gaussian",
                          exclude_modules=list(self.exclude_modules) or None)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_modules"] = self.target_modules if isinstance(self.target_modules, str) else list(
            self.target_modules
        )
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "LoraSpec":
        """The spec from its `to_dict` form (a file's metadata), every field type-checked, not coerced."""
        if not isinstance(data, dict):
            raise ValueError(f"A LoRA spec must be a JSON object, got {type(data).__name__}.")
        rank, alpha, targets = data.get("rank"), data.get("alpha"), data.get("target_modules", ())
        excluded = data.get("exclude_modules", ())
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {reprlib.repr(rank)}.")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= sys.float_info.max:
            raise ValueError(f"LoRA alpha must be a finite number > 0, got {reprlib.repr(alpha)}.")
        if not isinstance(targets, str) and not _strings(targets):
            raise ValueError(
                f"LoRA target_modules must be a string or a list of strings, got {reprlib.repr(targets)}."
            )
        if not _strings(excluded):
            raise ValueError(f"LoRA exclude_modules must be a list of strings, got {reprlib.repr(excluded)}.")
        return cls(rank, float(alpha), targets if isinstance(targets, str) else tuple(targets), tuple(excluded))


def _strings(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a parameter that FSDP2 may have sharded (a DTensor): gathering it is a collective, so
    every process must ask for the same tensors in the same order. Plain tensors come back as they are."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def add_lora(transformer: nn.Module, spec: LoraSpec, adapter_name: str) -> None:
    """Add a fresh, trainable LoRA adapter (Gaussian A, zero B: the output is unchanged at first)."""
    transformer.add_adapter(spec.peft_config(), adapter_name=adapter_name)


def export_lora(transformer: nn.Module, spec: LoraSpec, adapter_name: str, key_prefix: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors as file keys `<prefix><module>.lora_A/B.weight`, with alpha/rank folded into B."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise ValueError(f"Unexpected LoRA tensor {key!r}; only plain LoRA (no DoRA, no bias) is supported.")
        value = full_tensor(tensor.detach()).float().cpu()
        out[key_prefix + key] = value * spec.scale if match["part"] == "B" else value.clone()
    return out


def lora_modules(state: dict[str, torch.Tensor], key_prefix: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Group file keys into {module path: (lora_A, lora_B)}, checking pairs and ranks."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _LORA_KEY.match(key[len(key_prefix):]) if key.startswith(key_prefix) else None
        if match is None:
            raise ValueError(f"LoRA key {key!r} is not of the form '{key_prefix}<module>.lora_A|lora_B.weight'.")
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    out = {}
    for module, parts in pairs.items():
        if set(parts) != {"A", "B"}:
            raise ValueError(f"LoRA module {module!r} lacks its lora_{'B' if 'A' in parts else 'A'} tensor.")
        a, b = parts["A"], parts["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA module {module!r} has inconsistent shapes A{tuple(a.shape)} B{tuple(b.shape)}.")
        out[module] = (a, b)
    return out


def check_lora_fits(transformer: nn.Module, modules: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Every LoRA module must exist in the transformer as a Linear with matching in/out features."""
    for name, (a, b) in modules.items():
        try:
            layer = transformer.get_submodule(name)
        except AttributeError:
            raise ValueError(f"The LoRA targets {name!r}, which this transformer does not have.") from None
        layer = getattr(layer, "base_layer", layer)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"The LoRA targets {name!r}, which is a {type(layer).__name__}, not a Linear layer.")
        if (a.shape[1], b.shape[0]) != (layer.in_features, layer.out_features):
            raise ValueError(
                f"LoRA module {name!r} is {a.shape[1]}->{b.shape[0]} but the transformer's layer is "
                f"{layer.in_features}->{layer.out_features}: the file was trained for a different base model."
            )


def load_lora(
    transformer: nn.Module, state: dict[str, torch.Tensor], key_prefix: str, adapter_name: str
) -> None:
    """Load folded file tensors into a new peft adapter (alpha == rank, so peft's scale is 1)."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    modules = lora_modules(state, key_prefix)
    check_lora_fits(transformer, modules)
    ranks = {a.shape[0] for a, _ in modules.values()}
    if len(ranks) != 1:
        raise ValueError(f"All LoRA modules must share one rank; found {sorted(ranks)}.")
    rank = ranks.pop()
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(modules), init_lora_weights=False)
    transformer.add_adapter(config, adapter_name=adapter_name)
    peft_state = {k[len(key_prefix):]: v for k, v in state.items()}
    result = set_peft_model_state_dict(transformer, peft_state, adapter_name=adapter_name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"LoRA tensors not loaded into the transformer: {unexpected[:5]}.")

