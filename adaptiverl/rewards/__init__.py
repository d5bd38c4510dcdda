"""Rewards: reward functions that TRL trainers take, and their composite.

Every reward here follows TRL 1.16's reward-function contract (see :mod:`adaptiverl.rewards.base`)
and works on its own as ``GRPOTrainer(reward_funcs=...)``; :class:`CompositeReward` combines them
into one. Heavy dependencies (sentence-transformers, transformers, httpx) load only when the
component that needs them is built.
"""

from __future__ import annotations

import importlib
from typing import Any

from adaptiverl.rewards.base import (
    AsyncRewardFunction,
    RewardFunction,
    completion_text,
    prompt_text,
)
from adaptiverl.rewards.composite import (
    AsyncCompositeReward,
    Component,
    CompositeReward,
    RewardComponentError,
    WeightSchedule,
)
from adaptiverl.rewards.registry import (
    RewardSpecError,
    build_reward,
    build_rewards,
    register_reward,
    registered_rewards,
)

_LAZY = {
    "RegexReward": "adaptiverl.rewards.text",
    "SubstringReward": "adaptiverl.rewards.text",
    "LengthReward": "adaptiverl.rewards.text",
    "CosineReward": "adaptiverl.rewards.cosine",
    "ClassifierReward": "adaptiverl.rewards.learned",
    "LocalJudgeReward": "adaptiverl.rewards.judge",
    "HTTPJudgeReward": "adaptiverl.rewards.judge",
    "JudgeError": "adaptiverl.rewards.judge",
    "HumanFeedbackReward": "adaptiverl.rewards.human",
}

__all__ = [
    "AsyncCompositeReward", "AsyncRewardFunction", "Component", "CompositeReward", "RewardComponentError", "RewardFunction",
    "RewardSpecError", "WeightSchedule", "build_reward", "build_rewards", "completion_text",
    "prompt_text", "register_reward", "registered_rewards", *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adaptiverl.rewards' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
