"""Patience / cooldown / big-drop: ``ReduceLROnPlateau`` semantics as a multiplier rule.

Each call compares the signal's EMA ``e`` with the best value so far (``mode``
``"min"`` for a loss, ``"max"`` for a reward), with a relative ``threshold`` as in
``torch.optim.lr_scheduler.ReduceLROnPlateau(threshold_mode="rel")``::

    improved  <=>  e < best * (1 - threshold)      (mode "min", best > 0)
    bad <- 0 if improved else bad + 1
    if cooldown_left > 0: cooldown_left -= 1; bad <- 0
    if bad > patience:    m <- max(m * factor, min_mult); cooldown_left <- cooldown; bad <- 0

With ``trend_guard`` (the "multi-criteria" plateau of seed 004's
AdvancedPlateauMetaOptimizer) a call also counts as improving when the window
trend is significantly downward (:meth:`TrendRule.direction` says so), so a
loss that is still falling slowly but has not yet beaten its best by
``threshold`` is not cut. A constant or noisy-flat signal is a plateau: the
multiplier drops by ``factor`` once every ``patience + cooldown + 1`` calls,
exactly like ``ReduceLROnPlateau``; pass ``patience=None`` to switch it off.
"""

from __future__ import annotations

from adaptiverl.controllers.rules import Rule, TrendRule
from adaptiverl.signals import Signals


class Plateau(Rule):
    """Multiplier that drops by ``factor`` after ``patience`` non-improving calls."""

    _state_keys = ("best", "num_bad", "cooldown_left", "mult", "drops")

    def __init__(self, signal: str = "loss", *, mode: str = "min", factor: float = 0.5,
                 patience: int | None = 10, threshold: float = 1e-4, cooldown: int = 0,
                 min_mult: float = 1e-6, trend_guard: bool = False, name: str = "plateau") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"Plateau: mode must be 'min' or 'max', got {mode!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"Plateau: factor (big_drop / lr_factor) must be in (0, 1), got {factor}")
        if patience is not None and patience < 0:
            raise ValueError(f"Plateau: patience must be >= 0 or None, got {patience}")
        if cooldown < 0:
            raise ValueError(f"Plateau: cooldown must be >= 0, got {cooldown}")
        self.signal, self.mode, self.factor, self.patience = signal, mode, factor, patience
        self.threshold, self.cooldown, self.min_mult = threshold, cooldown, min_mult
        self._guard = TrendRule(signal, higher_is_better=(mode == "max")) if trend_guard else None
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.best: float | None = None
        self.num_bad = 0
        self.cooldown_left = 0
        self.mult = 1.0
        self.drops = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - abs(self.best) * self.threshold
        return value > self.best + abs(self.best) * self.threshold

    def __call__(self, signals: Signals) -> float:
        sig = signals.signals.get(self.signal)
        if self.patience is None or sig is None or sig.ema is None:
            return self.mult
        if self._improved(sig.ema):
            self.best = sig.ema
            self.num_bad = 0
        elif self._guard is not None and self._guard.direction(signals) > 0:
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.num_bad = 0
        if self.num_bad > self.patience:
            self.mult = max(self.mult * self.factor, self.min_mult)
            self.cooldown_left = self.cooldown
            self.num_bad = 0
            self.drops += 1
        return self.mult

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_left > 0
