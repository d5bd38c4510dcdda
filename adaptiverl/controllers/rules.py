"""Composable hyperparameter rules: each one reads the shared signals and returns a multiplier.

A rule is a small object with ``__call__(signals) -> float`` (a positive multiplier
for one knob, 1 = leave the knob at its base value), and ``state_dict``,
``load_state_dict`` and ``reset`` from :class:`~adaptiverl.controllers.base.Stateful`.
A rule is called exactly once per optimisation step; stateful rules (trend
accumulators, step counters) advance on that call.
Rules combine by product (:class:`Compose`, written ``"trend+variance"`` in names),
in the spirit of optax's chains of small transformations.

The rules and their math (``s`` is the :class:`~adaptiverl.signals.ScalarSignal`
a rule reads; ``loss`` unless stated):

* :class:`TrendRule` -- multiplicative accumulator driven by the window trend.
  With ``tau = s.trend`` (least-squares slope per step relative to the window
  mean, sign flipped for reward so that ``tau < 0`` always means "getting
  better") and ``t = s.trend_tstat`` (slope over its standard error)::

      improving  if -tau > threshold and |t| > z
      worsening  if  tau > threshold and |t| > z
      log m <- (1 - leak) * log m + log(up | down | 1)
      m <- clip(m, min_mult, max_mult)

  The significance test keeps pure noise from moving the knob; the small leak
  makes ``log m`` mean-reverting, so under stationary noise (whatever the
  asymmetry of ``up`` and ``down``) the multiplier settles to a bounded value
  instead of random-walking to a bound. After a ``down`` step, worsening evidence
  is ignored for ``cooldown`` calls (default: a quarter of the signal's window,
  so that part of the values behind a cut is replaced before the next one): the
  window still holds the values that caused the cut, and counting them again on
  every call turned one overshoot into a collapse by ``down ** window`` (seed
  001's example: the LR fell from 7x to 0.01x within 40 steps, the loss ended
  30% above AdamW's); ``ReduceLROnPlateau`` has a cooldown for the same reason.
  A loss that keeps diverging is still cut every ``cooldown + 1`` calls. This is the seed schedulers' trend
  policy (001 "trend", 003 "Trend-aware"), made noise-robust.
* :class:`VarianceRule` -- stateless damping ``m = (base + scale * v) ** power`` with
  ``v = (std / |mean|)^2`` the relative (scale-free) variance of the window: the
  same loss curve multiplied by 1000 gives the same multiplier. ``power=-1`` is
  seed 003's ``lr / (1 + lambda Var)``; ``power=+1`` lengthens an averaging
  horizon when the signal is noisy (betas/alpha).
* :class:`CosineRule` -- SGDR cosine factor (Loshchilov & Hutter, 2017,
  arXiv:1608.03983): ``m = eta + (1 - eta) * (1 + cos(pi * t_cur / T_i)) / 2``,
  ``T_i`` multiplied by ``T_mult`` at each restart. A pure function of the step
  count: it never reads (or compounds) the current LR.
* :class:`LevelRule` -- ``m = exp(gain * (ema - ref) / |ref|)`` with ``ref`` the
  first EMA value: relative level of a signal against where it started
  (``gain < 0`` for loss: "inverse-loss scaling"; ``gain > 0`` for reward: "LR
  proportional to reward").
* :class:`SlopeRule` -- stateless ``m = exp(-gain * tau)``: the instantaneous
  normalised trend ("normalised by loss magnitude").
* :class:`ThresholdRule` -- accumulator ``m <- m * factor`` while a statistic of a
  signal is above a threshold (grad-norm driven weight decay, weight-norm
  growth), bounded.
* :class:`TargetRule` -- stateless ``m = (ema / target) ** gain``: pulls a knob
  toward a target of a metric (routing entropy, routing sparsity).
* :class:`LinearRule` -- stateless ``m = 1 + gain * clip(ema, lo, hi)`` (expert
  specialisation bonus).
* :class:`SpikeRule`, :class:`RatioRule`, :class:`ClipRule` -- EnhancedSGD's loss-spike brake,
  gradient-entropy ratio and adaptive clipping (math in their docstrings).
* :class:`~adaptiverl.controllers.plateau.Plateau` -- patience / cooldown / big drop
  (``torch.optim.lr_scheduler.ReduceLROnPlateau`` semantics), in ``plateau.py``.

Every accumulating rule compounds through the one
:class:`~adaptiverl.controllers.base.BoundedAccumulator`. :class:`RuleSet` gathers one rule per
knob into a :class:`~adaptiverl.controllers.base.Controller` (what ``lr_rule=...`` builds).

:func:`make_rule` is the ONE place where rule names are parsed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from adaptiverl.controllers.base import (
    ALL_GROUPS,
    BoundedAccumulator,
    Controller,
    Multipliers,
    Stateful,
    bounded_exp,
    check_bounds,
)
from adaptiverl.signals import ScalarSignal, Signals

_EPS = 1e-12


class Rule(Stateful):
    """One knob's rule: ``__call__(signals) -> multiplier``; state through :class:`Stateful`.

    Stateful rules advance on each call (one call per optimisation step). Several rules for the
    knobs of one optimizer form a :class:`RuleSet`, the :class:`Controller` that front ends hold.
    """

    name: str = "rule"

    def __call__(self, signals: Signals) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _signal(signals: Signals, name: str) -> ScalarSignal | None:
    return signals.signals.get(name)


class Compose(Rule):
    """Product of several rules' multipliers (``"trend+variance"``)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        flat: list[Rule] = []
        for rule in rules:
            flat.extend(rule.rules if isinstance(rule, Compose) else [rule])
        if not flat:
            raise ValueError("Compose needs at least one rule")
        self.rules = flat
        self.name = "+".join(rule.name for rule in flat)

    def __call__(self, signals: Signals) -> float:
        return math.prod(rule(signals) for rule in self.rules)

    def reset(self) -> None:
        for rule in self.rules:
            rule.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"rules": [rule.state_dict() for rule in self.rules]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["rules"]) != len(self.rules):
            raise ValueError(f"Compose({self.name!r}): state has {len(state['rules'])} rules, "
                             f"this chain has {len(self.rules)}")
        for rule, sub in zip(self.rules, state["rules"], strict=True):
            rule.load_state_dict(sub)


class TrendRule(Rule):
    """Bounded, leaky multiplicative accumulator driven by the significant window trend."""

    _state_keys = ("last_direction", "cooldown_left")
    _state_children = ("accumulator",)

    def __init__(self, signal: str = "loss", *, up: float = 1.05, down: float = 0.7,
                 threshold: float = 1e-4, z: float = 3.0, leak: float = 0.01,
                 min_mult: float = 1e-3, max_mult: float = 1e3, higher_is_better: bool | None = None,
                 cooldown: int | None = None, name: str = "trend") -> None:
        if up <= 0 or down <= 0:
            raise ValueError(f"TrendRule: up and down must be > 0, got up={up}, down={down}")
        if not 0.0 <= leak < 1.0:
            raise ValueError(f"TrendRule: leak must be in [0, 1), got {leak}")
        if threshold < 0 or z < 0:
            raise ValueError(f"TrendRule: threshold and z must be >= 0, got {threshold}, {z}")
        if cooldown is not None and cooldown < 0:
            raise ValueError(f"TrendRule: cooldown must be >= 0 or None (a quarter of the signal's window), "
                             f"got {cooldown}")
        self.cooldown = cooldown
        self.signal = signal
        self.up, self.down, self.threshold, self.z = up, down, threshold, z
        self.accumulator = BoundedAccumulator(min_mult, max_mult, leak=leak, name=f"TrendRule({name})")
        self.higher_is_better = (signal == "reward") if higher_is_better is None else higher_is_better
        self.name = name
        self.last_direction = 0
        self.cooldown_left = 0

    def reset(self) -> None:
        super().reset()
        self.last_direction = 0
        self.cooldown_left = 0

    def direction(self, signals: Signals) -> int:
        """+1 improving, -1 worsening, 0 no significant trend (or too few values)."""
        sig = _signal(signals, self.signal)
        if sig is None or len(sig.values) < 3:
            return 0
        tau = -sig.trend if self.higher_is_better else sig.trend
        if abs(tau) <= self.threshold or abs(sig.trend_tstat) <= self.z:
            return 0
        return 1 if tau < 0 else -1

    def __call__(self, signals: Signals) -> float:
        direction = self.direction(signals)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            direction = max(direction, 0)
        elif direction < 0:
            sig = signals.signals[self.signal]
            self.cooldown_left = max(1, sig.window // 4) if self.cooldown is None else self.cooldown
        self.last_direction = direction
        return self.accumulator.update({1: self.up, -1: self.down, 0: 1.0}[direction])


class VarianceRule(Rule):
    """Stateless ``(base + scale * relative_variance) ** power``, bounded."""

    def __init__(self, signal: str = "loss", *, base: float = 1.0, scale: float = 1.0,
                 power: float = -1.0, min_mult: float = 1e-3, max_mult: float = 1e3,
                 name: str = "variance") -> None:
        if base <= 0 or scale < 0:
            raise ValueError(f"VarianceRule: need base > 0 and scale >= 0, got base={base}, scale={scale}")
        self.signal, self.base, self.scale, self.power = signal, base, scale, power
        self.min_mult, self.max_mult = min_mult, max_mult
        self.name = name

    def relative_variance(self, signals: Signals) -> float:
        sig = _signal(signals, self.signal)
        # a product, not ``** 2``: a huge relative spread reads inf instead of raising OverflowError
        return 0.0 if sig is None else sig.rel_std * sig.rel_std

    def __call__(self, signals: Signals) -> float:
        mult = (self.base + self.scale * self.relative_variance(signals)) ** self.power
        return min(max(mult, self.min_mult), self.max_mult)


class CosineRule(Rule):
    """SGDR factor of the step count: ``eta + (1 - eta) (1 + cos(pi t_cur / T_i)) / 2``."""

    _state_keys = ("t_cur", "t_i", "cycle")

    def __init__(self, T0: int = 200, T_mult: float = 1.0, eta_min_scale: float = 0.1,
                 name: str = "cosine") -> None:
        if T0 < 1:
            raise ValueError(f"CosineRule: T0 (cycle_length) must be >= 1, got {T0}")
        if T_mult < 1:
            raise ValueError(f"CosineRule: T_mult (cycle_mult) must be >= 1, got {T_mult}")
        if not 0.0 <= eta_min_scale <= 1.0:
            raise ValueError(f"CosineRule: eta_min_scale must be in [0, 1], got {eta_min_scale}")
        self.T0, self.T_mult, self.eta_min_scale = T0, T_mult, eta_min_scale
        self.name = name
        self.t_cur, self.t_i, self.cycle = 0, T0, 0

    def reset(self) -> None:
        self.t_cur = 0
        self.t_i = self.T0
        self.cycle = 0

    def factor(self) -> float:
        cos = 0.5 * (1.0 + math.cos(math.pi * self.t_cur / self.t_i))
        return self.eta_min_scale + (1.0 - self.eta_min_scale) * cos

    def advance(self) -> None:
        self.t_cur += 1
        if self.t_cur >= self.t_i:
            self.t_cur = 0
            self.cycle += 1
            self.t_i = max(1, round(self.t_i * self.T_mult))

    def __call__(self, signals: Signals) -> float:
        out = self.factor()
        self.advance()
        return out


class LevelRule(Rule):
    """``exp(gain * (ema - ref) / |ref|)`` with ``ref`` the first EMA seen, bounded."""

    _state_keys = ("ref",)

    def __init__(self, signal: str = "loss", *, gain: float = -1.0, min_mult: float = 0.5,
                 max_mult: float = 2.0, name: str = "level") -> None:
        check_bounds(min_mult, max_mult)
        self.signal, self.gain = signal, gain
        self.min_mult, self.max_mult = min_mult, max_mult
        self.name = name
        self.ref: float | None = None

    def reset(self) -> None:
        self.ref = None

    def __call__(self, signals: Signals) -> float:
        sig = _signal(signals, self.signal)
        if sig is None or sig.ema is None:
            return 1.0
        if self.ref is None:
            self.ref = sig.ema
        rel = (sig.ema - self.ref) / (abs(self.ref) + _EPS)
        return bounded_exp(self.gain * rel, self.min_mult, self.max_mult)


class SlopeRule(Rule):
    """Stateless ``exp(-gain * tau)`` of the normalised window trend ``tau``, bounded."""

    def __init__(self, signal: str = "loss", *, gain: float = 10.0, min_mult: float = 0.5,
                 max_mult: float = 2.0, higher_is_better: bool | None = None,
                 name: str = "slope") -> None:
        check_bounds(min_mult, max_mult)
        self.signal, self.gain = signal, gain
        self.higher_is_better = (signal == "reward") if higher_is_better is None else higher_is_better
        self.min_mult, self.max_mult = min_mult, max_mult
        self.name = name

    def __call__(self, signals: Signals) -> float:
        sig = _signal(signals, self.signal)
        if sig is None:
            return 1.0
        tau = -sig.trend if self.higher_is_better else sig.trend
        return bounded_exp(-self.gain * tau, self.min_mult, self.max_mult)


class ThresholdRule(Rule):
    """Accumulator: ``m <- m * factor`` on each call where ``stat(signal) > threshold``.

    ``stat`` is ``"ema"`` or ``"trend"``. With ``relax`` in (0, 1], calls below
    the threshold move ``log m`` back toward 0 by that fraction.
    """

    _state_children = ("accumulator",)

    def __init__(self, signal: str, *, threshold: float, factor: float = 1.5, stat: str = "ema",
                 relax: float = 0.0, min_mult: float = 1e-3, max_mult: float = 10.0,
                 name: str = "threshold") -> None:
        if stat not in ("ema", "trend"):
            raise ValueError(f"ThresholdRule: stat must be 'ema' or 'trend', got {stat!r}")
        if factor <= 0:
            raise ValueError(f"ThresholdRule: factor must be > 0, got {factor}")
        if not 0.0 <= relax <= 1.0:
            raise ValueError(f"ThresholdRule: relax must be in [0, 1], got {relax}")
        self.signal, self.threshold, self.factor, self.stat, self.relax = signal, threshold, factor, stat, relax
        self.accumulator = BoundedAccumulator(min_mult, max_mult, name=f"ThresholdRule({name})")
        self.name = name

    def __call__(self, signals: Signals) -> float:
        sig = _signal(signals, self.signal)
        if sig is not None and sig.ema is not None:
            value = sig.ema if self.stat == "ema" else sig.trend
            if value > self.threshold:
                return self.accumulator.update(self.factor, leak=0.0)
            return self.accumulator.update(1.0, leak=self.relax)
        return self.accumulator.value


class TargetRule(Rule):
    """Stateless ``(ema / target) ** gain``, bounded: > 1 above target when gain > 0."""

    def __init__(self, signal: str, *, target: float, gain: float = 1.0, min_mult: float = 0.1,
                 max_mult: float = 10.0, name: str = "target") -> None:
        if target <= 0:
            raise ValueError(f"TargetRule({signal}): target must be > 0, got {target}")
        check_bounds(min_mult, max_mult)
        self.signal, self.target, self.gain = signal, target, gain
        self.min_mult, self.max_mult = min_mult, max_mult
        self.name = name

    def __call__(self, signals: Signals) -> float:
        sig = _signal(signals, self.signal)
        if sig is None or sig.ema is None:
            return 1.0
        mult = (max(sig.ema, _EPS) / self.target) ** self.gain
        return min(max(mult, self.min_mult), self.max_mult)


class LinearRule(Rule):
    """Stateless ``1 + gain * clip(ema, lo, hi)``: a bonus proportional to a bounded metric."""

    def __init__(self, signal: str, *, gain: float, lo: float = 0.0, hi: float = 1.0,
                 name: str = "linear") -> None:
        if lo > hi:
            raise ValueError(f"LinearRule({signal}): need lo <= hi, got lo={lo}, hi={hi}")
        if 1.0 + gain * lo <= 0 or 1.0 + gain * hi <= 0:
            raise ValueError(f"LinearRule({signal}): 1 + gain * x must stay > 0 on [lo, hi], got gain={gain}")
        self.signal, self.gain, self.lo, self.hi = signal, gain, lo, hi
        self.name = name

    def __call__(self, signals: Signals) -> float:
        sig = _signal(signals, self.signal)
        if sig is None or sig.ema is None:
            return 1.0
        return 1.0 + self.gain * min(max(sig.ema, self.lo), self.hi)


class SpikeRule(Rule):
    """Loss-spike brake: ``m <- m * factor`` on a spike, geometric recovery toward 1 otherwise.

    A spike is a newest value whose z-score against the window before it exceeds the signal's
    ``spike_threshold`` (:attr:`ScalarSignal.is_spike`, at least three values seen). In log space
    (the one :class:`BoundedAccumulator`)::

        spike:  log m <- log m + log factor
        else:   log m <- (1 - 1 / recovery_steps) * log m

    so ``m`` returns to 1 with time constant ``recovery_steps`` steps.
    """

    _state_keys = ("last_spike",)
    _state_children = ("accumulator",)

    def __init__(self, signal: str = "loss", *, factor: float = 0.5, recovery_steps: int = 10,
                 min_mult: float = 1e-3, name: str = "spike") -> None:
        if not 0.0 < factor < 1.0:
            raise ValueError(f"SpikeRule: factor (loss_correction_factor) must be in (0, 1), got {factor}")
        if recovery_steps < 1:
            raise ValueError(f"SpikeRule: recovery_steps (spike_recovery_steps) must be >= 1, got {recovery_steps}")
        self.signal, self.factor, self.recovery_steps = signal, factor, recovery_steps
        self.accumulator = BoundedAccumulator(min_mult, 1.0, name=f"SpikeRule({name})")
        self.name = name
        self.last_spike = False

    def reset(self) -> None:
        super().reset()
        self.last_spike = False

    def __call__(self, signals: Signals) -> float:
        sig = _signal(signals, self.signal)
        if sig is None or not sig.ready:
            return self.accumulator.value
        self.last_spike = sig.is_spike and sig.count > 2
        if self.last_spike:
            return self.accumulator.update(self.factor, leak=0.0)
        return self.accumulator.update(1.0, leak=1.0 / self.recovery_steps)


class RatioRule(Rule):
    """``m = clip(fast / slow, min_mult, max_mult)`` of two EMAs of the newest value of a signal.

    EMA rates ``rate`` and ``rate / 10`` (``smoothing_factor`` in EnhancedSGD): a falling gradient
    entropy (the update collapsing onto a few coordinates) shortens the step, a rising one
    lengthens it. Values that are not finite are skipped.
    """

    _state_keys = ("fast", "slow", "seen")

    def __init__(self, signal: str = "grad_entropy", *, rate: float = 0.1, min_mult: float = 0.5,
                 max_mult: float = 2.0, name: str = "entropy_ratio") -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"RatioRule: rate (smoothing_factor) must be in (0, 1], got {rate}")
        check_bounds(min_mult, max_mult, "RatioRule")
        self.signal, self.rate, self.min_mult, self.max_mult = signal, rate, min_mult, max_mult
        self.name = name
        self.fast = self.slow = 0.0
        self.seen = 0

    def reset(self) -> None:
        self.fast = self.slow = 0.0
        self.seen = 0

    def __call__(self, signals: Signals) -> float:
        sig = _signal(signals, self.signal)
        if sig is not None and sig.count > self.seen and sig.last is not None:
            x, self.seen = sig.last, sig.count
            if self.seen == 1:
                self.fast = self.slow = x
            else:
                self.fast += self.rate * (x - self.fast)
                self.slow += self.rate / 10.0 * (x - self.slow)
        if self.seen == 0:
            return 1.0
        return min(max(self.fast / max(self.slow, 1e-8), self.min_mult), self.max_mult)


class ClipRule(Rule):
    """Adaptive clipping as a gradient multiplier: ``m = min(1, c / n)``, ``c = mean + k * std``.

    ``n`` is the newest value of ``raw`` (this step's gradient norm, observed before the call);
    ``mean``/``std`` are those of the ``signal`` window (past *clipped* norms), used once it holds
    ``warmup`` values (before that ``c = inf``). The caller observes ``min(n, c)`` into ``signal``
    afterwards. In the spirit of AutoClip (Seetharaman et al. 2020, arXiv:2007.14469), which uses a
    percentile of the norm history instead of ``mean + k std``.
    """

    _state_keys = ("threshold", "clipped")

    def __init__(self, signal: str = "grad_norm", raw: str = "grad_norm_raw", *, k: float = 3.0,
                 warmup: int = 10, name: str = "clip") -> None:
        if k <= 0.0 or warmup < 2:
            raise ValueError(f"ClipRule: need clip_std > 0 and clip_warmup >= 2, got {k}, {warmup}")
        self.signal, self.raw, self.k, self.warmup, self.name = signal, raw, k, warmup, name
        self.threshold = math.inf
        self.clipped = False

    def reset(self) -> None:
        self.threshold = math.inf
        self.clipped = False

    def __call__(self, signals: Signals) -> float:
        history, raw = _signal(signals, self.signal), _signal(signals, self.raw)
        self.threshold = math.inf
        if history is not None and history.count >= self.warmup:
            self.threshold = history.mean + self.k * history.std
        norm = raw.last if raw is not None and raw.last is not None else math.nan
        self.clipped = math.isfinite(norm) and norm > self.threshold
        return self.threshold / norm if self.clipped else 1.0


class RuleSet(Controller):
    """The controller built from ``lr_rule=...``-style arguments: one rule (or chain) per knob.

    ``rules`` maps a knob to its rule; ``scale_lr`` rules (the reward rule) multiply the LR too.
    Every call runs each rule once and returns ``{"*": {knob: product of its rules}}``.
    """

    def __init__(self, rules: dict[str, Rule], *, lr_factors: tuple[str, ...] = ("reward",)) -> None:
        self.rules = dict(rules)
        self.lr_factors = lr_factors
        self.last: dict[str, float] = dict.fromkeys(self.rules, 1.0)

    def knob_of(self, slot: str) -> str:
        return "lr" if slot in self.lr_factors else slot

    def __call__(self, signals: Signals) -> Multipliers:
        self.last = {slot: rule(signals) for slot, rule in self.rules.items()}
        out: dict[str, float] = {}
        for slot, mult in self.last.items():
            knob = self.knob_of(slot)
            out[knob] = out.get(knob, 1.0) * mult
        return {ALL_GROUPS: out}

    def reset(self) -> None:
        for rule in self.rules.values():
            rule.reset()
        self.last = dict.fromkeys(self.rules, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"rules": {slot: rule.state_dict() for slot, rule in self.rules.items()}, "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["rules"]) != set(self.rules):
            raise ValueError(f"RuleSet.load_state_dict: checkpoint has rules {sorted(state['rules'])}, "
                             f"this controller has {sorted(self.rules)}")
        for slot, rule in self.rules.items():
            rule.load_state_dict(state["rules"][slot])
        self.last = dict(state["last"])


# ---- names --------------------------------------------------------------------------------------
# knob -> rule name -> factory(**options). Options: cycle_length, cycle_mult (cosine).

def _cosine(restart: bool) -> Callable[..., Rule]:
    def build(cycle_length: int = 1000, cycle_mult: float = 2.0, eta_min_scale: float = 0.1,
              **_: Any) -> Rule:
        name = "cosine_restart" if restart else "cosine"
        return CosineRule(T0=cycle_length, T_mult=cycle_mult if restart else 1.0,
                          eta_min_scale=eta_min_scale, name=name)
    return build


RULES: dict[str, dict[str, Callable[..., Rule]]] = {
    "lr": {
        "trend": lambda **_: TrendRule("loss", up=1.05, down=0.7, max_mult=100.0, min_mult=1e-3),
        "variance": lambda **_: VarianceRule("loss", power=-1.0),
        "cosine": _cosine(restart=False),
        "cosine_restart": _cosine(restart=True),
    },
    # beta-like knobs (momentum, betas, alpha) are adapted on their averaging horizon
    # 1 / (1 - beta): a multiplier m gives beta' = 1 - (1 - beta) / m (base.beta_from_multiplier).
    "momentum": {
        "inverse": lambda **_: LevelRule("loss", gain=-1.0, min_mult=0.5, max_mult=2.0, name="inverse"),
        "relative": lambda **_: TrendRule("loss", up=1.02, down=0.9, min_mult=0.5, max_mult=2.0,
                                          name="relative"),
        "normalized": lambda **_: SlopeRule("loss", gain=10.0, name="normalized"),
    },
    "beta1": {
        "relative": lambda **_: TrendRule("loss", up=1.02, down=0.9, min_mult=0.5, max_mult=2.0,
                                          name="relative"),
    },
    "beta2": {
        "variance": lambda **_: VarianceRule("loss", power=1.0, min_mult=1.0, max_mult=4.0),
    },
    "alpha": {
        "stable": lambda **_: VarianceRule("loss", power=1.0, min_mult=1.0, max_mult=4.0, name="stable"),
    },
    "weight_decay": {
        "trend": lambda **_: TrendRule("loss", up=0.95, down=1.1, min_mult=0.1, max_mult=10.0),
    },
    "reward": {
        "scaling": lambda **_: LevelRule("reward", gain=1.0, min_mult=0.25, max_mult=4.0, name="scaling"),
        "trend": lambda **_: TrendRule("reward", up=1.05, down=0.7, min_mult=1e-2, max_mult=10.0),
        "variance": lambda **_: VarianceRule("reward", power=-1.0),
    },
}


def valid_rule_names(knob: str) -> list[str]:
    if knob not in RULES:
        raise ValueError(f"unknown knob {knob!r}; valid knobs: {sorted(RULES)}")
    return sorted(RULES[knob])


def make_rule(knob: str, spec: str | Rule | None, **options: Any) -> Rule | None:
    """Parse ``spec`` for ``knob``: a :class:`Rule`, ``None`` (no rule) or names joined by ``+``.

    Raises ``ValueError`` naming the knob and listing the valid names.
    """
    if spec is None or isinstance(spec, Rule):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"{knob} rule must be a name, a Rule or None, got {type(spec).__name__}")
    valid = valid_rule_names(knob)
    names = [part.strip() for part in spec.split("+")]
    unknown = [name for name in names if name not in RULES[knob]]
    if unknown or not all(names):
        raise ValueError(f"unknown {knob} rule {spec!r} ({unknown or 'empty name'}); "
                         f"valid names: {valid}, combined with '+'")
    rules = [RULES[knob][name](**options) for name in names]
    return rules[0] if len(rules) == 1 else Compose(rules)
