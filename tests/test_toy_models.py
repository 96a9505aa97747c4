"""Toy world models: the shipped judge, the shipped base (valid image rate on held-out prompts), pretraining I/O."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pslider_core.toy import base_model
from pslider_core.toy.base_model import BASE_DIR, INFO_FILE, load_toy_base
from pslider_core.toy.dataset import HELDOUT, heldout_prompts, make_batch
from pslider_core.toy.judge import (
    ASSETS_DIR,
    distractor_rejection,
    judge_accuracy,
    load_judge,
    save_judge,
    valid_image_rate,
    validity,
)
from pslider_core.toy.pipeline import sample
from pslider_core.toy.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def judge():
    return load_judge()


def test_judge_is_accurate_on_fresh_heldout_procedural_data(judge):
    clean = judge_accuracy(judge, n=150, seed=4242, split="heldout", noise=False)
    noisy = judge_accuracy(judge, n=150, seed=4243, split="all", noise=True)
    assert clean["valid"] >= 0.97, clean
    assert noisy["valid"] >= 0.93, noisy


def test_judge_rejects_wrong_prompts_and_shapeless_images(judge):
    images, prompts = make_batch(range(60), seed=99, split="all")
    shifted = prompts[1:] + prompts[:1]  # consecutive items are different colour/shape pairs
    assert validity(images, prompts, judge).float().mean() >= 0.95
    assert valid_image_rate(images, shifted, judge) <= 0.05
    assert distractor_rejection(judge, n=60, seed=9) >= 0.9


def test_judge_save_load_round_trip(judge, tmp_path):
    save_judge(judge, tmp_path, metrics={"note": "test"})
    loaded = load_judge(tmp_path)
    images, _ = make_batch(range(8), seed=5, split="all")
    assert torch.equal(loaded(images)[0], judge(images)[0]) and torch.equal(loaded(images)[1], judge(images)[1])
    with pytest.raises(FileNotFoundError, match="train_toy_judge.py"):
        load_judge(tmp_path / "missing")


def test_shipped_base_draws_colour_and_shape_on_heldout_prompts(judge):
    transformer, text_encoder, _, info = load_toy_base()
    assert transformer.config.in_channels == transformer.config.out_channels == 3
    assert [tuple(pair) for pair in info["heldout"]] == list(HELDOUT)
    prompts = [p for p in heldout_prompts() for _ in range(4)]
    images = sample(transformer, text_encoder, prompts, num_steps=10, generator=torch.Generator().manual_seed(7))
    assert images.shape == (20, 3, 32, 32)
    assert judge.valid_image_rate(images, prompts) >= 0.9
    assert judge.valid_image_rate(images, prompts[4:] + prompts[:4]) <= 0.1  # another pair's prompt: invalid
    assert info["judge_valid_rate"]["heldout"] >= 0.9  # the recorded 20-step rate over 16 samples per prompt


def test_shipped_assets_are_small_safetensors():
    files = [p for p in Path(ASSETS_DIR).rglob("*") if p.is_file()]
    assert any(p.name == "judge.safetensors" for p in files)
    assert sum(p.suffix == ".safetensors" for p in files) == 3  # judge, transformer, text encoder
    assert all(p.stat().st_size < 5 * 2**20 for p in files), [(p.name, p.stat().st_size) for p in files]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]


def test_pretraining_is_deterministic_and_saves_a_loadable_base(tmp_path):
    cfg = PretrainConfig(steps=2, batch_size=4, hidden=32, head_dim=16, layers=1, text_dim=16, warmup=1, log_every=1)
    logs: list[str] = []
    pretrain(cfg, tmp_path / "a", log=logs.append)
    pretrain(cfg, tmp_path / "b", log=lambda _: None)
    assert any("loss" in line for line in logs)
    info = json.loads((tmp_path / "a" / INFO_FILE).read_text())
    assert info["train"]["steps_done"] == 2 and info["image_size"] == 32
    transformer, text_encoder, _, _ = load_toy_base(tmp_path / "a")
    other, _, _, _ = load_toy_base(tmp_path / "b")
    for (name, p), q in zip(transformer.state_dict().items(), other.state_dict().values()):
        assert torch.equal(p, q), name
    images = sample(transformer, text_encoder, ["a red circle", "a blue square"], num_steps=2)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(FileNotFoundError, match="pretrain_toy_base.py"):
        load_toy_base(tmp_path / "missing")


def test_shipped_base_is_the_default_folder():
    assert base_model.BASE_DIR == BASE_DIR and (BASE_DIR / INFO_FILE).is_file()
