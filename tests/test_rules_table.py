"""The shared rule table: every rule runs through the same checks.

Checks: bounded, finite, positive output on constant signals; state_dict round
trip (a restored rule continues exactly like the original); direction of change
on an improving vs a worsening signal (loss falling vs rising, reward rising vs
falling), or no direction for rules that read only the window's spread or time.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable

import pytest

from adaptiverl.controllers.plateau import Plateau
from adaptiverl.controllers.rules import (
    RULES,
    Compose,
    CosineRule,
    LinearRule,
    Rule,
    TargetRule,
    ThresholdRule,
    TrendRule,
    VarianceRule,
    make_rule,
    valid_rule_names,
)
from adaptiverl.signals import Signals

# (factory, signal it reads, expected relation of the multiplier: improving vs worsening)
# "more": larger when the signal improves; "less": smaller; "same": direction-blind.
_NAMED_EXPECTATIONS = {
    ("lr", "trend"): "more", ("lr", "variance"): "same", ("lr", "cosine"): "same",
    ("lr", "cosine_restart"): "same",
    ("momentum", "inverse"): "more", ("momentum", "relative"): "more", ("momentum", "normalized"): "more",
    ("beta1", "relative"): "more", ("beta2", "variance"): "same", ("alpha", "stable"): "same",
    ("weight_decay", "trend"): "less",
    ("reward", "scaling"): "more", ("reward", "trend"): "more", ("reward", "variance"): "same",
}

ROWS: list[tuple[str, Callable[[], Rule], str, str]] = [
    (f"{knob}/{name}", (lambda k=knob, n=name: make_rule(k, n, cycle_length=7, cycle_mult=2)),
     "reward" if knob == "reward" else "loss", expectation)
    for (knob, name), expectation in _NAMED_EXPECTATIONS.items()
]
ROWS += [
    ("plateau", lambda: Plateau("loss", patience=3, cooldown=2), "loss", "more"),
    ("plateau_guarded", lambda: Plateau("loss", patience=3, trend_guard=True), "loss", "more"),
    ("plateau_reward", lambda: Plateau("reward", mode="max", patience=3), "reward", "more"),
    ("threshold_trend", lambda: ThresholdRule("loss", threshold=0.0, stat="trend", factor=1.2), "loss", "less"),
    ("target", lambda: TargetRule("loss", target=1.5, gain=1.0), "loss", "less"),
    ("linear", lambda: LinearRule("loss", gain=0.5, lo=0.0, hi=3.0), "loss", "less"),
    ("compose", lambda: make_rule("lr", "trend+variance+cosine_restart", cycle_length=5), "loss", "more"),
]
IDS = [row[0] for row in ROWS]


def test_table_covers_every_registered_name() -> None:
    registered = {(knob, name) for knob, names in RULES.items() for name in names}
    assert registered == set(_NAMED_EXPECTATIONS)


def _feed(rule: Rule, signal: str, values: list[float]) -> list[float]:
    signals = Signals(window=20)
    out = []
    for value in values:
        signals.observe(**{signal: value})
        out.append(rule(signals))
    return out


def _ramp(improving: bool, signal: str) -> list[float]:
    """40 steps from 1.5 going steadily up or down (up = improving for a reward)."""
    step = 0.02 if (signal == "reward") == improving else -0.02
    return [1.5 + step * k for k in range(40)]


def _mirrored(rising: bool) -> list[float]:
    """20 flat values at the mean, then a 20-step ramp over the same value set either way."""
    ramp = [1.0 + 0.05 * k for k in range(20)]
    return [sum(ramp) / len(ramp)] * 20 + (ramp if rising else ramp[::-1])


@pytest.mark.parametrize(("name", "factory", "signal", "expectation"), ROWS, ids=IDS)
def test_bounded_on_constant_signal(name: str, factory: Callable[[], Rule], signal: str,
                                    expectation: str) -> None:
    outputs = _feed(factory(), signal, [1.0] * 200)
    assert all(math.isfinite(m) and 1e-6 <= m <= 1e6 for m in outputs), (name, min(outputs), max(outputs))
    if isinstance(factory(), (TrendRule, VarianceRule)):
        assert set(outputs) == {1.0}, name  # no trend, no variance: no change at all


@pytest.mark.parametrize(("name", "factory", "signal", "expectation"), ROWS, ids=IDS)
def test_state_dict_round_trip(name: str, factory: Callable[[], Rule], signal: str, expectation: str) -> None:
    rng = random.Random(0)
    values = [1.0 + 0.02 * t + 0.1 * rng.random() for t in range(60)]
    original, signals = factory(), Signals(window=20)
    for value in values[:40]:
        signals.observe(**{signal: value})
        original(signals)
    restored = factory()
    restored.load_state_dict(copy.deepcopy(original.state_dict()))
    signals_copy = copy.deepcopy(signals)
    for value in values[40:]:
        signals.observe(**{signal: value})
        signals_copy.observe(**{signal: value})
        assert restored(signals_copy) == original(signals), name
    original.reset()
    fresh = factory()
    assert original.state_dict() == fresh.state_dict(), f"{name}: reset() did not restore the initial state"


@pytest.mark.parametrize(("name", "factory", "signal", "expectation"), ROWS, ids=IDS)
def test_direction_of_change(name: str, factory: Callable[[], Rule], signal: str, expectation: str) -> None:
    if expectation == "same":  # the window holds the same values, in opposite orders
        rising, falling = (_feed(factory(), signal, _mirrored(up))[-1] for up in (True, False))
        assert rising == pytest.approx(falling, rel=1e-12), (name, rising, falling)
        return
    improving = _feed(factory(), signal, _ramp(True, signal))[-1]
    worsening = _feed(factory(), signal, _ramp(False, signal))[-1]
    if expectation == "more":
        assert improving > worsening, (name, improving, worsening)
    elif expectation == "less":
        assert improving < worsening, (name, improving, worsening)


def test_make_rule_parses_combinations_and_rejects_unknown_names() -> None:
    rule = make_rule("lr", "trend+variance")
    assert isinstance(rule, Compose) and [r.name for r in rule.rules] == ["trend", "variance"]
    assert make_rule("lr", None) is None
    with pytest.raises(ValueError, match=r"unknown lr rule 'trend\+bogus'.*cosine_restart"):
        make_rule("lr", "trend+bogus")
    with pytest.raises(ValueError, match="valid knobs"):
        valid_rule_names("learning_rate")
    with pytest.raises(ValueError, match="momentum rule must be a name"):
        make_rule("momentum", 3)  # type: ignore[arg-type]


def test_trend_rule_ignores_noise_and_stays_bounded_under_it() -> None:
    rng = random.Random(1)
    noisy = [1.0 + 0.3 * rng.gauss(0.0, 1.0) for _ in range(3000)]
    outputs = _feed(TrendRule("loss", up=1.05, down=0.7), "loss", noisy)
    assert min(outputs[1000:]) > 0.05 and max(outputs[1000:]) < 20.0


def test_cosine_rule_restarts_at_full_value_with_growing_cycles() -> None:
    outputs = _feed(CosineRule(T0=4, T_mult=2, eta_min_scale=0.1), "loss", [1.0] * 13)
    restarts = [t for t, m in enumerate(outputs) if m == 1.0]
    assert restarts == [0, 4, 12]  # cycles of 4, then 8 steps
    assert min(outputs) >= 0.1


def test_variance_rule_is_scale_free() -> None:
    rng = random.Random(2)
    values = [1.0 + 0.2 * rng.random() for _ in range(30)]
    small = _feed(VarianceRule("loss"), "loss", values)
    large = _feed(VarianceRule("loss"), "loss", [1000.0 * v for v in values])
    assert small == pytest.approx(large, rel=1e-9)
    assert small[-1] < 1.0


def test_trend_rule_cuts_once_per_cooldown_instead_of_once_per_call() -> None:
    """After a cut the window still holds the values that caused it: no second cut until it refreshed."""
    rule = TrendRule("loss", up=1.05, down=0.5, leak=0.0, cooldown=4)
    directions = []
    signals = Signals(window=20)
    for t in range(30):
        signals.observe(loss=1.0 * 1.05 ** t)
        rule(signals)
        directions.append(rule.last_direction)
    cuts = [t for t, d in enumerate(directions) if d < 0]
    assert len(cuts) >= 5 and all(b - a == 5 for a, b in zip(cuts, cuts[1:], strict=False))
    assert rule.accumulator.value == pytest.approx(0.5 ** len(cuts))
    eager = TrendRule("loss", up=1.05, down=0.5, leak=0.0, cooldown=0)
    assert _feed(eager, "loss", [1.05 ** t for t in range(30)])[-1] < rule.accumulator.value / 10  # at its floor
