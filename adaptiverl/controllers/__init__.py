"""Controllers: turn signals into hyperparameter multipliers (rules, plateau, Q-learning, REINFORCE, GRU).

The shared pieces every controller and applier uses live in :mod:`adaptiverl.controllers.base`
and are re-exported here: the :class:`Controller` protocol and its :class:`Stateful` state
mechanism, the one bounded accumulator (:class:`BoundedAccumulator`, functional core
:func:`bounded_log_update`) and the one beta-like knob mapping (:func:`beta_from_multiplier`,
inverse :func:`horizon_multiplier`). Importing this package loads only ``base`` (torch and the
signals); the controllers themselves are in their modules (``rules``, ``plateau``, ``qlearning``,
``reinforce``, ``meta``, ``schedule``, ``enhanced``, and ``online``, the Online optimizers'
per-tensor controller, whose network is in ``gru``).
"""

from adaptiverl.controllers.base import (
    ALL_GROUPS,
    BETA_LIKE,
    BETA_MAX,
    BoundedAccumulator,
    Controller,
    Multipliers,
    Stateful,
    apply_multiplier,
    beta_from_multiplier,
    bounded_log_update,
    horizon_multiplier,
    merge_for_role,
)

__all__ = ["ALL_GROUPS", "BETA_LIKE", "BETA_MAX", "BoundedAccumulator", "Controller", "Multipliers", "Stateful",
           "apply_multiplier", "beta_from_multiplier", "bounded_log_update", "horizon_multiplier", "merge_for_role"]
