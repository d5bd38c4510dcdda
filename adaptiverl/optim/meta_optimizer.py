"""Meta-Optimizer module (seed 004): :class:`OptimizerWrapper` applies a strategy to any torch optimizer.

The strategies (:class:`MetaOptimizer` and its five implementations) are controllers and live in
:mod:`adaptiverl.controllers.meta`; they are re-exported here under the seed's import path
(``from ...meta_optimizer import OptimizerWrapper, PlateauMetaOptimizer``). The wrapper is a thin
front end over :class:`~adaptiverl.optim.controlled.ControlledOptimizer`, sharing the strategy's
signal hub: the seed's ``update_hyperparameters(metrics)`` records the step's metrics (router
logits become routing statistics; ``lr`` and counters are not signals), lets the strategy decide
and writes ``base * multiplier + offset`` into each group by its role at once; ``step()`` then
applies the gradients (and runs the strategy itself when ``update_hyperparameters`` was not
called since the last step, e.g. when an ``AdaptiveCallback`` only ``observe``\\ s).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from adaptiverl.controllers.meta import (
    Adjustments,
    AdvancedPlateauMetaOptimizer,
    ExpertGateMetaOptimizer,
    MetaOptimizer,
    PlateauMetaOptimizer,
    RLMetaOptimizer,
    SmartExpertGateMetaOptimizer,
    routing_statistics,
)
from adaptiverl.optim.controlled import ControlledOptimizer

__all__ = ["Adjustments", "AdvancedPlateauMetaOptimizer", "ExpertGateMetaOptimizer", "MetaOptimizer", "OptimizerWrapper",
           "PlateauMetaOptimizer", "RLMetaOptimizer", "SmartExpertGateMetaOptimizer", "routing_statistics"]


class OptimizerWrapper(ControlledOptimizer):
    """Wraps any torch optimizer with a :class:`MetaOptimizer` (seed 004).

    ``update_hyperparameters(metrics)`` once per training step (before ``step()``);
    everything else passes through to the wrapped optimizer. ``model`` (optional)
    lets the meta-optimizer classify param groups added later by parameter name.
    ``finite_check="off"`` (default): the wrapper behaves as the optimizer it wraps, also on
    NaN/inf gradients; ``"full"`` skips such a step, counted in ``skipped_steps`` and warned
    (:class:`~adaptiverl.optim.controlled.ControlledOptimizer`).
    """

    def __init__(self, optimizer: Optimizer, meta: MetaOptimizer, *, model: nn.Module | None = None,
                 finite_check: str = "off") -> None:
        if not isinstance(meta, MetaOptimizer):
            raise TypeError(f"OptimizerWrapper: meta must be a MetaOptimizer, got {type(meta).__name__}")
        super().__init__(optimizer, meta, signals=meta.signals, finite_check=finite_check)
        if model is not None:
            meta.bind_model(model)
        self._weight_norm_given = False
        self.adjustments = meta.initial_adjustments()
        self.apply()

    @property
    def meta(self) -> MetaOptimizer:
        return self.controller  # type: ignore[return-value]

    @property
    def step_count(self) -> int:
        return self.meta.calls

    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> None:
        """Record one step's scalars (the strategy runs at the next ``step()``)."""
        given = {"loss": loss, "reward": reward, **metrics}
        self._weight_norm_given = self._weight_norm_given or metrics.get("weight_norm") is not None
        self.signals.observe(**self.meta.scalar_metrics({k: v for k, v in given.items() if v is not None}))

    def update_hyperparameters(self, metrics: dict[str, Any] | None = None) -> Adjustments:  # type: ignore[override]
        """Record ``metrics`` and run the strategy now; on update steps its adjustments change."""
        if metrics:
            self.observe(**metrics)
        return super().update_hyperparameters()

    def _before_control(self) -> None:
        given, self._weight_norm_given = self._weight_norm_given, False
        if self.meta.needs_weight_norm and not given and self.meta.should_update(self.meta.calls + 1):
            params = [p.detach() for group in self.param_groups for p in group["params"]]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(params)))
            self.signals.observe(weight_norm=float(norm))

    def dynamics(self) -> dict[str, Any]:
        groups = [{"role": self.meta.role_of_group(group), **values}
                  for group, values in zip(self.param_groups, self.group_values(), strict=True)]
        summary: dict[str, Any] = {k: v for k, v in groups[0].items() if k != "role"} if groups else {}
        for group in groups:
            if group["role"] != "other" and "lr" in group:
                summary[f"lr_{group['role']}"] = group["lr"]
        summary.update(self.signals.summary())
        return {"summary": summary, "groups": groups, "tensors": []}
