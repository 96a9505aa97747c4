"""The reward protocol, the spec syntax and the registry (user rewards and entry points included)."""

from __future__ import annotations

import re
import sys
import textwrap

import pytest
import torch

from pslider_core.rewards import (
    NonFiniteScoreError,
    Reward,
    RewardBatch,
    UnknownRewardError,
    format_spec,
    get_reward,
    list_rewards,
    parse_reward_list,
    parse_spec,
    register_reward,
)
from pslider_core.rewards.registry import _REGISTRY

torch.set_num_threads(1)


def batch(n: int = 3, size: int = 16, seed: int = 0, **kwargs) -> RewardBatch:
    gen = torch.Generator().manual_seed(seed)
    return RewardBatch(
        images=torch.rand(n, 3, size, size, generator=gen), prompts=[f"p{i}" for i in range(n)], **kwargs
    )


class MeanRed(Reward):
    """Mean of the red channel; records the batch sizes it saw."""

    name = "mean_red"
    description = "mean red"

    def __init__(self, batch_size: int | None = None) -> None:
        self.batch_size = batch_size
        self.seen: list[int] = []

    def score(self, batch: RewardBatch) -> torch.Tensor:
        self.seen.append(len(batch))
        return batch.images[:, 0].mean(dim=(1, 2))


# --- RewardBatch -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(images=torch.rand(2, 3, 8, 8), prompts=["a"]), "2 samples but 1 prompts"),
        (dict(images=torch.rand(2, 3, 8, 8) * 2 - 1, prompts=["a", "b"]), "[-1, 1]"),
        (dict(images=torch.rand(2, 3, 8, 8) * 255, prompts=["a", "b"]), "[0, 255]"),
        (dict(images=torch.rand(3, 8, 8), prompts=["a", "b", "c"]), "(N,3,H,W)"),
        (dict(images=torch.rand(2, 8, 8, 3), prompts=["a", "b"]), "3 RGB channels"),
        (dict(images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8), prompts=["a", "b"]), "float"),
        (dict(images=torch.full((1, 3, 8, 8), float("nan")), prompts=["a"]), "NaN"),
        (dict(images=torch.rand(2, 3, 8, 8), prompts="ab"), "list of strings"),
        (
            dict(images=torch.rand(2, 3, 8, 8), prompts=["a", "b"], sources=torch.rand(1, 3, 8, 8)),
            "2 samples but 1 sources",
        ),
        (dict(images=torch.rand(1, 3, 8, 8), prompts=["a"], audio=torch.rand(1, 100)), "audio_sample_rate"),
    ],
)
def test_batch_rejects_bad_input_with_the_fix(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        RewardBatch(**kwargs)


def test_batch_accepts_small_decoder_overshoot_and_flattens_video():
    RewardBatch(images=torch.full((1, 3, 4, 4), 1.004), prompts=["a"])
    video = RewardBatch(images=torch.rand(2, 4, 3, 8, 8), prompts=["a", "b"], sources=torch.rand(2, 3, 8, 8))
    frames = video.frames()
    assert video.is_video and not frames.is_video
    assert frames.images.shape == (8, 3, 8, 8) and frames.prompts == ["a"] * 4 + ["b"] * 4
    assert torch.equal(frames.images[5], video.images[1, 1]) and torch.equal(frames.sources[5], video.sources[1])


# --- Reward.__call__ ---------------------------------------------------------------------------


def test_call_returns_float32_cpu_without_grad_and_chunks_like_one_by_one():
    images = torch.rand(5, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    whole = MeanRed()(RewardBatch(images=images, prompts=list("abcde")))
    chunked_reward = MeanRed(batch_size=2)
    chunked = chunked_reward(RewardBatch(images=images, prompts=list("abcde")))
    assert whole.dtype == torch.float32 and whole.device.type == "cpu" and whole.shape == (5,)
    assert not whole.requires_grad
    assert chunked_reward.seen == [2, 2, 1]
    torch.testing.assert_close(whole, chunked)
    torch.testing.assert_close(whole, images[:, 0].mean(dim=(1, 2)).float().detach())


def test_image_reward_on_video_averages_frames():
    video = torch.rand(2, 3, 3, 8, 8)
    scores = MeanRed()(RewardBatch(images=video, prompts=["a", "b"]))
    torch.testing.assert_close(scores, video[:, :, 0].mean(dim=(2, 3)).mean(dim=1))


def test_audio_reward_on_video_scores_whole_clips_with_their_sound():
    class Loudness(Reward):
        name = "loudness"
        needs_audio = True

        def score(self, batch: RewardBatch) -> torch.Tensor:
            assert batch.is_video and batch.audio_sample_rate == 16000
            return batch.audio.abs().mean(dim=(1, 2))

    audio = torch.randn(2, 2, 100)
    clips = RewardBatch(images=torch.rand(2, 3, 3, 8, 8), prompts=["a", "b"], audio=audio, audio_sample_rate=16000)
    torch.testing.assert_close(Loudness()(clips), audio.abs().mean(dim=(1, 2)))


def test_call_checks_needs_and_score_shape():
    class NeedsAll(MeanRed):
        name = "needs_all"
        needs_source = True

    with pytest.raises(ValueError, match="needs_all.*sources="):
        NeedsAll()(batch())
    NeedsAll.needs_source, NeedsAll.needs_audio = False, True
    with pytest.raises(ValueError, match="audio_sample_rate"):
        NeedsAll()(batch())
    NeedsAll.needs_audio, NeedsAll.needs_video = False, True
    with pytest.raises(ValueError, match=r"\(N,T,3,H,W\)"):
        NeedsAll()(batch())

    class Wrong(MeanRed):
        def score(self, batch):
            return torch.zeros(len(batch), 2)

    with pytest.raises(ValueError, match="one float per sample"):
        Wrong()(batch())

    class Nan(MeanRed):
        def score(self, batch):
            return torch.full((len(batch),), float("nan"))

    with pytest.raises(NonFiniteScoreError, match="non-finite"):
        Nan()(batch())
    with pytest.raises(TypeError, match="RewardBatch"):
        MeanRed()(torch.rand(1, 3, 8, 8))


# --- spec syntax -------------------------------------------------------------------------------


def test_parse_reward_list_respects_parentheses_and_quotes():
    text = (
        'clip_style(style="charcoal, smudged"), pickscore ,'
        "remote:http://127.0.0.1:9#clip_style(style=a, b=c),x(y='(')"
    )
    assert parse_reward_list(text) == [
        'clip_style(style="charcoal, smudged")',
        "pickscore",
        "remote:http://127.0.0.1:9#clip_style(style=a, b=c)",
        "x(y='(')",
    ]
    for bad in ["a(b=1", "a)", 'a(b="x)', " , "]:
        with pytest.raises(ValueError):
            parse_reward_list(bad)


@pytest.mark.parametrize(
    "params",
    [
        {"style": "a pencil sketch"},
        {"style": 'say "hi", then (leave)', "model": "/models/clip"},
        {"template": "  padded  ", "x": "a\\b"},
        {"flag": True, "n": 3, "f": 0.25, "empty": ""},
    ],
)
def test_format_spec_round_trips(params):
    text = format_spec("reward", params)
    name, parsed = parse_spec(text)
    assert name == "reward"
    assert parsed == {key: {True: "true"}.get(value, str(value)) for key, value in params.items()}
    assert parse_reward_list(f"{text},brightness") == [text, "brightness"]


def test_parse_spec_errors_name_the_problem():
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("clip_style(a pencil sketch)")
    with pytest.raises(ValueError, match="twice"):
        parse_spec("clip_style(style=a, style=b)")
    with pytest.raises(ValueError, match="quoted as a whole"):
        parse_spec('clip_style(style="a" b)')


# --- registry ----------------------------------------------------------------------------------


def test_get_reward_converts_parameters_and_names_the_canonical_spec():
    reward = get_reward("edge_density( high_threshold = 0.3 , low_threshold=0.05)")
    assert (reward.low_threshold, reward.high_threshold) == (0.05, 0.3)
    assert reward.name == "edge_density(low_threshold=0.05, high_threshold=0.3)"
    assert get_reward(reward.name).name == reward.name
    style = get_reward('clip_style(style="charcoal, smudged", batch_size=4)')
    assert style.name == 'clip_style(style="charcoal, smudged", batch_size=4)' and style.batch_size == 4
    assert get_reward("brightness").name == "brightness"
    assert get_reward("pickscore_photorealism").template.startswith("A photorealistic, high quality, 4K")


def test_get_reward_places_device_and_dtype():
    reward = get_reward("saturation", device="cpu", dtype=torch.float64)
    assert reward.device == torch.device("cpu") and reward.dtype == torch.float64


def test_registry_errors_are_actionable():
    with pytest.raises(UnknownRewardError, match=r"brightness.*package\.module:callable"):
        get_reward("brightnes")
    with pytest.raises(KeyError):
        get_reward("no_such_reward")
    with pytest.raises(ValueError, match="no parameter colour; accepted: low_threshold, high_threshold"):
        get_reward("edge_density(colour=red)")
    with pytest.raises(ValueError, match="not a valid float"):
        get_reward("edge_density(low_threshold=high)")
    with pytest.raises(ValueError, match=r"needs parameter\(s\) style: write clip_style\(style=\.\.\.\)"):
        get_reward("clip_style")
    with pytest.raises(ValueError, match="identifiers"):
        register_reward("not a name", MeanRed)


def test_register_reward_decorator_and_list():
    @register_reward("mean_red_test")
    class Registered(MeanRed):
        description = "red channel mean, for the registry test"

    try:
        assert ("mean_red_test", "red channel mean, for the registry test") in list_rewards()
        reward = get_reward("mean_red_test(batch_size=2)")
        assert isinstance(reward, Registered) and reward.batch_size == 2
    finally:
        _REGISTRY.pop("mean_red_test")
    builtins = dict(list_rewards())
    for name in [
        "brightness",
        "saturation",
        "sharpness",
        "jpeg_compressibility",
        "clip_score",
        "pickscore",
        "vlm_judge",
    ]:
        assert builtins[name], name


USER_MODULE = """
import torch
from pslider_core.rewards import Reward

class Vibes(Reward):
    description = "scaled brightness"
    def __init__(self, scale: float = 1.0, invert: bool = False):
        self.scale, self.invert = scale, invert
    def score(self, batch):
        value = batch.images.mean(dim=(1, 2, 3)) * self.scale
        return -value if self.invert else value

def mean_green(batch):
    '''Mean of the green channel.'''
    return batch.images[:, 1].mean(dim=(1, 2))
mean_green.needs_source = True

def make(scale: float = 2.0):
    return Vibes(scale=scale)

ready = Vibes(scale=10.0)
not_callable = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "pslider_test_user_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "pslider_test_user_rewards"
    sys.modules.pop("pslider_test_user_rewards", None)


def test_user_rewards_module_callable(user_module):
    b = batch(sources=torch.rand(3, 3, 16, 16))
    mean = b.images.mean(dim=(1, 2, 3))
    vibes = get_reward(f"{user_module}:Vibes(scale=2, invert=yes)")
    assert vibes.name == f"{user_module}:Vibes(scale=2.0, invert=true)"
    torch.testing.assert_close(vibes(b), -2 * mean)
    green = get_reward(f"{user_module}:mean_green")
    assert green.needs_source and green.description == "Mean of the green channel."
    torch.testing.assert_close(green(b), b.images[:, 1].mean(dim=(1, 2)))
    torch.testing.assert_close(get_reward(f"{user_module}:make(scale=3)")(b), 3 * mean)
    torch.testing.assert_close(get_reward(f"{user_module}:make")(b), 2 * mean)
    torch.testing.assert_close(get_reward(f"{user_module}:ready")(b), 10 * mean)
    with pytest.raises(ValueError, match="takes no parameters"):
        get_reward(f"{user_module}:mean_green(x=1)")
    with pytest.raises(TypeError, match="not callable"):
        get_reward(f"{user_module}:not_callable")
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        get_reward(f"{user_module}:Missing")
    with pytest.raises(ImportError, match="cannot import module"):
        get_reward("pslider_no_such_module_xyz:thing")


def test_entry_point_rewards(user_module, tmp_path):
    dist = tmp_path / "pslider_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pslider-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[pareto_slider.rewards]\nvibes = {user_module}:Vibes\nbroken = pslider_no_such_module_xyz:thing\n"
    )
    listed = dict(list_rewards())
    assert listed["vibes"] == "scaled brightness"
    assert "failed to load" in listed["broken"]
    b = batch()
    reward = get_reward("vibes(scale=0.5)")
    assert reward.name == "vibes(scale=0.5)"
    torch.testing.assert_close(reward(b), 0.5 * b.images.mean(dim=(1, 2, 3)))
