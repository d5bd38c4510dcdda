"""The controller behind :class:`~adaptiverl.optim.AdaptiveScheduler` (seed 003): trend, reward, plateau, variance, cosine.

Per call (one per optimizer step), with multipliers, never absolute LRs::

    A_t  = trend_t * reward_t * plateau_t            (bounded accumulators; advance only when
                                                      a new loss / reward has been observed)
    m_t  = A_t * var_t * cosine(t)                   (the LR multiplier)
    h_t  = horizon multiplier of the momentum        (reward direction; see below)

* ``trend_t``: :class:`~adaptiverl.controllers.rules.TrendRule` on the loss (``up_factor`` on a
  significant downward window trend steeper than ``min_rel_improve`` per step, ``down_factor`` on
  a significant upward one; slightly leaky in log space so noise cannot random-walk it to a bound).
* ``reward_t``: the same rule on the reward (``reward_up`` / ``reward_down``) when ``use_reward``.
* ``plateau_t``: :class:`~adaptiverl.controllers.plateau.Plateau` -- ``big_drop`` after
  ``patience`` steps without progress of the smoothed loss, then ``cooldown`` steps of rest.
* ``var_t``: :class:`~adaptiverl.controllers.rules.VarianceRule`, ``1 / (var_damp_base +
  var_damp_scale * v)`` with ``v`` the scale-free relative variance of the loss window; stateless,
  it never compounds (the seed's pseudo-code divided the already-damped LR every step).
* ``cosine(t)``: :class:`~adaptiverl.controllers.rules.CosineRule` (SGDR, Loshchilov & Hutter
  2017), a pure function of the step count on top of the adaptive base (the seed's overlay took
  the current, already cosine-scaled LR as the next maximum and compounded too). Its clock
  advances once per call from the first recorded loss on, the seed's phase: the step before any
  loss runs at the base LR, the next one at ``cosine(0)``.
* Momentum (the seed's "momentum + momentum_up when the reward improves, momentum *
  momentum_down when it worsens"): one :class:`~adaptiverl.controllers.base.BoundedAccumulator`
  ``h`` on the momentum's averaging horizon (the one beta mapping,
  :func:`~adaptiverl.controllers.base.beta_from_multiplier`). Its factors are the seed's two steps
  taken from the reference momentum ``mu`` (the first group's)::

      f_up   = (1 - mu) / (1 - mu - momentum_up)        (mu -> mu + momentum_up, at most momentum_max)
      f_down = (1 - mu) / (1 - mu * momentum_down)      (mu -> mu * momentum_down)

  so the first step reproduces the seed exactly and later ones compound on the horizon; ``h`` is
  bounded so that ``mu`` maps into ``[momentum_min, momentum_max]``.
"""

from __future__ import annotations

import math

from adaptiverl.controllers.base import (
    ALL_GROUPS,
    BoundedAccumulator,
    Controller,
    Multipliers,
    horizon_multiplier,
)
from adaptiverl.controllers.plateau import Plateau
from adaptiverl.controllers.rules import CosineRule, TrendRule, VarianceRule
from adaptiverl.signals import Signals


class FeedbackSchedule(Controller):
    """Seed 003's feedback policies as one controller (module docstring); ``factors`` holds the last ones."""

    _state_keys = ("loss_seen", "reward_seen", "factors")
    _state_children = ("trend", "reward_trend", "plateau", "cosine", "momentum")

    def __init__(self, *, up_factor: float, down_factor: float, min_rel_improve: float,
                 var_damp_base: float, var_damp_scale: float, use_reward: bool, reward_up: float,
                 reward_down: float, momentum_up: float, momentum_down: float, patience: int | None,
                 big_drop: float, cooldown: int, use_cosine: bool, T0: int, T_mult: float,
                 eta_min_scale: float, min_mult: float, max_mult: float, reference_momentum: float | None,
                 momentum_min: float, momentum_max: float) -> None:
        self.trend = TrendRule("loss", up=up_factor, down=down_factor, threshold=min_rel_improve,
                               min_mult=min_mult, max_mult=max_mult)
        self.reward_trend = (TrendRule("reward", up=reward_up, down=reward_down, min_mult=min_mult,
                                       max_mult=max_mult) if use_reward else None)
        self.plateau = Plateau("loss", factor=big_drop, patience=patience, cooldown=cooldown,
                               threshold=min_rel_improve, min_mult=min_mult)
        self.variance = VarianceRule("loss", base=var_damp_base, scale=var_damp_scale, power=-1.0,
                                     min_mult=0.0, max_mult=1.0 / var_damp_base)
        self.cosine = CosineRule(T0=T0, T_mult=T_mult, eta_min_scale=eta_min_scale) if use_cosine else None
        self.momentum: BoundedAccumulator | None = None
        self.momentum_factors = (1.0, 1.0)
        if use_reward and reference_momentum is not None and reference_momentum > 0.0:
            mu = reference_momentum
            if not momentum_up >= 0.0:
                raise ValueError(f"momentum_up must be >= 0, got {momentum_up}")
            if not 0.0 < momentum_down <= 1.0:
                raise ValueError(f"momentum_down must be in (0, 1], got {momentum_down}")
            self.momentum_factors = (horizon_multiplier(mu, max(mu, min(mu + momentum_up, momentum_max))),
                                     horizon_multiplier(mu, max(mu * momentum_down, momentum_min)))
            self.momentum = BoundedAccumulator(min(1.0, horizon_multiplier(mu, momentum_min)),
                                               max(1.0, horizon_multiplier(mu, momentum_max)),
                                               name="momentum horizon")
        self.loss_seen = self.reward_seen = 0
        self.factors: dict[str, float] = {}

    def reset(self) -> None:
        super().reset()
        self.loss_seen = self.reward_seen = 0
        self.factors = {}

    @property
    def adaptive_mult(self) -> float:
        """``A_t``: the product of the accumulating factors (trend, reward, plateau)."""
        return math.prod(self.factors.get(name, 1.0) for name in ("trend", "reward", "plateau"))

    def __call__(self, signals: Signals) -> Multipliers:
        if signals.loss.count > self.loss_seen:
            self.loss_seen = signals.loss.count
            self.factors["trend"] = self.trend(signals)
            self.factors["plateau"] = self.plateau(signals)
        if self.reward_trend is not None and signals.reward.count > self.reward_seen:
            self.reward_seen = signals.reward.count
            self.factors["reward"] = self.reward_trend(signals)
            direction = self.reward_trend.last_direction
            if self.momentum is not None and direction != 0:
                self.momentum.update(self.momentum_factors[0 if direction > 0 else 1])
        self.factors["variance"] = self.variance(signals)
        self.factors["cosine"] = self.cosine(signals) if self.cosine is not None and signals.loss.count else 1.0
        knobs = {"lr": self.adaptive_mult * self.factors["variance"] * self.factors["cosine"]}
        if self.momentum is not None:
            knobs["momentum"] = self.momentum.value
        return {ALL_GROUPS: knobs}
