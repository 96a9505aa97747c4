"""Fake of comfy/utils.py: the attribute helpers ModelPatcher uses."""

from __future__ import annotations

from typing import Any


def set_attr(obj: Any, attr: str, value: Any) -> Any:
    attrs = attr.split(".")
    for name in attrs[:-1]:
        obj = getattr(obj, name)
    prev = getattr(obj, attrs[-1])
    setattr(obj, attrs[-1], value)
    return prev


def get_attr(obj: Any, attr: str) -> Any:
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj
