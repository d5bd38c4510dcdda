"""AdaptiveScheduler (seed 003): a gradient-free LR/momentum scheduler driven by loss and reward.

A thin front end: the policies (trend, reward, plateau, variance damping, cosine restarts,
reward-driven momentum) are one controller,
:class:`~adaptiverl.controllers.schedule.FeedbackSchedule` (math in its docstring). The scheduler
feeds it the scalars it is given and writes its **multipliers** with the same
:class:`~adaptiverl.optim.controlled.KnobWriter` as the wrappers, right before every
``optimizer.step()`` (a step pre-hook on the optimizer)::

    lr_g    = clip(base_g * m_t, lr_min, lr_max)
    mom_g   = clip(beta_from_multiplier(mom_base_g, h_t), momentum_min, momentum_max)

``base_g`` is the group's own value, re-read whenever something else rewrote it: with a warmup
(any torch/HF scheduler that writes ``group["lr"]``), stepped before or after this one, the step
uses ``warmup(t) * m_t``. Without another scheduler ``base_g`` is the initial LR, and the
accumulating factors are bounded so that ``base_g * A_t`` stays in ``[lr_min, lr_max]``.

Signals follow the one rule of every front end: ``step_loss(loss, reward)``, ``set_metrics`` and
``observe`` only record (a reward is never dropped, with or without a loss); the controller runs
once per optimizer step and reads everything recorded before it. ``scheduler.step()`` (the
``LRScheduler`` API an HF ``Trainer`` calls) only counts epochs and refreshes ``get_last_lr()``.

Consequences (tested): a constant loss leaves the LR exactly constant until the patience rule
fires (one ``big_drop``, then constant again); a noisy but flat loss settles to a bounded LR; a
steadily falling loss raises the LR up to, never beyond, ``lr_max``. The scheduler never reads
weights or gradients.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from adaptiverl.controllers.base import merge_for_role
from adaptiverl.controllers.schedule import FeedbackSchedule
from adaptiverl.optim.controlled import KnobWriter
from adaptiverl.signals import Signals


def _control_hook(scheduler: weakref.ref[AdaptiveScheduler]) -> Callable[..., None]:
    """The optimizer step pre-hook: run the scheduler's control step (a no-op once it is gone)."""
    def hook(*_: Any) -> None:
        target = scheduler()
        if target is not None:
            target.update_hyperparameters()
    return hook


class AdaptiveScheduler(LRScheduler):
    """Loss/reward-driven LR (and momentum) scheduler; see the module docstring for the math.

    Call ``scheduler.step_loss(loss, reward=None)`` once per training step (before or after
    ``optimizer.step()``; the seed calls it after). All arguments are seed 003's.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        loss_beta: float = 0.9, reward_beta: float = 0.9, var_window: int = 20,
        up_factor: float = 1.05, down_factor: float = 0.7, min_rel_improve: float = 1e-4,
        var_damp_base: float = 1.0, var_damp_scale: float = 1.0,
        use_reward: bool = False, reward_up: float = 1.03, reward_down: float = 0.90,
        momentum_up: float = 0.01, momentum_down: float = 0.90,
        patience: int | None = 20, big_drop: float = 0.5, cooldown: int = 50,
        use_cosine: bool = False, T0: int = 200, T_mult: int = 2, eta_min_scale: float = 0.1,
        lr_min: float = 1e-7, lr_max: float = 10.0, momentum_min: float = 0.0, momentum_max: float = 0.999,
        last_epoch: int = -1,
    ) -> None:
        numbers = {"loss_beta": loss_beta, "reward_beta": reward_beta, "var_window": var_window,
                   "up_factor": up_factor, "down_factor": down_factor, "min_rel_improve": min_rel_improve,
                   "var_damp_base": var_damp_base, "var_damp_scale": var_damp_scale, "reward_up": reward_up,
                   "reward_down": reward_down, "momentum_up": momentum_up, "momentum_down": momentum_down,
                   "patience": 0 if patience is None else patience, "big_drop": big_drop, "cooldown": cooldown,
                   "T0": T0, "T_mult": T_mult, "eta_min_scale": eta_min_scale, "lr_min": lr_min,
                   "lr_max": lr_max, "momentum_min": momentum_min, "momentum_max": momentum_max}
        for key, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"AdaptiveScheduler: {key} must be a finite number, got {value!r}")
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
        self.use_reward = use_reward
        momenta = [float(group["momentum"]) for group in optimizer.param_groups if group.get("momentum")]
        self.signals = Signals(beta=loss_beta, window=var_window, reward_beta=reward_beta)
        self.controller = FeedbackSchedule(
            up_factor=up_factor, down_factor=down_factor, min_rel_improve=min_rel_improve,
            var_damp_base=var_damp_base, var_damp_scale=var_damp_scale, use_reward=use_reward,
            reward_up=reward_up, reward_down=reward_down, momentum_up=momentum_up, momentum_down=momentum_down,
            patience=patience, big_drop=big_drop, cooldown=cooldown, use_cosine=use_cosine, T0=T0,
            T_mult=T_mult, eta_min_scale=eta_min_scale, min_mult=lr_min / max(bases), max_mult=lr_max / min(bases),
            reference_momentum=momenta[0] if momenta else None, momentum_min=momentum_min,
            momentum_max=momentum_max)
        self.writer = KnobWriter()
        self._warned_reward = False
        super().__init__(optimizer, last_epoch)
        self._hook = optimizer.register_step_pre_hook(_control_hook(weakref.ref(self)))

    # ---- feeding metrics (record only) ------------------------------------------------------------
    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> None:
        """Record scalars for the next optimizer step (a reward without a loss is kept too)."""
        if reward is not None and not self.use_reward and not self._warned_reward:
            self._warned_reward = True
            warnings.warn("AdaptiveScheduler: a reward was given but use_reward=False; it is recorded in "
                          "the signals (see dynamics()) but no rule reads it", UserWarning, stacklevel=2)
        self.signals.observe(loss=loss, reward=reward, **metrics)

    def set_metrics(self, loss: Any, reward: Any = None) -> None:
        """Seed name: record a scalar loss (and optional reward)."""
        self.observe(loss=loss, reward=reward)

    def step_loss(self, loss: Any, reward: Any = None) -> list[float]:
        """Seed name: record the loss (and reward); returns the LRs the last optimizer step used."""
        self.observe(loss=loss, reward=reward)
        return self.get_last_lr()  # type: ignore[return-value]

    # ---- control ------------------------------------------------------------------------------
    def update_hyperparameters(self) -> None:
        """Run the controller once and write its multipliers (called right before each optimizer step)."""
        adjustments = self.controller(self.signals)
        for index, group in enumerate(self.optimizer.param_groups):
            merged = merge_for_role(adjustments, self.controller.role_of_group(group))
            self.writer.apply_one(index, group, "lr", merged["lr"], bounds=(self.lr_min, self.lr_max))
            if "momentum" in merged:
                self.writer.apply_one(index, group, "momentum", merged["momentum"],
                                      bounds=(self.momentum_min, self.momentum_max))
        self._last_lr = self.lrs()

    def lrs(self) -> list[float]:
        """Per group, the LR the last optimizer step used (the group's own before the first)."""
        return [values["lr"] for values in self.writer.values(self.optimizer.param_groups)]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return self.lrs()

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        """``LRScheduler`` bookkeeping only (the control step runs at ``optimizer.step()``)."""
        if epoch is not None:
            raise ValueError("AdaptiveScheduler.step: epoch is not supported; it adapts per optimizer step")
        self.last_epoch += 1
        self._last_lr = self.lrs()

    def adaptive_base_lrs(self) -> list[float]:
        """Per group, ``base * A_t`` (before variance damping and cosine), clipped to the LR bounds."""
        bases = [base if (base := self.writer.base_of(i, "lr")) is not None else float(g["lr"])
                 for i, g in enumerate(self.optimizer.param_groups)]
        return [min(max(base * self.controller.adaptive_mult, self.lr_min), self.lr_max) for base in bases]

    @property
    def adaptive_mult(self) -> float:
        return self.controller.adaptive_mult

    @property
    def factors(self) -> dict[str, float]:
        return self.controller.factors

    def dynamics(self) -> dict[str, Any]:
        groups = self.writer.values(self.optimizer.param_groups)
        groups = [{key: v for key, v in values.items() if key in ("lr", "momentum")} for values in groups]
        summary = {**groups[0], "adaptive_mult": self.adaptive_mult,
                   **{f"factor_{k}": v for k, v in self.factors.items()}, **self.signals.summary()}
        return {"summary": summary, "groups": groups, "tensors": []}

    # ---- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count, "_last_lr": list(self._last_lr),
                "signals": self.signals.state_dict(), "writer": self.writer.state_dict(),
                "controller": self.controller.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.controller.load_state_dict(state_dict["controller"])
        self.signals.load_state_dict(state_dict["signals"])
        self.writer.load_state_dict(state_dict["writer"])
        self.last_epoch, self._step_count = state_dict["last_epoch"], state_dict["_step_count"]
        self._last_lr = list(state_dict["_last_lr"])
