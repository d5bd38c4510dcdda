"""AdaptiveOptimizer (seed 001): wrap any torch optimizer and adapt its knobs from loss and reward.

The wrapped optimizer applies the gradients unchanged; before each ``step()`` the
wrapper asks its rules (:mod:`adaptiverl.controllers.rules`) for one multiplier per
knob and writes ``base * multiplier`` into every param group that has the knob.

Knobs and how a multiplier ``m`` acts on them:

* ``lr``, ``weight_decay``: ``value = base * m`` (the reward rule multiplies the LR too).
* beta-like knobs ``momentum``, ``beta1``, ``beta2`` (``betas[0]``/``betas[1]`` or
  Adafactor's ``beta1``) and RMSprop's ``alpha``: ``m`` scales the averaging horizon
  ``1 / (1 - beta)``, i.e. ``value = 1 - (1 - base) / m`` clipped to ``[0, 0.9999]``,
  so no multiplier can push a beta to 1 or beyond. A beta-like knob whose base is 0
  (SGD without momentum, Adam with beta1 = 0) is switched off and left alone.

Composition with time schedules (:class:`KnobWriter`): the writer remembers, per
group and knob, the base value and the value it last wrote. If the group's value
differs from what it wrote (an HF ``LambdaLR`` or any other scheduler rewrote
``group["lr"]`` since), the new value becomes the base. So with a warmup/cosine
``LambdaLR`` stepping after the optimizer the LR actually used is
``schedule(t) * m_t``, never an absolute value that the schedule silently undoes.

Only knobs the optimizer has are touched: asking for a momentum rule on Adagrad
warns once and adds no ``momentum`` key.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from adaptiverl.controllers.rules import Rule, make_rule
from adaptiverl.signals import Signals

BETA_LIKE = frozenset({"momentum", "beta1", "beta2", "alpha"})
BETA_MAX = 0.9999
KNOBS = ("lr", "weight_decay", "momentum", "beta1", "beta2", "alpha")


def read_knob(group: dict[str, Any], knob: str) -> float | None:
    """The group's current value of ``knob`` (None when the optimizer has no such knob)."""
    if knob in ("beta1", "beta2") and isinstance(group.get("betas"), (tuple, list)):
        value: Any = group["betas"][0 if knob == "beta1" else 1]
    else:
        value = group.get(knob)
    if value is None or isinstance(value, bool):
        return None
    return float(value)


def _write_knob(group: dict[str, Any], knob: str, value: float) -> None:
    if knob in ("beta1", "beta2") and isinstance(group.get("betas"), (tuple, list)):
        betas = list(group["betas"])
        betas[0 if knob == "beta1" else 1] = value
        group["betas"] = tuple(betas)
    elif isinstance(group.get(knob), torch.Tensor):
        group[knob].fill_(value)
    else:
        group[knob] = value


class KnobWriter:
    """Writes ``base * multiplier`` (+ offset) into param groups; survives outside rewrites.

    ``apply(groups, {knob: m}, offsets)`` per call. Groups are tracked by index, so
    groups added later (``add_param_group``) start from their own current values.
    """

    def __init__(self) -> None:
        self.base: dict[str, float] = {}
        self.written: dict[str, float] = {}

    @staticmethod
    def _key(index: int, knob: str) -> str:
        return f"{index}:{knob}"

    def base_value(self, index: int, group: dict[str, Any], knob: str) -> float | None:
        current = read_knob(group, knob)
        if current is None:
            return None
        key = self._key(index, knob)
        if key not in self.base or self.written.get(key) != current:
            self.base[key] = current
        return self.base[key]

    def apply_one(self, index: int, group: dict[str, Any], knob: str, mult: float = 1.0,
                  offset: float = 0.0) -> float | None:
        base = self.base_value(index, group, knob)
        if base is None:
            return None
        if knob in BETA_LIKE:
            if base == 0.0:
                return None
            value = min(max(1.0 - (1.0 - base) / mult, 0.0), BETA_MAX)
        else:
            value = max(base * mult + offset, 0.0)
        _write_knob(group, knob, value)
        self.written[self._key(index, knob)] = read_knob(group, knob)  # type: ignore[assignment]
        return value

    def values(self, groups: list[dict[str, Any]]) -> list[dict[str, float]]:
        """Per group, every knob it has: the value this writer last wrote (what the last step
        used, even if a scheduler rewrote the group since), else the group's own value."""
        out = []
        for index, group in enumerate(groups):
            values = {knob: value for knob in KNOBS if (value := read_knob(group, knob)) is not None}
            values.update({knob: self.written[key] for knob in values
                           if (key := self._key(index, knob)) in self.written})
            out.append(values)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"base": dict(self.base), "written": dict(self.written)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base = dict(state["base"])
        self.written = dict(state["written"])


class OptimizerProxy(Optimizer):
    """A torch ``Optimizer`` that forwards to a wrapped one (shares its groups and state).

    Being an ``Optimizer`` subclass lets torch/HF schedulers (``LambdaLR``) and
    ``accelerate`` accept the wrapper where they expect an optimizer; attributes the
    proxy does not define are looked up on the wrapped optimizer.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected a torch.optim.Optimizer "
                            f"(SGD, AdamW, bitsandbytes 8-bit, ...), got {type(optimizer).__name__}")
        self.optimizer = optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def __getattr__(self, name: str) -> Any:
        """Anything else (``train()``/``eval()`` of schedule-free optimizers, hooks, ...) passes through."""
        optimizer = self.__dict__.get("optimizer")
        if optimizer is None:
            raise AttributeError(name)
        return getattr(optimizer, name)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.optimizer!r})"


class AdaptiveOptimizer(OptimizerProxy):
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
    """

    def __init__(self, base_optimizer: Optimizer, lr_rule: str | Rule | None = "trend+variance",
                 momentum_rule: str | Rule | None = None,
                 betas_rule: tuple[str | Rule | None, str | Rule | None] | None = None,
                 alpha_rule: str | Rule | None = None, wd_rule: str | Rule | None = None,
                 reward_rule: str | Rule | None = None, cycle_length: int = 1000,
                 cycle_mult: float = 2.0, *, signals: Signals | None = None, beta: float = 0.9,
                 window: int = 20) -> None:
        super().__init__(base_optimizer)
        if betas_rule is not None and (not isinstance(betas_rule, (tuple, list)) or len(betas_rule) != 2):
            raise ValueError(f"betas_rule must be a pair (beta1_rule, beta2_rule), got {betas_rule!r}")
        beta1_rule, beta2_rule = betas_rule if betas_rule is not None else (None, None)
        options = {"cycle_length": cycle_length, "cycle_mult": cycle_mult}
        specs = {"lr": ("lr", lr_rule), "momentum": ("momentum", momentum_rule),
                 "beta1": ("beta1", beta1_rule), "beta2": ("beta2", beta2_rule),
                 "alpha": ("alpha", alpha_rule), "weight_decay": ("weight_decay", wd_rule),
                 "reward": ("reward", reward_rule)}
        self.rules: dict[str, Rule] = {}
        for slot, (knob, spec) in specs.items():
            rule = make_rule(knob, spec, **options)
            if rule is not None:
                self.rules[slot] = rule
        self.signals = signals if signals is not None else Signals(beta=beta, window=window)
        self.writer = KnobWriter()
        self.multipliers: dict[str, float] = dict.fromkeys(self.rules, 1.0)
        for slot in self.rules:
            knob = "lr" if slot == "reward" else slot
            if not any(read_knob(group, knob) for group in self.param_groups):
                warnings.warn(f"AdaptiveOptimizer: {type(base_optimizer).__name__} has no (non-zero) "
                              f"{knob!r} in its param groups; the {slot} rule is ignored",
                              UserWarning, stacklevel=2)

    # ---- signals (seed names + applier protocol) --------------------------------------------
    def step_loss(self, loss: Any) -> None:
        """Feed the training loss (float or scalar tensor) for loss-driven rules."""
        self.signals.observe(loss=loss)

    def step_reward(self, reward: Any) -> None:
        """Feed a reward (RL reward, accuracy, ...; higher is better) for the reward rule."""
        self.signals.observe(reward=reward)

    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> None:
        self.signals.observe(loss=loss, reward=reward, **metrics)

    # ---- control ----------------------------------------------------------------------------
    def knob_multipliers(self) -> dict[str, float]:
        """Call every rule once (advancing stateful ones) and return ``{knob: multiplier}``."""
        self.multipliers = {slot: rule(self.signals) for slot, rule in self.rules.items()}
        per_knob = {knob: self.multipliers.get(knob, 1.0) for knob in KNOBS if knob in self.rules}
        if "reward" in self.multipliers:
            per_knob["lr"] = per_knob.get("lr", 1.0) * self.multipliers["reward"]
        return per_knob

    def update_hyperparameters(self) -> dict[str, float]:
        """Write ``base * multiplier`` into every group that has each controlled knob."""
        per_knob = self.knob_multipliers()
        for index, group in enumerate(self.param_groups):
            for knob, mult in per_knob.items():
                self.writer.apply_one(index, group, knob, mult)
        return per_knob

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        self.update_hyperparameters()
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    # ---- read-only views ----------------------------------------------------------------------
    def group_values(self) -> list[dict[str, float]]:
        """Per group, each knob's value as used by the last ``step()`` (see :meth:`KnobWriter.values`)."""
        return self.writer.values(self.param_groups)

    def _first(self, knob: str) -> float:
        for values in self.group_values():
            if knob in values:
                return values[knob]
        raise AttributeError(f"{type(self.optimizer).__name__} has no {knob!r} hyperparameter")

    @property
    def lr(self) -> float:
        return self._first("lr")

    @property
    def wd(self) -> float:
        return self._first("weight_decay")

    @property
    def momentum(self) -> float:
        return self._first("momentum")

    @property
    def betas(self) -> tuple[float, float]:
        return self._first("beta1"), self._first("beta2")

    @property
    def alpha(self) -> float:
        return self._first("alpha")

    def dynamics(self) -> dict[str, Any]:
        groups = self.group_values()
        summary: dict[str, float] = dict(groups[0]) if groups else {}
        summary.update({f"mult_{slot}": mult for slot, mult in self.multipliers.items()})
        summary.update(self.signals.summary())
        return {"summary": summary, "groups": groups, "tensors": []}

    # ---- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        state["adaptive"] = {"signals": self.signals.state_dict(), "writer": self.writer.state_dict(),
                             "rules": {slot: rule.state_dict() for slot, rule in self.rules.items()},
                             "multipliers": dict(self.multipliers)}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        adaptive = state.pop("adaptive", None)
        self.optimizer.load_state_dict(state)
        if adaptive is None:
            return
        if set(adaptive["rules"]) != set(self.rules):
            raise ValueError(f"AdaptiveOptimizer.load_state_dict: checkpoint has rules "
                             f"{sorted(adaptive['rules'])}, this wrapper has {sorted(self.rules)}")
        self.signals.load_state_dict(adaptive["signals"])
        self.writer.load_state_dict(adaptive["writer"])
        for slot, rule in self.rules.items():
            rule.load_state_dict(adaptive["rules"][slot])
        self.multipliers = dict(adaptive["multipliers"])

