"""Patience / cooldown / big-drop: ``ReduceLROnPlateau`` semantics on the smoothed signal.

The value judged is the smoothed signal the shared :class:`~adaptiverl.signals.Signals` keeps:
the EMA ``e`` when the rule is judged on every call (``interval=1``), the window mean ``mu`` when
it is judged once per ``interval`` new values. With the relative ``threshold`` of
``torch.optim.lr_scheduler.ReduceLROnPlateau(threshold_mode="rel")``, per judgement::

    improved  <=>  v < best * (1 - threshold)           (mode "min", best > 0)
    best <- min(best, v + noise_z * se(v)) if improved  (the first judgement sets best)
    bad <- 0 if improved else bad + 1
    if cooldown_left > 0: cooldown_left -= 1; bad <- 0
    if bad > patience:    m <- max(m * factor, min_mult); cooldown_left <- cooldown; bad <- 0

and nothing is judged before the signal holds ``min_count`` values (default: its window).
``se(v)`` is the standard error of the judged value from the window's standard deviation
``s``: ``s * sqrt((1 - beta) / (1 + beta))`` for the EMA (its stationary noise), ``s / sqrt(n)``
for a window mean. With ``noise_z = 0`` this is ``ReduceLROnPlateau`` exactly.

Why ``noise_z`` (a significance test): ``ReduceLROnPlateau`` is meant for one validation loss
per epoch. Driven per step on minibatch losses (as seed 004's usage example does), the best EMA so
far is the minimum of a noisy series, an outlier that a loss which keeps falling slowly fails to
beat for several steps in a row: judged per step with ``patience=3`` and ``noise_z=0``, a 10-32-1
regression had its LR halved down to 1e-7 within 200 steps and ended at 30x AdamW's loss. Recording
a best ``noise_z`` standard errors above the value that set it asks each later value to beat a
level noise alone could have reached: with ``noise_z=2`` the same run (and five more seeds, 400
steps) keeps its LR and ends exactly where AdamW alone does, while a flat loss with 20% noise is
still cut within 200 calls, and an exactly flat one (``se = 0``) at call ``patience + 2`` like
``ReduceLROnPlateau``. ``interval=N`` judges the mean of each block of ``N`` new values instead
(``patience`` then counts blocks). A constant signal is a plateau: the multiplier drops by
``factor`` once every ``patience + cooldown + 1`` judgements; ``patience=None`` switches the rule
off.

With ``trend_guard`` (the "multi-criteria" plateau of seed 004's AdvancedPlateauMetaOptimizer) a
judgement also counts as good when the window trend is significantly downward
(:meth:`TrendRule.direction`: ``|t| > z``), even if it has not beaten the best by ``threshold``.
"""

from __future__ import annotations

import math

from adaptiverl.controllers.base import BoundedAccumulator
from adaptiverl.controllers.rules import Rule, TrendRule
from adaptiverl.signals import ScalarSignal, Signals


class Plateau(Rule):
    """Multiplier that drops by ``factor`` after ``patience`` calls without progress (module docstring)."""

    _state_keys = ("best", "num_bad", "cooldown_left", "drops", "judged_count")
    _state_children = ("accumulator",)

    def __init__(self, signal: str = "loss", *, mode: str = "min", factor: float = 0.5,
                 patience: int | None = 10, threshold: float = 1e-4, cooldown: int = 0,
                 min_mult: float = 1e-6, min_count: int | None = None, interval: int = 1,
                 trend_guard: bool = False, noise_z: float = 0.0, name: str = "plateau") -> None:
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
        if interval < 1:
            raise ValueError(f"Plateau: interval (judge_every) must be >= 1, got {interval}")
        if not (math.isfinite(noise_z) and noise_z >= 0.0):
            raise ValueError(f"Plateau: noise_z must be a finite number >= 0, got {noise_z}")
        if min_count is not None and min_count < 0:
            raise ValueError(f"Plateau: min_count must be >= 0 or None (the signal's window), got {min_count}")
        self.signal, self.mode, self.factor, self.patience = signal, mode, factor, patience
        self.threshold, self.cooldown, self.min_count, self.interval = threshold, cooldown, min_count, interval
        self.noise_z = noise_z
        self.accumulator = BoundedAccumulator(min_mult, 1.0, name="Plateau")
        self._guard = TrendRule(signal, higher_is_better=(mode == "max")) if trend_guard else None
        self.name = name
        self.best: float | None = None
        self.num_bad = self.cooldown_left = self.drops = self.judged_count = 0

    def reset(self) -> None:
        super().reset()
        self.best = None
        self.num_bad = self.cooldown_left = self.drops = self.judged_count = 0

    @property
    def mult(self) -> float:
        return self.accumulator.value

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - abs(self.best) * self.threshold
        return value > self.best + abs(self.best) * self.threshold

    def _new_best(self, value: float, sig: ScalarSignal) -> float:
        """The best so far after an improvement to ``value``: ``value`` moved ``noise_z`` standard
        errors of the judged value toward worse, never past the previous best."""
        if self.noise_z == 0.0:
            return value
        if self.interval == 1:  # the EMA of the window's noise: std * sqrt((1 - beta) / (1 + beta))
            se = sig.std * math.sqrt((1.0 - sig.beta) / (1.0 + sig.beta))
        else:
            se = sig.std / math.sqrt(len(sig.values))
        if self.mode == "min":
            return value + self.noise_z * se if self.best is None else min(self.best, value + self.noise_z * se)
        return value - self.noise_z * se if self.best is None else max(self.best, value - self.noise_z * se)

    def __call__(self, signals: Signals) -> float:
        sig = signals.signals.get(self.signal)
        if self.patience is None or sig is None or sig.ema is None:
            return self.mult
        if sig.count < (sig.window if self.min_count is None else self.min_count):
            return self.mult
        if self.judged_count and sig.count < self.judged_count + self.interval:
            return self.mult
        self.judged_count = sig.count
        value = sig.ema if self.interval == 1 else sig.mean
        if self._improved(value):
            self.best = self._new_best(value, sig)
            self.num_bad = 0
        elif self._guard is not None and self._guard.direction(signals) > 0:
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
