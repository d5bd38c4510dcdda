"""The shared rule table: every rule, and the Online controller, runs through the same checks.

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
import torch

from adaptiverl.controllers.online import OnlineController, StepInputs
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


class OnlineRow:
    """The Online controller (:class:`~adaptiverl.controllers.online.OnlineController`) behind the
    table's interface: ``row(signals) -> the step scale`` of one 256-element tensor that it steps.

    The loss drives the gradients the way training does: while the loss falls, consecutive
    gradients agree (the step is too small: the scale should grow); while it rises they alternate
    in sign (the steps overshoot: it should shrink); while it is flat they are noise. The
    controller sees only the tensors and the signals, as in an optimizer step.
    """

    SIZE, LR = 256, 0.01

    def __init__(self) -> None:
        self.controller = OnlineController(
            knobs=(), drift_knobs=(), knob_bounds={}, knob_scale_bounds=(0.5, 2.0), adapt_knobs=True,
            kind="fresh", hidden_size=16, scale_bounds=(1e-3, 1e3), max_step_factor=1.1, meta_lr=1e-3,
            snr_threshold=2.5, feature_sample_size=1024, seed=0)
        self.reset_problem()

    def reset_problem(self) -> None:
        self.w = torch.zeros(self.SIZE)
        self.direction = torch.linspace(-1.0, 1.0, self.SIZE)
        self.noise = torch.Generator().manual_seed(0)
        self.sign, self.last_loss = 1.0, None

    def __call__(self, signals: Signals) -> float:
        loss = signals.loss.last
        change = 0.0 if self.last_loss is None or loss is None else loss - self.last_loss
        self.last_loss = loss
        noise = torch.randn(self.SIZE, generator=self.noise)
        if change > 0:
            self.sign = -self.sign
        grad = noise if change == 0 else self.sign * self.direction + 0.3 * noise
        if not self.controller.ready(1):
            self.controller.prepare([self.w], [0], torch.device("cpu"), sharded=False)
        out = self.controller(signals, StepInputs(
            rows=[0], grads=[grad], params=[self.w], memories=[None], maximize=[False],
            tunables=((1.0, 1.0, 0.05, 1e-3, 1.0),), base_knobs=[[]], progress=None))
        scale = out.log_scales.exp().tolist()[0]
        self.controller.record([scale], [[]], all_rows=True)
        self.w -= self.LR * scale * grad
        return scale

    def state_dict(self) -> dict:
        return {"controller": self.controller.state_dict(), "w": self.w.clone(), "noise": self.noise.get_state(),
                "sign": self.sign, "last_loss": self.last_loss}

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(copy.deepcopy(state["controller"]))
        self.w = state["w"].clone()
        self.noise.set_state(state["noise"])
        self.sign, self.last_loss = state["sign"], state["last_loss"]

    def reset(self) -> None:
        self.controller.reset()
        self.reset_problem()


ROWS += [("online_controller", OnlineRow, "loss", "more")]
IDS = [row[0] for row in ROWS]


def _same(a, b) -> bool:
    """Equal, with tensors compared by value (the Online controller's state holds tensors)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_table_covers_every_registered_name() -> None:  # and the Online controller, below
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
    assert _same(original.state_dict(), fresh.state_dict()), f"{name}: reset() did not restore the initial state"


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
