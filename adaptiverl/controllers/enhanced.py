"""The controller behind :class:`~adaptiverl.optim.EnhancedSGD`: Q-learning, entropy ratio, loss spikes, clipping.

One call per optimizer step, after the step's gradient statistics were observed
(``grad_norm_raw``: this step's global norm; ``grad_entropy``: the normalised entropy ``H`` of the
gradient magnitudes; ``loss``), returns::

    {"*": {"lr": m_q_lr * m_H * m_spike, "momentum": m_q_mom * m_spike, "grad": m_clip}}

* ``m_q_lr``, ``m_q_mom``: :class:`~adaptiverl.controllers.qlearning.QLearningController`
  (stepped only with ``q_learning=True``; it always exists, for the seed's
  ``optimizer.q_controller.update_mix_prob``); its state is the discretised (loss trend, ``H``,
  loss variance).
* ``m_H``: :class:`~adaptiverl.controllers.rules.RatioRule` of ``H`` (``entropy_adjustment``).
* ``m_spike``: :class:`~adaptiverl.controllers.rules.SpikeRule` of the loss
  (``loss_correction_factor``).
* ``m_clip``: :class:`~adaptiverl.controllers.rules.ClipRule` (``gradient_clipping``), the factor
  the gradients are scaled by before the update.

Momentum multipliers act on the averaging horizon
(:func:`~adaptiverl.controllers.base.beta_from_multiplier`). A part that is switched off is
``None`` (the Q-learner: not stepped) and contributes 1.
"""

from __future__ import annotations

from typing import Any

from adaptiverl.controllers.base import ALL_GROUPS, Controller, Multipliers
from adaptiverl.controllers.qlearning import QLearningController
from adaptiverl.controllers.rules import ClipRule, RatioRule, SpikeRule
from adaptiverl.signals import Signals


class EnhancedSGDController(Controller):
    """The four optional parts of EnhancedSGD's control, one call per step (module docstring)."""

    _state_keys = ("last",)
    _state_children = ("q_learner", "entropy_ratio", "spike", "clip")

    def __init__(self, q_learner: QLearningController, *, q_learning: bool = False,
                 entropy_ratio: RatioRule | None = None, spike: SpikeRule | None = None,
                 clip: ClipRule | None = None) -> None:
        self.q_learner, self.q_learning = q_learner, q_learning
        self.entropy_ratio, self.spike, self.clip = entropy_ratio, spike, clip
        self.last: dict[str, float] = {"q_lr": 1.0, "q_momentum": 1.0, "entropy": 1.0, "spike": 1.0, "clip": 1.0}

    def __call__(self, signals: Signals) -> Multipliers:
        if self.clip is not None:
            self.last["clip"] = self.clip(signals)
        if self.spike is not None:
            self.last["spike"] = self.spike(signals)
        if self.entropy_ratio is not None:
            self.last["entropy"] = self.entropy_ratio(signals)
        if self.q_learning:
            knobs = self.q_learner(signals)[ALL_GROUPS]
            self.last["q_lr"], self.last["q_momentum"] = knobs["lr"], knobs["momentum"]
        return self.multipliers()

    def multipliers(self) -> Multipliers:
        """The multipliers of the last call (all 1 before the first)."""
        last = self.last
        return {ALL_GROUPS: {"lr": last["q_lr"] * last["entropy"] * last["spike"],
                             "momentum": last["q_momentum"] * last["spike"], "grad": last["clip"]}}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"spike_multiplier": self.last["spike"], "entropy_multiplier": self.last["entropy"]}
        if self.clip is not None:
            out.update(clip_threshold=self.clip.threshold, clipped=float(self.clip.clipped))
        if self.spike is not None:
            out["spike"] = float(self.spike.last_spike)
        if self.q_learning:
            out.update(self.q_learner.summary())
        return out
