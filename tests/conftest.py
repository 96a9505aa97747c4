"""Shared fixtures: tiny real pipelines built from configs (no downloads, no mocks)."""

from __future__ import annotations

import pytest
import torch

from pslider_core import available_backbones, get_backbone

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipelines():
    """Lazily built tiny pipeline per backbone, shared by the whole session (read-only users only)."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = get_backbone(name).tiny_pipeline(seed=0)
        return cache[name]

    return get


def pytest_generate_tests(metafunc):
    if "backbone" in metafunc.fixturenames:
        metafunc.parametrize("backbone", available_backbones())
