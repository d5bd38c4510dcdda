"""The controller protocol, its one state mechanism, the bounded accumulator and the beta-like knob mapping.

A **controller** turns the shared :class:`~adaptiverl.signals.Signals` into hyperparameter
*multipliers*, never absolute values::

    controller(signals) -> {"*": {"lr": 0.5, "weight_decay": 1.5},   # every param group
                            "gate": {"lr": 0.1}}                      # groups whose role is "gate"

Keys of the inner dicts are knob names (``lr``, ``weight_decay``, ``momentum``, ``beta1``,
``beta2``, ``alpha``, or any other knob a front end understands, e.g. EnhancedSGD's ``grad``);
``"<knob>_offset"`` entries are added after the multiplier (additive deltas such as the REINFORCE
strategy's weight-decay steps). A group receives the product of the ``"*"`` entry and the entry of
its role (offsets add). The applier (:class:`~adaptiverl.optim.controlled.ControlledOptimizer`,
:class:`~adaptiverl.optim.AdaptiveScheduler`, :class:`~adaptiverl.optim.EnhancedSGD`) calls the
controller exactly once per optimisation step and writes ``base * multiplier`` with
:func:`apply_multiplier`, so the result composes with any schedule that rewrites the base.

The per-tensor controller of the Online optimizers (:class:`~adaptiverl.controllers.online.OnlineController`)
follows the same protocol with one difference: it also reads the step's tensors and answers with
device tensors (per-tensor log scales, group knob values, a finiteness flag) instead of host
multipliers, so that its applier pays one host sync per step.

**State** goes through one mechanism, :class:`Stateful`: a class lists its plain persistent
attributes in ``_state_keys`` and the attributes holding nested stateful objects in
``_state_children``; ``state_dict`` / ``load_state_dict`` / ``reset`` follow from that.

**One bounded accumulator** (:class:`BoundedAccumulator`, functional core
:func:`bounded_log_update`) for every rule that compounds factors::

    log m <- clip((1 - leak) * log m + log f, log m_min, log m_max)

(``leak = 0``: a plain bounded product; ``0 < leak < 1``: ``log m`` is mean-reverting, so noise
cannot random-walk ``m`` to a bound; ``f = 1`` with ``leak > 0``: geometric recovery toward 1).

**One beta-like knob mapping** (:func:`beta_from_multiplier`) for momentum, Adam's betas and
RMSprop's alpha. A multiplier ``m`` scales the averaging horizon ``1 / (1 - beta)`` of the
exponential average the knob controls::

    beta' = 1 - (1 - beta) / m,     clipped to [0, beta_max]

Why the horizon and not ``beta * m``: the horizon is what a beta means (the number of past steps
averaged, and the ``1 / (1 - beta)`` gain of heavy-ball momentum, Polyak 1964), it is multiplicative
in the same sense as a learning-rate multiplier (``m = 2``: twice the memory), ``m = 1`` is the
identity, and no finite ``m`` can push ``beta`` to 1 or beyond (``beta * m`` reaches 1 at
``m = 1 / beta``, i.e. ``m = 1.11`` for momentum 0.9). A knob whose base is 0 (SGD without momentum,
Adam with ``beta1 = 0``) stays 0: an average that is switched off is not switched on by a
controller.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

from adaptiverl.signals import Signals

Multipliers = dict[str, dict[str, float]]
"""``{role: {knob: multiplier, "<knob>_offset": delta}}``; role ``"*"`` means every group."""

ALL_GROUPS = "*"
BETA_MAX = 0.9999
BETA_LIKE = frozenset({"momentum", "beta1", "beta2", "alpha"})

Number = TypeVar("Number", float, Tensor)


class Stateful:
    """One state mechanism: ``_state_keys`` (plain attributes) and ``_state_children`` (nested).

    ``state_dict`` deep-copies the listed attributes (tensors are cloned by ``copy.deepcopy``) and
    asks every child for its own; ``load_state_dict`` checks that every key is there and copies the
    values back (so a restored object never aliases the checkpoint); ``reset`` resets the children
    (subclasses with own state extend it). A child may be ``None`` (a disabled part); its presence
    must then match the checkpoint's.
    """

    _state_keys: tuple[str, ...] = ()
    _state_children: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        state = {key: copy.deepcopy(getattr(self, key)) for key in self._state_keys}
        for name in self._state_children:
            child = getattr(self, name)
            state[name] = None if child is None else child.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [key for key in (*self._state_keys, *self._state_children) if key not in state]
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}")
        for key in self._state_keys:
            setattr(self, key, copy.deepcopy(state[key]))
        for name in self._state_children:
            child, sub = getattr(self, name), state[name]
            if (child is None) != (sub is None):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name!r} is "
                                 f"{'disabled' if child is None else 'enabled'} here but not in the checkpoint")
            if child is not None:
                child.load_state_dict(sub)

    def reset(self) -> None:
        """Forget everything learned from the signals (stateless objects: nothing to do)."""
        for name in self._state_children:
            child = getattr(self, name)
            if child is not None and hasattr(child, "reset"):
                child.reset()


class Controller(Stateful):
    """Signals in, per-role multipliers out (see the module docstring); called once per step."""

    def __call__(self, signals: Signals) -> Multipliers:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(signals) -> Multipliers")

    def role_of_group(self, group: Mapping[str, Any]) -> str:
        """The role a param group plays for this controller: its ``"role"`` tag, else ``"other"``."""
        return str(group.get("role", "other"))


def merge_for_role(multipliers: Multipliers, role: str) -> dict[str, float]:
    """The ``"*"`` entry combined with ``role``'s: multipliers multiply, ``*_offset`` entries add."""
    merged = dict(multipliers.get(ALL_GROUPS, {}))
    for key, value in multipliers.get(role, {}).items():
        if key.endswith("_offset"):
            merged[key] = merged.get(key, 0.0) + value
        else:
            merged[key] = merged.get(key, 1.0) * value
    return merged


# ---- the bounded accumulator ---------------------------------------------------------------------

def check_bounds(min_mult: float, max_mult: float, what: str = "multiplier") -> None:
    """Raise unless ``0 < min_mult <= 1 <= max_mult`` (names the bounds)."""
    if not 0.0 < min_mult <= 1.0 <= max_mult:
        raise ValueError(f"{what} bounds: need 0 < min_mult <= 1 <= max_mult, "
                         f"got min_mult={min_mult}, max_mult={max_mult}")


def bounded_log_update(log_mult: Number, log_factor: Number | float, *, leak: float | Tensor = 0.0,
                       log_min: float | Tensor, log_max: float | Tensor) -> Number:
    """``clip((1 - leak) * log_mult + log_factor, log_min, log_max)`` for floats or tensors.

    The functional core of :class:`BoundedAccumulator`; with tensors (one entry per group or per
    tensor) it runs on the device without a host sync.
    """
    value = (1.0 - leak) * log_mult + log_factor
    if isinstance(value, Tensor):
        return torch.clamp(value, log_min, log_max)  # type: ignore[return-value]
    return min(max(value, log_min), log_max)  # type: ignore[return-value,type-var]


class BoundedAccumulator(Stateful):
    """A multiplier that compounds factors in log space, leaks toward 1 and stays in its bounds.

    ``update(f)``: ``log m <- clip((1 - leak) * log m + log f, log min_mult, log max_mult)``;
    ``leak`` defaults to the constructor's and may be given per call (e.g. no leak on the step that
    applies a factor, a recovery leak on the others). ``value`` is ``m``.
    """

    _state_keys = ("log_value",)

    def __init__(self, min_mult: float = 1e-3, max_mult: float = 1e3, *, leak: float = 0.0,
                 name: str = "accumulator") -> None:
        check_bounds(min_mult, max_mult, name)
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"{name}: leak must be in [0, 1], got {leak}")
        self.min_mult, self.max_mult, self.leak = min_mult, max_mult, leak
        self.name = name
        self.log_value = 0.0

    def reset(self) -> None:
        self.log_value = 0.0

    @property
    def value(self) -> float:
        return math.exp(self.log_value)

    def update(self, factor: float = 1.0, *, leak: float | None = None) -> float:
        if not factor > 0.0:
            raise ValueError(f"{self.name}: factor must be > 0, got {factor}")
        self.log_value = bounded_log_update(self.log_value, math.log(factor),
                                            leak=self.leak if leak is None else leak,
                                            log_min=math.log(self.min_mult), log_max=math.log(self.max_mult))
        return self.value


def bounded_exp(exponent: float, min_mult: float, max_mult: float) -> float:
    """``clip(exp(exponent), min_mult, max_mult)`` without overflow (stateless rules)."""
    return math.exp(min(max(exponent, math.log(min_mult)), math.log(max_mult)))


# ---- the beta-like knob mapping --------------------------------------------------------------------

def beta_from_multiplier(beta: Number, mult: Number | float, beta_max: float = BETA_MAX) -> Number:
    """``clip(1 - (1 - beta) / mult, 0, beta_max)``, and 0 where ``beta == 0`` (module docstring).

    Works elementwise on tensors (one base per group or per tensor) as well as on floats.
    """
    if isinstance(beta, Tensor) or isinstance(mult, Tensor):
        beta_t = torch.as_tensor(beta)
        value = torch.clamp(1.0 - (1.0 - beta_t) / mult, 0.0, beta_max)
        return torch.where(beta_t == 0, beta_t, value)  # type: ignore[return-value]
    if beta == 0.0:
        return beta
    if not mult > 0.0:
        raise ValueError(f"beta_from_multiplier: mult must be > 0, got {mult}")
    return min(max(1.0 - (1.0 - beta) / mult, 0.0), beta_max)  # type: ignore[return-value]


def horizon_multiplier(beta: float, new_beta: float) -> float:
    """The multiplier that :func:`beta_from_multiplier` maps ``beta`` to ``new_beta`` with (its inverse)."""
    if not (0.0 <= beta < 1.0 and 0.0 <= new_beta < 1.0):
        raise ValueError(f"horizon_multiplier: betas must be in [0, 1), got {beta}, {new_beta}")
    return (1.0 - beta) / (1.0 - new_beta)


def apply_multiplier(knob: str, base: float, mult: float = 1.0, offset: float = 0.0) -> float | None:
    """The value a knob takes: beta-like knobs by :func:`beta_from_multiplier`, others ``max(base * m + offset, 0)``.

    Returns ``None`` for a beta-like knob whose base is 0 (left alone).
    """
    if knob in BETA_LIKE:
        return None if base == 0.0 else beta_from_multiplier(base, mult)
    return max(base * mult + offset, 0.0)
