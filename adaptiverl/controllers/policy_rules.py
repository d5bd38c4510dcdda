"""Rules that steer the step size by what RL practitioners watch: policy change and reward trend.

Pure functions and small state, scalar signals in, log-multipliers out; no optimizer in sight, so
the Online controller and the benchmarks' anchors share one definition:

* :func:`kl_adaptive_factor`: the KL-adaptive learning rate of robot RL (rsl_rl's PPO,
  rl_games, skrl; Schulman et al. 2017): multiply the lr by 1.5 when the policy change per update
  is below half a target, divide by 1.5 above twice it.
* :class:`KLTarget`: the target the user never sets. The first ``calibration`` measured changes at
  the given lr are a sample of what that lr does; the target starts at their median, clipped to
  ``[TARGET_LO, TARGET_HI]`` nats per token: a reasonable lr keeps its own pace and a hundredfold
  one is pulled down to the ceiling (``TARGET_HI`` is the largest per-token policy change at
  which no benchmark-disjoint GRPO run collapsed, see docs/online.md).
* :class:`AnnealGate`: lets a horizon anneal advance only on steps where the reward is not
  significantly climbing: ``reward_trend_tstat`` below ``CLIMB_TSTAT`` releases the gate.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

#: The rsl_rl rule's factor and thresholds (relative to the target).
KL_FACTOR, KL_LOW, KL_HIGH = 1.5, 0.5, 2.0
#: Bounds of the self-set per-token KL target (nats).
TARGET_LO, TARGET_HI = 1e-4, 2e-2
#: A reward trend with a t-statistic above this is climbing: the anneal waits.
CLIMB_TSTAT = 1.0


def kl_adaptive_factor(kl: float, target: float) -> float:
    """``1.5`` when ``kl < target / 2``, ``1 / 1.5`` when ``kl > 2 * target``, else 1 (rsl_rl's rule)."""
    if not (math.isfinite(kl) and target > 0):
        return 1.0
    if kl < KL_LOW * target:
        return KL_FACTOR
    if kl > KL_HIGH * target:
        return 1.0 / KL_FACTOR
    return 1.0


class KLTarget:
    """A per-token KL target set from the run's own first measurements, within fixed bounds."""

    def __init__(self, calibration: int = 5) -> None:
        if calibration < 1:
            raise ValueError(f"KLTarget: calibration must be >= 1, got {calibration}")
        self.calibration = calibration
        self.seen: list[float] = []
        self.value: float | None = None

    def update(self, kl: float) -> float | None:
        """Fold in one measured change; the target once calibrated (None before)."""
        if self.value is None and math.isfinite(kl):
            self.seen.append(kl)
            if len(self.seen) >= self.calibration:
                self.value = min(TARGET_HI, max(TARGET_LO, statistics.median(self.seen)))
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"calibration": self.calibration, "seen": list(self.seen), "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calibration, self.seen, self.value = state["calibration"], list(state["seen"]), state["value"]


class AnnealGate:
    """Effective training progress for a horizon anneal that advances only on evidence.

    ``step(reward_tstat, rewarded)`` once per optimizer step: without rewards (a supervised run)
    progress is the true fraction of steps done, unchanged; with rewards, a step counts towards the
    anneal only while the reward trend is not climbing (``t < CLIMB_TSTAT``). The warm-up part of
    a schedule (``progress <= warmup``) always advances, so a too-large lr is still eased in.
    """

    def __init__(self, warmup: float = 0.05) -> None:
        self.warmup = warmup
        self.steps = 0.0

    def step(self, total_steps: int, reward_tstat: float, rewarded: bool) -> float:
        """Advance by one step when allowed; returns the effective progress in [0, 1]."""
        progress = self.steps / total_steps
        climbing = rewarded and math.isfinite(reward_tstat) and reward_tstat > CLIMB_TSTAT
        if not climbing or progress < self.warmup:
            self.steps += 1.0
        return min(1.0, self.steps / total_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warmup, self.steps = state["warmup"], state["steps"]
