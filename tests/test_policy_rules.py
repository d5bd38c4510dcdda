"""The RL rules of adaptiverl.controllers.policy_rules: the KL-adaptive factor and the anneal gate."""

from __future__ import annotations

import math
import random

import pytest

from adaptiverl.controllers.policy_rules import KL_FACTOR, AnnealGate, kl_adaptive_factor
from adaptiverl.signals import ScalarSignal


def test_kl_adaptive_factor_is_rsl_rls_rule():
    assert kl_adaptive_factor(0.001, 0.01) == KL_FACTOR == 1.5
    assert kl_adaptive_factor(0.01, 0.01) == 1.0
    assert kl_adaptive_factor(0.0199, 0.01) == 1.0
    assert kl_adaptive_factor(0.03, 0.01) == pytest.approx(1 / 1.5)
    assert kl_adaptive_factor(math.nan, 0.01) == 1.0 and kl_adaptive_factor(0.5, 0.0) == 1.0


def _gate_progress(rewards: list[float], total: int) -> list[float]:
    signal, gate, out = ScalarSignal("reward"), AnnealGate(), []
    for r in rewards:
        signal.update(r)
        out.append(gate.step(total, signal.trend_tstat, rewarded=True))
    return out


def test_anneal_gate_holds_while_reward_climbs_and_releases_when_flat():
    rng = random.Random(0)
    total = 200
    climbing = [0.2 + 0.004 * t + rng.gauss(0, 0.03) for t in range(100)]
    flat = [climbing[-1] + rng.gauss(0, 0.03) for _ in range(100)]
    progress = _gate_progress(climbing + flat, total)
    # the warm-up (5%) always advances; then it waits while the reward climbs ...
    assert progress[9] == pytest.approx(10 / total)
    assert progress[99] < 0.15
    # ... and catches up once the reward is flat: most of the flat steps count
    assert progress[-1] - progress[99] > 0.35
    # a supervised run (no reward) sees the plain fraction of steps
    gate = AnnealGate()
    assert [gate.step(total, 5.0, rewarded=False) for _ in range(3)] == pytest.approx([1 / 200, 2 / 200, 3 / 200])


def test_anneal_gate_state_round_trips():
    gate = AnnealGate()
    for _ in range(7):
        gate.step(100, 0.0, rewarded=True)
    other = AnnealGate()
    other.load_state_dict(gate.state_dict())
    assert other.step(100, 0.0, rewarded=True) == gate.step(100, 0.0, rewarded=True) == pytest.approx(0.08)
