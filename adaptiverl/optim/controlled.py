"""ControlledOptimizer: any torch optimizer + a signal hub + a controller + the knob writer.

The one wrapper machine under :class:`~adaptiverl.optim.AdaptiveOptimizer` (seed 001) and
:class:`~adaptiverl.optim.OptimizerWrapper` (seed 004). Per optimisation step::

    observe(loss=..., reward=..., **metrics)      # any number of times: signals only
    step()                                        # controller(signals) -> multipliers, written
                                                  # into the groups, then the wrapped step

The controller (:class:`~adaptiverl.controllers.base.Controller`) runs exactly once per
``step()``: either at an explicit :meth:`ControlledOptimizer.update_hyperparameters` (seed 004's
call, which also writes the new values at once) or, when that was not called since the last step,
inside ``step()`` itself. ``step_loss`` / ``step_reward`` only record, in every front end.

Knob writing (:class:`KnobWriter`): the writer remembers, per group and knob, the base value and
the value it last wrote. If the group's value differs from what it wrote (an HF ``LambdaLR`` or any
other scheduler rewrote ``group["lr"]`` since), the new value becomes the base. So with a warmup /
cosine ``LambdaLR`` the LR a step uses is ``schedule(t) * m_t``, never an absolute value that the
schedule silently undoes. Values are ``base * m + offset`` for ``lr`` / ``weight_decay`` and the
horizon mapping :func:`~adaptiverl.controllers.base.beta_from_multiplier` for the beta-like knobs
``momentum``, ``beta1``, ``beta2`` (``betas[0]``/``betas[1]`` or Adafactor's ``beta1``) and
RMSprop's ``alpha``. Only knobs a group has are touched (no key is ever added).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from adaptiverl.controllers.base import Controller, Multipliers, apply_multiplier, merge_for_role
from adaptiverl.optim import _gradient_processing as gp
from adaptiverl.signals import Signals

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


def write_knob(group: dict[str, Any], knob: str, value: float) -> None:
    """Write ``value`` where ``read_knob`` reads it (a tensor-valued knob is filled in place)."""
    if knob in ("beta1", "beta2") and isinstance(group.get("betas"), (tuple, list)):
        betas = list(group["betas"])
        betas[0 if knob == "beta1" else 1] = value
        group["betas"] = tuple(betas)
    elif isinstance(group.get(knob), torch.Tensor):
        group[knob].fill_(value)
    else:
        group[knob] = value


class KnobWriter:
    """Writes multipliers into param groups as ``apply_multiplier(knob, base, m, offset)``.

    ``apply_one(index, group, knob, mult, offset)`` per group and knob; bases are re-read whenever
    something else rewrote the group (module docstring). Groups are tracked by index, so groups
    added later (``add_param_group``) start from their own current values.
    """

    def __init__(self) -> None:
        self.base: dict[str, float] = {}
        self.written: dict[str, float] = {}

    @staticmethod
    def _key(index: int, knob: str) -> str:
        return f"{index}:{knob}"

    def base_of(self, index: int, knob: str) -> float | None:
        """The base last used for group ``index``'s ``knob`` (None before the first write)."""
        return self.base.get(self._key(index, knob))

    def base_value(self, index: int, group: dict[str, Any], knob: str) -> float | None:
        current = read_knob(group, knob)
        if current is None:
            return None
        key = self._key(index, knob)
        if key not in self.base or self.written.get(key) != current:
            self.base[key] = current
        return self.base[key]

    def apply_one(self, index: int, group: dict[str, Any], knob: str, mult: float = 1.0,
                  offset: float = 0.0, bounds: tuple[float, float] | None = None) -> float | None:
        """Write the knob's value from its base; ``bounds`` clips the absolute value (scheduler)."""
        base = self.base_value(index, group, knob)
        value = None if base is None else apply_multiplier(knob, base, mult, offset)
        if value is None:
            return None
        if bounds is not None:
            value = min(max(value, bounds[0]), bounds[1])
        write_knob(group, knob, value)
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


class ControlledOptimizer(OptimizerProxy):
    """Wraps ``optimizer``; runs ``controller`` once per step and writes its multipliers (module docstring).

    Args:
        optimizer: any ``torch.optim.Optimizer`` (it applies the gradients unchanged).
        controller: a :class:`~adaptiverl.controllers.base.Controller`; its ``role_of_group``
            decides which role entry of its multipliers each group receives.
        signals: the signal hub the controller reads (a fresh ``Signals(beta, window)`` if None).
        finite_check: ``"off"`` (default): every ``step()`` reaches the wrapped optimizer, which
            behaves on NaN/inf gradients exactly as it does unwrapped (torch's optimizers step and
            make the parameters non-finite). ``"full"``: a step whose gradients hold a NaN or inf
            element is skipped (the wrapped optimizer's parameters and state unchanged; counted in
            ``skipped_steps`` and warned), the check the native optimizers make. A ``step(closure)``
            is passed on as it is (the gradients exist only once the wrapped optimizer calls it).
    """

    def __init__(self, optimizer: Optimizer, controller: Controller, *, signals: Signals | None = None,
                 beta: float = 0.9, window: int = 20, finite_check: str = "off") -> None:
        super().__init__(optimizer)
        self.finite_check = gp.check_finite_mode(type(self).__name__, finite_check)
        self.skipped_steps = 0
        if not isinstance(controller, Controller):
            raise TypeError(f"{type(self).__name__}: controller must be an adaptiverl Controller, "
                            f"got {type(controller).__name__}")
        self.controller = controller
        self.signals = signals if signals is not None else Signals(beta=beta, window=window)
        self.writer = KnobWriter()
        self.adjustments: Multipliers = {}
        self.control_steps = 0
        self._controlled_since_step = False

    # ---- signals ------------------------------------------------------------------------------
    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> None:
        """Record scalar signals (floats or 0-d tensors) for the next control step."""
        self.signals.observe(loss=loss, reward=reward, **metrics)

    def step_loss(self, loss: Any) -> None:
        """Record the training loss (seed name; the same as ``observe(loss=loss)``)."""
        self.observe(loss=loss)

    def step_reward(self, reward: Any) -> None:
        """Record a reward (higher is better; the same as ``observe(reward=reward)``)."""
        self.observe(reward=reward)

    # ---- control ------------------------------------------------------------------------------
    def _before_control(self) -> None:
        """Subclass hook: signals the applier measures itself before the controller runs."""

    def update_hyperparameters(self) -> Multipliers:
        """Run the controller once and write its multipliers; the next ``step()`` uses them."""
        self._before_control()
        self.adjustments = self.controller(self.signals)
        self.control_steps += 1
        self._controlled_since_step = True
        self.apply()
        return self.adjustments

    def apply(self) -> None:
        """Write the current multipliers into every group (bases re-read if rewritten since)."""
        for index, group in enumerate(self.param_groups):
            merged = merge_for_role(self.adjustments, self.controller.role_of_group(group))
            for knob in KNOBS:
                if knob in merged or f"{knob}_offset" in merged:
                    self.writer.apply_one(index, group, knob, merged.get(knob, 1.0),
                                          merged.get(f"{knob}_offset", 0.0))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if self._controlled_since_step:
            self.apply()
        else:
            self.update_hyperparameters()
        self._controlled_since_step = False
        if closure is not None:  # the wrapped optimizer may call it several times (LBFGS): as is
            return self.optimizer.step(closure)
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if gp.skip_non_finite(self, grads):
            return None
        return self.optimizer.step()

    # ---- read-only views ----------------------------------------------------------------------
    def group_values(self) -> list[dict[str, float]]:
        """Per group, each knob's value as used by the last ``step()`` (see :meth:`KnobWriter.values`)."""
        return self.writer.values(self.param_groups)

    def dynamics(self) -> dict[str, Any]:
        groups = self.group_values()
        summary: dict[str, float] = dict(groups[0]) if groups else {}
        summary.update(self.signals.summary())
        return {"summary": summary, "groups": groups, "tensors": []}

    # ---- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        state["controlled"] = {"signals": self.signals.state_dict(), "writer": self.writer.state_dict(),
                               "controller": self.controller.state_dict(),
                               "adjustments": self.adjustments, "control_steps": self.control_steps}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        controlled = state.pop("controlled", None)
        self.optimizer.load_state_dict(state)
        if controlled is None:
            return
        self.controller.load_state_dict(controlled["controller"])
        self.signals.load_state_dict(controlled["signals"])
        self.writer.load_state_dict(controlled["writer"])
        self.adjustments = {role: dict(knobs) for role, knobs in controlled["adjustments"].items()}
        self.control_steps = controlled["control_steps"]
