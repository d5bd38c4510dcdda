"""Appliers: the optimizers, wrappers and schedulers a user holds.

Every applier exposes the same small protocol, which the trainer callback relies on:

* ``observe(loss=None, reward=None, **metrics)``: record scalar signals (floats or
  0-d tensors). Front ends keep their seed's names too: ``step_loss(loss)`` and
  ``step_reward(reward)`` mean exactly ``observe(loss=loss)`` / ``observe(reward=reward)``
  in every front end (they record; they never step anything). The controller runs
  once per optimizer step and reads everything recorded before it: inside
  ``step()`` for the optimizers and wrappers, in a step pre-hook for
  ``AdaptiveScheduler``, or at an explicit ``update_hyperparameters()`` (seed 004),
  after which ``step()`` only re-applies the multipliers.
* ``dynamics() -> dict`` with ``"summary"`` (flat ``str -> float`` for logging:
  ``lr``, ``momentum`` / ``beta1`` / ``beta2`` / ``alpha``, ``weight_decay`` where
  the optimizer has them, plus applier-specific figures), ``"groups"`` (one
  such dict per param group) and, where the applier controls per tensor,
  ``"tensors"`` (one dict per parameter tensor).
* ``state_dict()`` / ``load_state_dict()`` that carry the controller state too.

Names are imported lazily so that ``import adaptiverl.optim`` stays cheap.
"""

from __future__ import annotations

from adaptiverl._lazy import lazy_exports

_EXPORTS = {
    "OnlineSGD": "adaptiverl.optim.online",
    "OnlineRMSProp": "adaptiverl.optim.online",
    "OnlineAdamW": "adaptiverl.optim.online",
    "EnhancedSGD": "adaptiverl.optim.enhanced_sgd",
    "AdaptiveOptimizer": "adaptiverl.optim.adaptive_optimizer",
    "ControlledOptimizer": "adaptiverl.optim.controlled",
    "AdaptiveScheduler": "adaptiverl.optim.adaptive_scheduler",
    "MetaOptimizer": "adaptiverl.optim.meta_optimizer",
    "OptimizerWrapper": "adaptiverl.optim.meta_optimizer",
    "PlateauMetaOptimizer": "adaptiverl.optim.meta_optimizer",
    "AdvancedPlateauMetaOptimizer": "adaptiverl.optim.meta_optimizer",
    "ExpertGateMetaOptimizer": "adaptiverl.optim.meta_optimizer",
    "SmartExpertGateMetaOptimizer": "adaptiverl.optim.meta_optimizer",
    "RLMetaOptimizer": "adaptiverl.optim.meta_optimizer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
