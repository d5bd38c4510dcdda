"""Patience / cooldown / big-drop: ``ReduceLROnPlateau`` semantics on the smoothed signal.

Each call reads the signal's EMA ``e`` (the smoothed value the shared
:class:`~adaptiverl.signals.Signals` keeps) and the window's least-squares slope ``tau``
(:attr:`~adaptiverl.signals.ScalarSignal.trend`, relative change per step, sign flipped in
``mode="max"`` so that ``tau < 0`` means "getting better"). With the relative ``threshold`` of
``torch.optim.lr_scheduler.ReduceLROnPlateau(threshold_mode="rel")``::

    improved  <=>  e < best * (1 - threshold)           (mode "min", best > 0)
    falling   <=>  tau < -threshold                      (the window still goes down faster
                                                          than threshold per call)
    bad <- 0 if improved or falling else bad + 1
    if cooldown_left > 0: cooldown_left -= 1; bad <- 0
    if bad > patience:    m <- max(m * factor, min_mult); cooldown_left <- cooldown; bad <- 0

and no call is judged before the signal holds ``min_count`` values (default: its window), so
neither the EMA (seeded by the first value) nor the slope is read before it is an average.

Why both tests: ``ReduceLROnPlateau`` is meant for one validation loss per epoch. Driven per
step on minibatch losses (as seed 004's usage example does), the best EMA so far is the minimum
of a noisy series, which a loss that keeps falling slowly fails to beat for a few steps in a row;
the plain test then halves the LR on noise until training stops (a 10-32-1 regression with
``patience=3`` ends at 1e-7). The slope of the window is the same smoothed information read as a
rate: while it says the loss still falls by more than ``threshold`` per call, that is no plateau.
A constant or noisy-flat signal has ``|tau|`` below any threshold and is a plateau: the
multiplier drops by ``factor`` once every ``patience + cooldown + 1`` calls, exactly like
``ReduceLROnPlateau``; ``patience=None`` switches the rule off.

With ``trend_guard`` (the "multi-criteria" plateau of seed 004's AdvancedPlateauMetaOptimizer) a
call also counts as good when the window trend is *significantly* downward
(:meth:`TrendRule.direction`: ``|t| > z``), even below ``threshold`` per step.
"""

from __future__ import annotations

from adaptiverl.controllers.base import BoundedAccumulator
from adaptiverl.controllers.rules import Rule, TrendRule
from adaptiverl.signals import Signals


class Plateau(Rule):
    """Multiplier that drops by ``factor`` after ``patience`` calls without progress (module docstring)."""

    _state_keys = ("best", "num_bad", "cooldown_left", "drops")
    _state_children = ("accumulator",)

    def __init__(self, signal: str = "loss", *, mode: str = "min", factor: float = 0.5,
                 patience: int | None = 10, threshold: float = 1e-4, cooldown: int = 0,
                 min_mult: float = 1e-6, min_count: int | None = None, trend_guard: bool = False,
                 name: str = "plateau") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"Plateau: mode must be 'min' or 'max', got {mode!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"Plateau: factor (big_drop / lr_factor) must be in (0, 1), got {factor}")
        if patience is not None and patience < 0:
            raise ValueError(f"Plateau: patience must be >= 0 or None, got {patience}")
        if cooldown < 0:
            raise ValueError(f"Plateau: cooldown must be >= 0, got {cooldown}")
        if threshold < 0:
            raise ValueError(f"Plateau: threshold must be >= 0, got {threshold}")
        if min_count is not None and min_count < 0:
            raise ValueError(f"Plateau: min_count must be >= 0 or None (the signal's window), got {min_count}")
        self.signal, self.mode, self.factor, self.patience = signal, mode, factor, patience
        self.threshold, self.cooldown, self.min_count = threshold, cooldown, min_count
        self.accumulator = BoundedAccumulator(min_mult, 1.0, name="Plateau")
        self._guard = TrendRule(signal, higher_is_better=(mode == "max")) if trend_guard else None
        self.name = name
        self.best: float | None = None
        self.num_bad = self.cooldown_left = self.drops = 0

    def reset(self) -> None:
        super().reset()
        self.best = None
        self.num_bad = self.cooldown_left = self.drops = 0

    @property
    def mult(self) -> float:
        return self.accumulator.value

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - abs(self.best) * self.threshold
        return value > self.best + abs(self.best) * self.threshold

    def _falling(self, signals: Signals) -> bool:
        sig = signals.signals[self.signal]
        if len(sig.values) < 3:
            return False
        tau = -sig.trend if self.mode == "max" else sig.trend
        if tau < -self.threshold:
            return True
        return self._guard is not None and self._guard.direction(signals) > 0

    def __call__(self, signals: Signals) -> float:
        sig = signals.signals.get(self.signal)
        if self.patience is None or sig is None or sig.ema is None:
            return self.mult
        if sig.count < (sig.window if self.min_count is None else self.min_count):
            return self.mult
        if self._improved(sig.ema):
            self.best = sig.ema
            self.num_bad = 0
        elif self._falling(signals):
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.num_bad = 0
        if self.num_bad > self.patience:
            self.accumulator.update(self.factor)
            self.cooldown_left = self.cooldown
            self.num_bad = 0
            self.drops += 1
        return self.mult

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_left > 0
