"""AdaptiveScheduler (seed 003): a gradient-free LR/momentum scheduler driven by loss and reward.

The seed's pseudo-code compounds in two places: it divides the already-damped LR
by ``(1 + lambda Var)`` on every step, so the LR decays geometrically even on a
flat loss, and its cosine overlay takes the current (already cosine-scaled) LR as
the next maximum, so the cosine compounds too. This implementation separates what
accumulates from what does not. Per param group ``g`` with initial LR ``base_g``::

    A_t       = trend_t * reward_t * plateau_t                 (bounded accumulators)
    adaptive_g = clip(base_g * A_t, lr_min, lr_max)           ("adaptive base")
    lr_g(t)   = clip(adaptive_g / (var_damp_base + var_damp_scale * v_t) * cosine(t),
                     lr_min, lr_max)

* ``trend_t``: :class:`~adaptiverl.controllers.rules.TrendRule` on the loss
  (``up_factor`` on a significant downward window trend steeper than
  ``min_rel_improve`` per step, ``down_factor`` on a significant upward one,
  nothing otherwise; slightly leaky in log space so noise cannot random-walk it
  to a bound).
* ``reward_t``: the same rule on the reward (``reward_up``/``reward_down``) when
  ``use_reward``; the reward's direction also moves momentum:
  ``m + momentum_up`` when it improves, ``m * momentum_down`` when it worsens.
* ``plateau_t``: :class:`~adaptiverl.controllers.plateau.Plateau` -- ``big_drop``
  after ``patience`` steps without a new best loss EMA, then ``cooldown`` steps
  of rest (``ReduceLROnPlateau`` semantics; ``patience=None`` switches it off).
* ``v_t``: the relative variance ``(std / |mean|)^2`` of the last ``var_window``
  losses -- scale-free, so a loss in nats and the same loss times 1000 are
  damped alike. A stateless factor: it never compounds.
* ``cosine(t)``: SGDR factor ``eta + (1 - eta)(1 + cos(pi t_cur / T_i)) / 2``,
  ``eta = eta_min_scale``, ``T_i`` starting at ``T0`` and multiplied by ``T_mult``
  at each restart. A stateless function of the step count on top of the adaptive
  base: its maximum is the adaptive base, its floor ``eta_min_scale`` times it.

Consequences (tested): a constant loss leaves the LR exactly constant until the
patience rule fires (one ``big_drop``, then constant again); a noisy but flat
loss settles to a bounded LR (the damping is a fixed factor, the trend
accumulator mean-reverts); a steadily falling loss raises the LR up to, never
beyond, ``lr_max``. The scheduler never reads weights or gradients.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from adaptiverl.controllers.plateau import Plateau
from adaptiverl.controllers.rules import CosineRule, Rule, TrendRule, VarianceRule
from adaptiverl.signals import Signals, to_float

_CONTROLLER_KEYS = ("signals", "trend", "reward_trend", "plateau", "variance", "cosine")


class AdaptiveScheduler(LRScheduler):
    """Loss/reward-driven LR (and momentum) scheduler; see the module docstring for the math.

    Call ``scheduler.step_loss(loss, reward=None)`` after ``optimizer.step()`` (or
    ``set_metrics(loss, reward)`` then ``step()``). ``step()`` without metrics keeps
    the adaptive base and still advances the cosine.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        loss_beta: float = 0.9,
        reward_beta: float = 0.9,
        var_window: int = 20,
        up_factor: float = 1.05,
        down_factor: float = 0.7,
        min_rel_improve: float = 1e-4,
        var_damp_base: float = 1.0,
        var_damp_scale: float = 1.0,
        use_reward: bool = False,
        reward_up: float = 1.03,
        reward_down: float = 0.90,
        momentum_up: float = 0.01,
        momentum_down: float = 0.90,
        patience: int | None = 20,
        big_drop: float = 0.5,
        cooldown: int = 50,
        use_cosine: bool = False,
        T0: int = 200,
        T_mult: int = 2,
        eta_min_scale: float = 0.1,
        lr_min: float = 1e-7,
        lr_max: float = 10.0,
        momentum_min: float = 0.0,
        momentum_max: float = 0.999,
        last_epoch: int = -1,
    ) -> None:
        if not 0.0 < lr_min <= lr_max:
            raise ValueError(f"AdaptiveScheduler: need 0 < lr_min <= lr_max, got lr_min={lr_min}, lr_max={lr_max}")
        if not 0.0 <= momentum_min <= momentum_max < 1.0:
            raise ValueError(f"AdaptiveScheduler: need 0 <= momentum_min <= momentum_max < 1, "
                             f"got {momentum_min}, {momentum_max}")
        if not (up_factor >= 1.0 and 0.0 < down_factor <= 1.0):
            raise ValueError(f"AdaptiveScheduler: need up_factor >= 1 and 0 < down_factor <= 1, "
                             f"got up_factor={up_factor}, down_factor={down_factor}")
        bases = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
        outside = [i for i, lr in enumerate(bases) if not lr_min <= lr <= lr_max]
        if outside:
            raise ValueError(f"AdaptiveScheduler: initial lr of param groups {outside} ({[bases[i] for i in outside]}) "
                             f"is outside [lr_min, lr_max] = [{lr_min}, {lr_max}]")
        self.lr_min, self.lr_max = lr_min, lr_max
        self.momentum_min, self.momentum_max = momentum_min, momentum_max
        self.momentum_up, self.momentum_down = momentum_up, momentum_down
        self.use_reward, self.use_cosine = use_reward, use_cosine
        # accumulators are bounded so that no group's adaptive base can wind up past its clamp
        min_mult, max_mult = lr_min / max(bases), lr_max / min(bases)
        self.signals = Signals(beta=loss_beta, window=var_window, reward_beta=reward_beta)
        self.trend = TrendRule("loss", up=up_factor, down=down_factor, threshold=min_rel_improve,
                               min_mult=min_mult, max_mult=max_mult)
        self.reward_trend: TrendRule | None = (
            TrendRule("reward", up=reward_up, down=reward_down, min_mult=min_mult, max_mult=max_mult)
            if use_reward else None)
        self.plateau = Plateau("loss", factor=big_drop, patience=patience, cooldown=cooldown,
                               threshold=min_rel_improve, min_mult=min_mult)
        self.variance = VarianceRule("loss", base=var_damp_base, scale=var_damp_scale, power=-1.0,
                                     min_mult=0.0, max_mult=1.0 / var_damp_base)
        self.cosine: CosineRule | None = (CosineRule(T0=T0, T_mult=T_mult, eta_min_scale=eta_min_scale)
                                          if use_cosine else None)
        self.momenta = [float(group["momentum"]) if "momentum" in group else None
                        for group in optimizer.param_groups]
        self.adaptive_mult = 1.0
        self.factors: dict[str, float] = {}
        self._pending: dict[str, float | None] | None = None
        super().__init__(optimizer, last_epoch)

    # ---- feeding metrics --------------------------------------------------------------------
    def set_metrics(self, loss: Any, reward: Any = None) -> None:
        """Store a scalar loss (and optional reward) for the next :meth:`step`."""
        self._pending = {"loss": to_float(loss), "reward": None if reward is None else to_float(reward)}

    def step_loss(self, loss: Any, reward: Any = None) -> list[float]:
        """Consume the scalar loss (and reward) and step; returns the new LRs."""
        self.set_metrics(loss, reward)
        self.step()
        return self.get_last_lr()  # type: ignore[return-value]

    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> None:
        """Applier protocol: like :meth:`set_metrics` (other metrics are recorded only)."""
        if loss is not None:
            self.set_metrics(loss, reward)
        if metrics:
            self.signals.observe(**metrics)

    # ---- the schedule -------------------------------------------------------------------------
    def _controller_rules(self) -> dict[str, Rule]:
        """The accumulating rules that move the adaptive base, by name."""
        rules: dict[str, Rule | None] = {"trend": self.trend, "reward": self.reward_trend, "plateau": self.plateau}
        return {name: rule for name, rule in rules.items() if rule is not None}

    def get_lr(self) -> list[float]:  # type: ignore[override]
        if self._is_initial:
            return [float(lr) for lr in self.base_lrs]
        metrics, self._pending = self._pending, None
        if metrics is not None:
            reward = metrics["reward"] if self.use_reward else None
            self.signals.observe(loss=metrics["loss"], reward=reward)
            self.factors.update({name: rule(self.signals) for name, rule in self._controller_rules().items()})
            self.adaptive_mult = math.prod(self.factors[name] for name in self._controller_rules())
            self._update_momenta()
        damp = self.variance(self.signals)
        cos = self.cosine(self.signals) if self.cosine is not None else 1.0
        self.factors.update(variance=damp, cosine=cos)
        return [self._clip(self._clip(float(base) * self.adaptive_mult) * damp * cos) for base in self.base_lrs]

    def _clip(self, lr: float) -> float:
        return min(max(lr, self.lr_min), self.lr_max)

    def _update_momenta(self) -> None:
        direction = self.reward_trend.last_direction if self.reward_trend is not None else 0
        for i, momentum in enumerate(self.momenta):
            if momentum is None or direction == 0:
                continue
            momentum = momentum + self.momentum_up if direction > 0 else momentum * self.momentum_down
            self.momenta[i] = min(max(momentum, self.momentum_min), self.momentum_max)

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        super().step(epoch)
        for group, momentum in zip(self.optimizer.param_groups, self.momenta, strict=False):
            if momentum is not None and "momentum" in group:
                group["momentum"] = momentum

    def adaptive_base_lrs(self) -> list[float]:
        """The per-group adaptive base (before variance damping and cosine)."""
        return [self._clip(float(base) * self.adaptive_mult) for base in self.base_lrs]

    def dynamics(self) -> dict[str, Any]:
        groups = [{"lr": float(lr), **({"momentum": m} if m is not None else {})}
                  for lr, m in zip(self.get_last_lr(), self.momenta, strict=True)]
        summary = {**groups[0], "adaptive_mult": self.adaptive_mult,
                   **{f"factor_{k}": v for k, v in self.factors.items()}, **self.signals.summary()}
        return {"summary": summary, "groups": groups, "tensors": []}

    # ---- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "optimizer" and k not in _CONTROLLER_KEYS}
        state["controller"] = {key: (None if getattr(self, key) is None else getattr(self, key).state_dict())
                               for key in _CONTROLLER_KEYS}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        controller = state.pop("controller")
        self.__dict__.update(state)
        for key in _CONTROLLER_KEYS:
            part, sub = getattr(self, key), controller.get(key)
            if (part is None) != (sub is None):
                raise ValueError(f"AdaptiveScheduler.load_state_dict: {key!r} is "
                                 f"{'enabled' if part is not None else 'disabled'} here but not in the checkpoint")
            if part is not None:
                part.load_state_dict(sub)
