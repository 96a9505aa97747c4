"""Rewards by name: built-ins, user `package.module:callable` rewards, `pareto_slider.rewards` entry points.

`get_reward(spec)` parses a spec (see `spec.py`), converts each parameter to the type the factory's
signature declares, builds the reward and sets `reward.name` to the canonical spec, which is what
checkpoints record and what `get_reward` accepts again.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Callable
from importlib.metadata import entry_points

import torch

from .base import FunctionReward, Reward
from .spec import format_spec, parse_spec

ENTRY_POINT_GROUP = "pareto_slider.rewards"
# modules (relative to this package) whose rewards register themselves: one line per family of built-ins
BUILTIN = (".aesthetic", ".clip", ".fidelity", ".image_stats", ".judge", ".video", "..toy.rewards")
_REGISTRY: dict[str, Callable[..., Reward]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def _load_builtins() -> None:
    """Register the built-in rewards on first use (importing `pslider_core.rewards` alone imports nothing heavy)."""
    for module in BUILTIN:
        importlib.import_module(module, __package__)


class UnknownRewardError(KeyError, ValueError):
    """An unknown reward name; a KeyError for lookups and a ValueError for CLI validation."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_reward(name: str, factory: Callable[..., Reward] | None = None, *, description: str | None = None):
    """Register `factory` (a Reward subclass or a function returning a Reward) under `name`.

    Used as `register_reward("brightness", Brightness)` or as a class decorator `@register_reward("brightness")`.
    """
    if not name.isidentifier():
        raise ValueError(f"reward names must be identifiers (letters, digits, _), got {name!r}")

    def add(target: Callable[..., Reward]) -> Callable[..., Reward]:
        _REGISTRY[name] = target
        _DESCRIPTIONS[name] = description or _describe(target)
        return target

    return add if factory is None else add(factory)


def _describe(target: object) -> str:
    base = getattr(target, "func", target)  # functools.partial
    text = getattr(target, "description", "") or getattr(base, "description", "") or (base.__doc__ or "").strip()
    return text.splitlines()[0] if text else ""


def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_rewards() -> list[tuple[str, str]]:
    """(name, description) of every built-in and entry-point reward, sorted by name."""
    _load_builtins()
    found = dict(_DESCRIPTIONS)
    for name, ep in _entry_points().items():
        if name not in found:
            try:
                found[name] = _describe(ep.load())
            except Exception as exc:  # a broken plugin must not hide the others
                found[name] = f"(entry point {ep.value} failed to load: {exc})"
    return sorted(found.items())


def _unknown(name: str) -> UnknownRewardError:
    names = ", ".join(name for name, _ in list_rewards())
    return UnknownRewardError(
        f"unknown reward {name!r}. Available: {names}. A user reward is written 'package.module:callable' "
        f"(a Reward subclass or instance, a factory, or a function batch -> scores), or installed under the "
        f"'{ENTRY_POINT_GROUP}' entry-point group."
    )


def _load_attribute(target: str) -> object:
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"user reward {target!r}: cannot import module {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"user reward {target!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _factory_kind(obj: object) -> str:
    """'class', 'instance', 'function' (scores a batch) or 'factory' (builds a reward)."""
    if isinstance(obj, Reward):
        return "instance"
    if inspect.isclass(obj) and issubclass(obj, Reward):
        return "class"
    if not callable(obj):
        raise TypeError(f"user reward {obj!r} is not callable")
    required = [
        p
        for p in inspect.signature(obj).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return "function" if len(required) == 1 else "factory"


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _convert(raw: str, hint: object, key: str, name: str) -> object:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw.lower() in ("none", "null") and len(options) < len(typing.get_args(hint)):
            return None
        hint = options[0] if len(options) == 1 else str
    try:
        if hint is bool:
            return _BOOLS[raw.lower()]
        if hint in (int, float):
            return hint(raw)
    except (KeyError, ValueError):
        raise ValueError(
            f"reward {name!r}: parameter {key}={raw!r} is not a valid {getattr(hint, '__name__', hint)}"
        ) from None
    return raw


def _build(name: str, factory: Callable[..., Reward], raw: dict[str, str]) -> tuple[Reward, dict[str, object]]:
    """Call `factory` with spec parameters converted to its annotated types; returns the reward and the params."""
    base = getattr(factory, "func", factory)  # functools.partial aliases such as pickscore_photorealism
    signature = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(base.__init__ if inspect.isclass(base) else base)
    except (NameError, TypeError):  # unresolvable annotations in a user reward: pass the values as strings
        hints = {}
    accepted = {k: p for k, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(raw) - set(accepted))
    if unknown:
        raise ValueError(
            f"reward {name!r} has no parameter {', '.join(unknown)}; accepted: {', '.join(accepted) or 'none'}"
        )
    missing = [key for key, p in accepted.items() if p.default is p.empty and key not in raw]
    if missing:
        example = format_spec(name, {key: "..." for key in missing})
        raise ValueError(f"reward {name!r} needs parameter(s) {', '.join(missing)}: write {example}")
    params = {key: _convert(raw[key], hints.get(key, str), key, name) for key in accepted if key in raw}
    try:
        reward = factory(**params)
    except TypeError as exc:
        raise ValueError(f"reward {name!r}: {exc}") from exc
    return reward, params


def _as_reward(name: str, obj: object, raw: dict[str, str]) -> tuple[Reward, dict[str, object]]:
    kind = _factory_kind(obj)
    if kind == "instance":
        if raw:
            raise ValueError(f"reward {name!r} is a ready-made instance and takes no parameters")
        return obj, {}
    if kind == "function":
        if raw:
            raise ValueError(f"reward {name!r} is a scoring function f(batch) and takes no parameters")
        return FunctionReward(obj, name), {}
    reward, params = _build(name, obj, raw)
    if not isinstance(reward, Reward):
        if not callable(reward):
            raise TypeError(f"reward factory {name!r} returned {type(reward).__name__}, not a Reward")
        reward = FunctionReward(reward, name)
    return reward, params


def get_reward(spec: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Reward:
    """Build the reward named by `spec` (see `spec.py`), placed on `device` / `dtype`; models load lazily."""
    spec = spec.strip()
    if spec.startswith("remote:"):
        from .remote import RemoteReward

        reward: Reward = RemoteReward.from_spec(spec)
        return reward.to(device, dtype)
    name, raw = parse_spec(spec)
    _load_builtins()
    if ":" in name:
        reward, params = _as_reward(name, _load_attribute(name), raw)
    elif name in _REGISTRY:
        reward, params = _build(name, _REGISTRY[name], raw)
    else:
        plugin = _entry_points().get(name)
        if plugin is None:
            raise _unknown(name)
        reward, params = _as_reward(name, plugin.load(), raw)
    reward.name = format_spec(name, params)
    return reward.to(device, dtype)
