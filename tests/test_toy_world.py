"""Toy world: procedural data, tokenizer/text encoder, rewards (all model-free or tiny, seconds in total)."""

from __future__ import annotations

import pytest
import torch

from pslider_core.rewards import RewardBatch, get_reward
from pslider_core.toy import rewards as toy_rewards
from pslider_core.toy.base_model import VOCAB
from pslider_core.toy.dataset import (
    BACKGROUND,
    BORDER,
    COLORS,
    HELDOUT,
    SHAPES,
    ToyShapesDataset,
    heldout_prompts,
    make_batch,
    parse_prompt,
    prompt_for,
    render,
    sample_params,
    train_prompts,
)
from pslider_core.toy.text_encoder import ToyTextEncoder, ToyTokenizer


def test_dataset_is_deterministic_per_index_and_seed():
    a, prompts_a = make_batch(range(12), seed=3)
    b, prompts_b = make_batch(range(12), seed=3)
    c, _ = make_batch(range(12), seed=4)
    assert torch.equal(a, b) and prompts_a == prompts_b
    assert not torch.equal(a, c)
    image, prompt = ToyShapesDataset("train", seed=3)[7]
    assert torch.equal(image, a[7]) and prompt == prompts_a[7]


def test_images_are_in_range_with_a_clear_border():
    images, _ = make_batch(range(60), seed=0, split="all")
    assert images.shape == (60, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    background = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[BORDER:-BORDER, BORDER:-BORDER] = False
    assert torch.allclose(images[..., border], background[..., 0].expand(60, 3, int(border.sum())), atol=1e-6)
    assert ((images - background).abs().sum(1) > 0.2).flatten(1).sum(1).min() > 50  # a shape is drawn


def test_heldout_pairs_never_appear_in_training_data():
    train, heldout = set(train_prompts()), set(heldout_prompts())
    assert len(heldout) == len(HELDOUT) and not train & heldout
    assert len(train) + len(heldout) == len(COLORS) * len(SHAPES)
    for color in COLORS:  # every word is still seen in training, only the pairs are new
        assert any(color in p for p in train)
    for shape in SHAPES:
        assert any(shape in p for p in train)
    _, prompts = make_batch(range(300), seed=0, split="train")
    assert set(prompts) == train
    _, prompts = make_batch(range(20), seed=0, split="heldout")
    assert set(prompts) == heldout


def test_prompts_parse_and_bad_ones_are_rejected():
    assert parse_prompt(prompt_for("orange", "cross")) == ("orange", "cross")
    assert prompt_for("orange", "cross") == "an orange cross"
    with pytest.raises(ValueError, match="exactly one colour and one shape"):
        parse_prompt("a red thing")
    with pytest.raises(ValueError, match="Unknown toy split"):
        make_batch(range(2), split="validation")


def test_tokenizer_pads_and_rejects_unknown_words(tmp_path):
    tokenizer = ToyTokenizer(VOCAB, max_length=6)
    ids, mask = tokenizer(["a red circle", "an orange square"])
    assert ids.shape == (2, 6) and mask.sum(1).tolist() == [3, 3] and (ids[~mask] == tokenizer.pad_id).all()
    with pytest.raises(ValueError, match="outside the toy vocabulary.*circle"):
        tokenizer(["a crimson circle"])
    with pytest.raises(ValueError, match="at most 6"):
        tokenizer(["a red circle a red circle a"])
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    again = ToyTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert again.vocab == tokenizer.vocab and torch.equal(again(["a blue cross"])[0], tokenizer(["a blue cross"])[0])


def test_text_encoder_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    tokenizer = ToyTokenizer(VOCAB, max_length=6)
    encoder = ToyTextEncoder(vocab_size=tokenizer.vocab_size, joint_attention_dim=16, pooled_projection_dim=8).eval()
    encoder.tokenizer = tokenizer
    embeds, pooled = encoder.encode(["a red circle", "a green triangle"])
    assert embeds.shape == (2, 6, 16) and pooled.shape == (2, 8)
    encoder.save_pretrained(tmp_path / "text_encoder")
    assert (tmp_path / "text_encoder" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ToyTextEncoder.from_pretrained(tmp_path / "text_encoder").eval()
    with pytest.raises(RuntimeError, match="needs a tokenizer"):
        loaded.encode(["a red circle"])
    loaded.tokenizer = tokenizer
    embeds2, pooled2 = loaded.encode(["a red circle", "a green triangle"])
    assert torch.equal(embeds, embeds2) and torch.equal(pooled, pooled2)


def _filled_and_sketched(n: int = 30) -> tuple[torch.Tensor, torch.Tensor, list[str], list[dict]]:
    params = [sample_params(i, seed=11, split="all") for i in range(n)]
    filled = torch.stack([render({**p, "tint": 0.0}) for p in params])
    sketched = torch.stack([render({**p, "tint": 1.0}) for p in params])
    return filled, sketched, [prompt_for(p["color"], p["shape"]) for p in params], params


def test_color_and_sketch_rewards_conflict_on_the_same_shape():
    filled, sketched, prompts, _ = _filled_and_sketched()
    color_filled, color_sketch = (
        toy_rewards.color_fidelity(filled, prompts),
        toy_rewards.color_fidelity(sketched, prompts),
    )
    sketch_filled, sketch_sketch = toy_rewards.sketch_look(filled, prompts), toy_rewards.sketch_look(sketched, prompts)
    assert (color_filled > color_sketch + 0.3).all()
    assert (sketch_sketch > sketch_filled + 0.1).all()
    assert color_filled.mean() > 0.9 and sketch_sketch.mean() > 0.6  # both extremes are reachable with content


def test_rewards_depend_on_the_prompt_and_reject_destroyed_content():
    filled, sketched, prompts, params = _filled_and_sketched()
    wrong = [prompt_for("blue" if p["color"] != "blue" else "red", p["shape"]) for p in params]
    assert (toy_rewards.color_fidelity(filled, wrong) < toy_rewards.color_fidelity(filled, prompts) - 0.3).all()
    assert (toy_rewards.sketch_look(sketched, wrong) < toy_rewards.sketch_look(sketched, prompts)).all()
    flooded = torch.tensor(COLORS["red"]).view(1, 3, 1, 1).expand(2, 3, 32, 32).clone()
    blank = torch.tensor(BACKGROUND).view(1, 3, 1, 1).expand(2, 3, 32, 32).clone()
    for fn in (toy_rewards.color_fidelity, toy_rewards.sketch_look, toy_rewards.shape_size, toy_rewards.vivid_fill,
               toy_rewards.pale_fill):
        assert fn(flooded, ["a red circle"] * 2).max() < 0.05
        assert fn(blank, ["a red circle"] * 2).max() < 0.05


def test_vivid_and_pale_trade_off_along_a_curved_front():
    """Half-tinted fills score better on the sum than either end: the pair's front bulges outwards, so weighted sums
    are best in the interior (unlike colour vs sketch, whose mixtures score little on both)."""
    params = [sample_params(i, seed=11, split="all") for i in range(30)]
    prompts = [prompt_for(p["color"], p["shape"]) for p in params]
    tints = (0.0, 0.25, 0.5, 0.75, 1.0)
    scores = torch.stack([
        torch.stack([fn(torch.stack([render({**p, "tint": t}) for p in params]), prompts).mean()
                     for fn in (toy_rewards.vivid_fill, toy_rewards.pale_fill)])
        for t in tints
    ])  # (tint, reward)
    vivid, pale = scores[:, 0], scores[:, 1]
    assert (vivid.diff() < 0).all() and (pale.diff() > 0).all()
    assert vivid[0] > 0.9 and pale[0] < 0.05 and pale[-1] > 0.85
    total = scores.sum(1)
    assert total[2] > max(total[0], total[-1]) + 0.3  # the middle beats both corners on the sum
    assert (total[1:4] > (total[0] + total[-1]) / 2 + 0.2).all()  # above the chord between the ends: curved
    wrong = [prompt_for("blue" if p["color"] != "blue" else "red", p["shape"]) for p in params]
    half = torch.stack([render({**p, "tint": 0.5}) for p in params])
    assert toy_rewards.vivid_fill(half, wrong).mean() < vivid[2] - 0.3


def test_size_reward_orders_sizes():
    base = {"color": "green", "shape": "circle", "center": (16.0, 16.0), "tint": 0.3, "rim": 1.2}
    images = torch.stack([render({**base, "size": s}) for s in (6.5, 8.0, 9.5, 10.5)])
    scores = toy_rewards.shape_size(images, ["a green circle"] * 4)
    assert (scores.diff() > 0).all() and scores[-1] > 0.8


def test_size_reward_pays_clean_growth_not_bulging():
    """A disc in place of the prompt's shape (how area used to be earned) never nears a clean large shape's score."""
    style = {"color": "blue", "center": (16.0, 16.0), "tint": 0.3, "rim": 1.2}
    discs = torch.stack([render({**style, "shape": "circle", "size": s}) for s in (9.0, 10.5, 12.0)])
    for shape in ("square", "triangle", "diamond", "cross"):
        clean = torch.stack([render({**style, "shape": shape, "size": s}) for s in (8.5, 10.5)])
        prompts = [prompt_for("blue", shape)] * 3
        clean_scores = toy_rewards.shape_size(clean, prompts[:2])
        assert clean_scores[1] > clean_scores[0] > 0.3
        assert toy_rewards.shape_size(discs, prompts).max() < 0.6 * clean_scores[1], shape


def test_toy_rewards_are_registered():
    filled, sketched, prompts, _ = _filled_and_sketched(4)
    batch = RewardBatch(images=torch.cat([filled, sketched]), prompts=prompts * 2)
    color, sketch, size = (get_reward(name) for name in ("toy_color", "toy_sketch", "toy_size"))
    assert torch.allclose(color(batch), toy_rewards.color_fidelity(batch.images, batch.prompts))
    assert torch.allclose(get_reward("toy_vivid")(batch), toy_rewards.vivid_fill(batch.images, batch.prompts))
    assert torch.allclose(get_reward("toy_pale")(batch), toy_rewards.pale_fill(batch.images, batch.prompts))
    assert (sketch(batch)[4:] > sketch(batch)[:4]).all()
    assert size(batch).shape == (8,)
