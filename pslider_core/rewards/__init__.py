"""Rewards shared by the trainer, the evaluator and the reward server.

    from pslider_core.rewards import RewardBatch, get_reward, parse_reward_list
    rewards = [get_reward(spec, device="cuda") for spec in parse_reward_list("pickscore_photorealism,brightness")]
    scores = rewards[0](RewardBatch(images=images, prompts=prompts))   # float32 (N,) on CPU

See docs/rewards.md for every built-in reward and the spec syntax.
"""

from . import aesthetic, clip, fidelity, image_stats, judge, video  # noqa: F401  (register the built-ins)
from ..toy import rewards as toy_rewards  # noqa: F401  (the toy world's rewards: toy_color, toy_sketch, toy_size)
from .base import FunctionReward, ModelReward, NonFiniteScoreError, Reward, RewardBatch
from .hf import clear_model_cache
from .registry import ENTRY_POINT_GROUP, UnknownRewardError, get_reward, list_rewards, register_reward
from .spec import format_spec, parse_reward_list, parse_spec

__all__ = [
    "ENTRY_POINT_GROUP",
    "FunctionReward",
    "ModelReward",
    "NonFiniteScoreError",
    "Reward",
    "RewardBatch",
    "UnknownRewardError",
    "clear_model_cache",
    "format_spec",
    "get_reward",
    "list_rewards",
    "parse_reward_list",
    "parse_spec",
    "register_reward",
]
