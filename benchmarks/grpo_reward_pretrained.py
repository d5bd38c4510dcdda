"""GRPO reward over an LR grid from a pre-trained policy: the users' regime.

:mod:`benchmarks.grpo_reward` starts every run from a freshly built tiny GPT-2, whose completions
are random tokens. Users start RL from a pre-trained model. Here the same tiny GPT-2 is first
pre-trained for ``PRETRAIN_STEPS`` steps of next-token prediction on the standard library's
docstrings (:func:`adaptiverl.tiny.pretrain` on :func:`adaptiverl.tiny.python_corpus`, the
benchmark LM's text; nothing is tuned or selected on it), so its completions are English-like and
the pretrained guard of OnlineAdamW sees trained tensors. Then the quickstart GRPO task runs as in
:mod:`benchmarks.grpo_reward` (same config, rewards, steps, seeds, lr factors and figures), with
every row of that grid: constant AdamW (the AdamW-default run at 1x), AdamW with a cosine decay
(what a user of the HF Trainer's default schedules would run), schedule-free AdamW, AdamW with
rsl_rl's KL-adaptive rule (the anchor), and OnlineAdamW on the default path (stock
``trl.GRPOTrainer`` + ``AdaptiveCallback()``) and through ``AdaptiveGRPOTrainer``.

Targets: the same as :mod:`benchmarks.grpo_reward`'s for the default path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import grpo_reward

NAME = "grpo_reward_pretrained"
PRETRAIN_STEPS, QUICK_PRETRAIN_STEPS = 600, 5


def run(out_dir: Path, quick: bool = False, **kwargs: Any) -> dict[str, Any]:
    """The GRPO grid of :func:`benchmarks.grpo_reward.run` from a pre-trained policy (every row
    unless ``methods`` names some; the first report, 2026-12-07 07:48, ran adamw, the anchor and
    the default path only)."""
    kwargs.setdefault("pretrain_steps", QUICK_PRETRAIN_STEPS if quick else PRETRAIN_STEPS)
    return grpo_reward.run(out_dir, quick, name=NAME, **kwargs)
