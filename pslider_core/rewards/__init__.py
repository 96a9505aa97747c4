"""Rewards shared by the trainer, the evaluator and the reward server.

    from pslider_core.rewards import RewardBatch, get_reward, parse_reward_list
    rewards = [get_reward(spec, device="cuda") for spec in parse_reward_list("pickscore_photorealism,brightness")]
    scores = rewards[0](RewardBatch(images=images, prompts=prompts))   # float32 (N,) on CPU

See docs/rewards.md for every built-in reward and the spec syntax.
"""

from __future__ import annotations

from ..lazy import lazy_getattr

_EXPORTS = {
    **dict.fromkeys(("FunctionReward", "ModelReward", "NonFiniteScoreError", "Reward", "RewardBatch"), ".base"),
    "clear_model_cache": ".hf",
    **dict.fromkeys(("ENTRY_POINT_GROUP", "UnknownRewardError", "get_reward", "list_rewards", "register_reward"),
                    ".registry"),
    **dict.fromkeys(("format_spec", "parse_reward_list", "parse_spec"), ".spec"),
}

__all__ = sorted(_EXPORTS)

# names load on first use and the built-in rewards register when the registry is first asked, so the reward
# server's and the trainer's command lines answer --help without torch
__getattr__ = lazy_getattr(__name__, _EXPORTS)
