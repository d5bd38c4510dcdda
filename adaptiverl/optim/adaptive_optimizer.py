"""AdaptiveOptimizer (seed 001): wrap any torch optimizer and adapt its knobs from loss and reward.

A thin front end over :class:`~adaptiverl.optim.controlled.ControlledOptimizer`: the seed's
``lr_rule`` / ``momentum_rule`` / ``betas_rule`` / ``alpha_rule`` / ``wd_rule`` / ``reward_rule``
names are parsed by :func:`~adaptiverl.controllers.rules.make_rule` into a
:class:`~adaptiverl.controllers.rules.RuleSet` controller (one rule or ``+`` chain per knob; the
reward rule multiplies the LR). Before each ``step()`` the rules are called once and
``base * multiplier`` is written into every param group that has the knob (beta-like knobs on
their averaging horizon, :func:`~adaptiverl.controllers.base.beta_from_multiplier`), so the
wrapper composes with any schedule that rewrites ``group["lr"]``. ``step_loss`` / ``step_reward``
record the signals; the rules consume them at the next ``step()``.

Only knobs the optimizer has are touched: asking for a momentum rule on Adagrad
warns once and adds no ``momentum`` key.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch.optim import Optimizer

from adaptiverl.controllers.rules import Rule, RuleSet, make_rule
from adaptiverl.optim.controlled import ControlledOptimizer, read_knob
from adaptiverl.signals import Signals


class AdaptiveOptimizer(ControlledOptimizer):
    """Loss- and reward-driven hyperparameter control around any torch optimizer (seed 001).

    Args:
        base_optimizer: the optimizer that applies gradients (SGD, AdamW, RMSprop,
            Adagrad, Adafactor, bitsandbytes 8-bit optimizers, ...).
        lr_rule: ``"trend"``, ``"variance"``, ``"cosine"``, ``"cosine_restart"`` or a
            ``+`` combination (``"trend+variance"``), a :class:`Rule`, or None.
        momentum_rule: ``"inverse"``, ``"relative"`` or ``"normalized"``.
        betas_rule: ``(beta1_rule, beta2_rule)`` with ``"relative"`` / ``"variance"``
            (either may be None).
        alpha_rule: ``"stable"`` (RMSprop).
        wd_rule: ``"trend"``.
        reward_rule: ``"scaling"``, ``"trend"`` or ``"variance"`` (multiplies the LR).
        cycle_length, cycle_mult: first cosine cycle length in steps and its growth
            factor at each restart (``cosine`` uses a constant cycle).
        signals: a shared :class:`Signals` hub (a fresh one with ``beta``/``window`` if None).
        finite_check: ``"off"`` (default): the wrapper behaves as the optimizer it wraps, also on
            NaN/inf gradients (a torch optimizer steps and the parameters turn non-finite);
            ``"full"``: such a step is skipped, counted in ``skipped_steps`` and warned
            (:class:`~adaptiverl.optim.controlled.ControlledOptimizer`).
    """

    def __init__(self, base_optimizer: Optimizer, lr_rule: str | Rule | None = "trend+variance",
                 momentum_rule: str | Rule | None = None,
                 betas_rule: tuple[str | Rule | None, str | Rule | None] | None = None,
                 alpha_rule: str | Rule | None = None, wd_rule: str | Rule | None = None,
                 reward_rule: str | Rule | None = None, cycle_length: int = 1000,
                 cycle_mult: float = 2.0, *, signals: Signals | None = None, beta: float = 0.9,
                 window: int = 20, finite_check: str = "off") -> None:
        if betas_rule is not None and (not isinstance(betas_rule, (tuple, list)) or len(betas_rule) != 2):
            raise ValueError(f"betas_rule must be a pair (beta1_rule, beta2_rule), got {betas_rule!r}")
        beta1_rule, beta2_rule = betas_rule if betas_rule is not None else (None, None)
        options = {"cycle_length": cycle_length, "cycle_mult": cycle_mult}
        specs = {"lr": lr_rule, "momentum": momentum_rule, "beta1": beta1_rule, "beta2": beta2_rule,
                 "alpha": alpha_rule, "weight_decay": wd_rule, "reward": reward_rule}
        rules = {slot: rule for slot, spec in specs.items() if (rule := make_rule(slot, spec, **options)) is not None}
        super().__init__(base_optimizer, RuleSet(rules), signals=signals, beta=beta, window=window,
                         finite_check=finite_check)
        for slot in rules:
            knob = self.controller.knob_of(slot)
            if not any(read_knob(group, knob) for group in self.param_groups):
                warnings.warn(f"AdaptiveOptimizer: {type(base_optimizer).__name__} has no (non-zero) "
                              f"{knob!r} in its param groups; the {slot} rule is ignored",
                              UserWarning, stacklevel=2)

    @property
    def rules(self) -> dict[str, Rule]:
        return self.controller.rules

    @property
    def multipliers(self) -> dict[str, float]:
        """Each rule's multiplier at the last control step, by rule slot (``reward`` apart from ``lr``)."""
        return self.controller.last

    # ---- read-only views ----------------------------------------------------------------------
    def _first(self, knob: str) -> float:
        for values in self.group_values():
            if knob in values:
                return values[knob]
        raise AttributeError(f"{type(self.optimizer).__name__} has no {knob!r} hyperparameter")

    # what the last step used, in the first group that has the knob (seed 001's ``opt.lr``, ``opt.wd``)
    lr = property(lambda self: self._first("lr"))
    wd = property(lambda self: self._first("weight_decay"))
    momentum = property(lambda self: self._first("momentum"))
    betas = property(lambda self: (self._first("beta1"), self._first("beta2")))
    alpha = property(lambda self: self._first("alpha"))

    def dynamics(self) -> dict[str, Any]:
        out = super().dynamics()
        out["summary"].update({f"mult_{slot}": mult for slot, mult in self.multipliers.items()})
        return out
