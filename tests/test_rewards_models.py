"""Model-based rewards on tiny random checkpoints saved to disk and loaded through from_pretrained,
the same path a user's real weights take.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from helpers import save_tiny_clip, save_tiny_dinov2
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from pslider_core.rewards import RewardBatch, get_reward
from pslider_core.rewards.hf import ImagePreprocessor
from pslider_core.rewards.server import RewardServer

torch.set_num_threads(1)
PROMPTS = ["a red cat", "a pencil sketch of a house", "a red cat", "blue sky"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def bare_clip_dir(clip_dir, tmp_path_factory):
    """Weights only, like PickScore_v1 whose tokenizer and preprocessing live in another repo."""
    path = tmp_path_factory.mktemp("bare_clip")
    torch.manual_seed(1)
    CLIPModel.from_pretrained(clip_dir).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return save_tiny_dinov2(tmp_path_factory.mktemp("tiny_dinov2"))


def aesthetic_head(path, dims=(16, 8, 4, 1), seed: int = 0) -> str:
    """A LAION-layout head with Linear layers at indices 0, 2, 4, ... (dropouts in between in the original)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        tensors[f"layers.{2 * i}.weight"] = torch.randn(n_out, n_in, generator=gen)
        tensors[f"layers.{2 * i}.bias"] = torch.randn(n_out, generator=gen)
    save_file(tensors, str(path))
    return str(path)


def images(n: int = 4, size: int = 48, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 6, 6, generator=gen), size=(size, size), mode="bilinear")


def run(reward, imgs, prompts=None, sources=None) -> torch.Tensor:
    return reward(RewardBatch(images=imgs, prompts=prompts or PROMPTS[: len(imgs)], sources=sources))


def reference_clip_cosine(model_dir: str, imgs: torch.Tensor, texts: list[str], processor_dir: str) -> torch.Tensor:
    """CLIP cosine computed straight from transformers, with our torch preprocessing."""
    model = CLIPModel.from_pretrained(model_dir).eval()
    tokens = CLIPTokenizer.from_pretrained(processor_dir)(
        texts, padding=True, truncation=True, max_length=77, return_tensors="pt"
    )
    pixels = ImagePreprocessor.from_pretrained(processor_dir, "test")(imgs)
    with torch.no_grad():
        image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    return (image * text).sum(-1)


def test_preprocessing_matches_the_transformers_image_processor(clip_dir):
    square = images(2, size=40)
    wide = F.interpolate(images(2, seed=1), size=(40, 56), mode="bilinear")
    reference = CLIPImageProcessorPil.from_pretrained(clip_dir)
    for batch in (square, wide):
        batch = (batch * 255).round() / 255  # exactly representable as the uint8 the PIL processor takes
        arrays = [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in batch]
        expected = reference(images=arrays, return_tensors="pt").pixel_values
        ours = ImagePreprocessor.from_pretrained(clip_dir, "test")(batch)
        assert ours.shape == expected.shape == (2, 3, 32, 32)
        assert (ours - expected).abs().mean() < 0.02 and (ours - expected).abs().max() < 0.1


def test_preprocessor_reads_every_config_form():
    common = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    legacy = ImagePreprocessor.from_config({"size": 24, "crop_size": 20, **common})
    exact = ImagePreprocessor.from_config({"size": {"height": 30, "width": 20}, **common})
    assert (legacy.size, legacy.crop) == (24, (20, 20)) and (exact.size, exact.crop) == ((30, 20), (30, 20))
    assert exact(torch.rand(1, 3, 50, 50)).shape == (1, 3, 30, 20)
    assert legacy(torch.rand(1, 3, 48, 96)).shape == (1, 3, 20, 20)


def test_clip_score_equals_the_direct_computation_and_is_deterministic(clip_dir):
    imgs = images()
    reward = get_reward(f"clip_score(model={clip_dir})")
    scores = run(reward, imgs)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference_clip_cosine(clip_dir, imgs, PROMPTS, clip_dir), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run(reward, imgs), scores, atol=0, rtol=0)
    one_by_one = torch.cat([run(reward, imgs[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(one_by_one, scores, atol=1e-5, rtol=1e-5)
    chunked = run(get_reward(f"clip_score(model={clip_dir}, batch_size=3)"), imgs)
    torch.testing.assert_close(chunked, scores, atol=1e-5, rtol=1e-5)


def test_clip_style_scores_against_the_style_text(clip_dir):
    imgs = images()
    reward = get_reward(f'clip_style(style="a pencil sketch, charcoal", model={clip_dir})')
    assert reward.name == f'clip_style(style="a pencil sketch, charcoal", model={clip_dir})'
    expected = reference_clip_cosine(clip_dir, imgs, ["a pencil sketch, charcoal"] * 4, clip_dir)
    torch.testing.assert_close(run(reward, imgs), expected, atol=1e-5, rtol=1e-5)


def test_pickscore_is_logit_scaled_clip_with_a_separate_processor(clip_dir, bare_clip_dir):
    imgs = images()
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json. Pass processor="):
        run(get_reward(f"pickscore(model={bare_clip_dir}, processor=none)"), imgs)
    reward = get_reward(f"pickscore_photorealism(model={bare_clip_dir}, processor={clip_dir})")
    scale = CLIPModel.from_pretrained(bare_clip_dir).logit_scale.exp().item()
    texts = [f"A photorealistic, high quality, 4K, camera-captured snapshot of {p}" for p in PROMPTS]
    expected = scale * reference_clip_cosine(bare_clip_dir, imgs, texts, clip_dir)
    torch.testing.assert_close(run(reward, imgs), expected, atol=1e-4, rtol=1e-5)


def test_models_are_cached_and_dtype_is_honoured(clip_dir):
    a = get_reward(f"clip_score(model={clip_dir})")
    b = get_reward(f"clip_style(style=ink, model={clip_dir})")
    assert a.load().models is b.load().models
    half = get_reward(f"clip_score(model={clip_dir})", dtype=torch.bfloat16)
    assert half.models is not a.models and half.models.model.dtype == torch.bfloat16
    imgs = images()
    torch.testing.assert_close(run(half, imgs), run(a, imgs), atol=0.05, rtol=0)


def test_missing_weights_give_an_actionable_error(tmp_path, dino_dir):
    with pytest.raises(FileNotFoundError, match=r"reward 'clip_score'.*neither an existing local directory"):
        run(get_reward(f"clip_score(model={tmp_path}/missing)"), images())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        OSError, match=r"(?s)reward 'dinov2_fidelity' could not load model=.*pass dinov2_fidelity\(model=DIR\)"
    ):
        run(get_reward(f"dinov2_fidelity(model={empty}, processor={dino_dir})"), images(), sources=images())
    with pytest.raises(FileNotFoundError, match=r"model='.*empty' has no preprocessor_config.json. Pass processor="):
        run(get_reward(f"dinov2_fidelity(model={empty})"), images(), sources=images())


def test_aesthetic_head_over_clip_embeddings(clip_dir, tmp_path):
    head = aesthetic_head(tmp_path / "head.safetensors")
    imgs = images()
    reward = get_reward(f"aesthetic(head={head}, model={clip_dir})")
    scores = run(reward, imgs)
    model = CLIPModel.from_pretrained(clip_dir).eval()
    from safetensors.torch import load_file

    weights = load_file(head)
    with torch.no_grad():
        x = F.normalize(
            model.get_image_features(pixel_values=ImagePreprocessor.from_pretrained(clip_dir, "t")(imgs)).pooler_output,
            dim=-1,
        )
        for i in (0, 2, 4):
            x = F.linear(x, weights[f"layers.{i}.weight"], weights[f"layers.{i}.bias"])
    torch.testing.assert_close(scores, x.squeeze(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run(reward, imgs[:2], PROMPTS[:2]), scores[:2], atol=1e-5, rtol=1e-5)


def test_aesthetic_rejects_bad_heads(clip_dir, tmp_path):
    with pytest.raises(ValueError, match=r"aesthetic\(head=/path/to/head.safetensors\)"):
        get_reward("aesthetic")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_reward(f"aesthetic(head={tmp_path}/nope.safetensors)")
    wrong_width = aesthetic_head(tmp_path / "wide.safetensors", dims=(768, 4, 1))
    with pytest.raises(ValueError, match="expects 768-d embeddings but .* gives 16-d"):
        run(get_reward(f"aesthetic(head={wrong_width}, model={clip_dir})"), images())
    save_file({"fc.weight": torch.zeros(1, 16)}, str(tmp_path / "keys.safetensors"))
    with pytest.raises(ValueError, match="unexpected keys"):
        run(get_reward(f"aesthetic(head={tmp_path}/keys.safetensors, model={clip_dir})"), images())
    broken = {
        "layers.0.weight": torch.zeros(8, 16),
        "layers.0.bias": torch.zeros(8),
        "layers.1.weight": torch.zeros(1, 5),
        "layers.1.bias": torch.zeros(1),
    }
    save_file(broken, str(tmp_path / "chain.safetensors"))
    with pytest.raises(ValueError, match="takes 5 inputs but the previous layer gives 8"):
        run(get_reward(f"aesthetic(head={tmp_path}/chain.safetensors, model={clip_dir})"), images())


@pytest.mark.parametrize("spec", ["clip_fidelity(model={clip})", "dinov2_fidelity(model={dino})"])
def test_embedding_fidelity_is_highest_for_the_source(spec, clip_dir, dino_dir):
    reward = get_reward(spec.format(clip=clip_dir, dino=dino_dir))
    source = images(1, seed=3)
    candidates = torch.cat([source, images(3, seed=4)])
    scores = run(reward, candidates, sources=source.expand(4, -1, -1, -1))
    torch.testing.assert_close(scores[0], torch.tensor(1.0))
    assert (scores[1:] < scores[0] - 1e-4).all()
    one_by_one = torch.cat([run(reward, candidates[i : i + 1], PROMPTS[:1], source) for i in range(4)])
    torch.testing.assert_close(one_by_one, scores, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="sources="):
        run(reward, candidates)


def test_temporal_consistency_with_dinov2_embeddings(dino_dir):
    frame = images(1, seed=5)[0]
    static = frame.expand(1, 4, -1, -1, -1)
    flicker = images(4, seed=6).unsqueeze(0)
    reward = get_reward(f"temporal_consistency(metric=dinov2, model={dino_dir})")
    scores = reward(RewardBatch(images=torch.cat([static, flicker]), prompts=["a", "b"]))
    torch.testing.assert_close(scores[0], torch.tensor(1.0))
    assert scores[1] < scores[0] - 1e-4
    with pytest.raises(ValueError, match="uses no model"):
        get_reward(f"temporal_consistency(model={dino_dir})")


def test_model_reward_served_remotely_equals_local(clip_dir):
    local = get_reward(f"clip_score(model={clip_dir})")
    server = RewardServer([get_reward(f"clip_score(model={clip_dir})")], port=0)
    server.start()
    try:
        remote = get_reward(f"remote:{server.url}")
        assert remote.description.startswith("CLIP cosine similarity")
        imgs = images()
        torch.testing.assert_close(run(remote, imgs), run(local, imgs), atol=0, rtol=0)
    finally:
        server.shutdown()
        server.server_close()
