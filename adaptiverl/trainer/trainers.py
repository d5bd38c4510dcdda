"""``AdaptiveTrainer`` and friends: the HF / TRL trainers with every step's signals for the optimizer.

Thin subclasses, one mixin (:class:`AdaptiveTrainerMixin`) over the stock classes::

    AdaptiveTrainer      = AdaptiveTrainerMixin + transformers.Trainer
    AdaptiveSFTTrainer   = AdaptiveTrainerMixin + trl.SFTTrainer
    AdaptiveGRPOTrainer  = AdaptiveTrainerMixin + trl.GRPOTrainer
    AdaptiveRLOOTrainer  = AdaptiveTrainerMixin + trl.RLOOTrainer

The mixin overrides public methods only:

* ``training_step``: records each micro-batch's loss; after the last micro-batch of the
  accumulation window (``accelerator.sync_gradients``, gradients complete and all-reduced,
  not yet clipped) it hands the :class:`~adaptiverl.trainer.callback.AdaptiveCallback` the
  step's loss (summed over the window, averaged over ranks), TRL's new batch rewards and the
  pre-clip gradient norm (see :func:`~adaptiverl.trainer.callback.gradient_norm`; divided by
  the fp16 loss scale when a ``GradScaler`` is on). The Trainer computes that norm too,
  inside a private method whose value no public hook passes on, so it is computed a second
  time here: one ``foreach`` norm over the gradients per optimizer step.
* ``compute_loss``: for GRPO / RLOO batches (sampled completions), the **RL signals** of
  :mod:`adaptiverl.signals.policy`: a :class:`~adaptiverl.signals.policy.PolicyProbe` on the
  window's last micro-batch measures the policy change of the step (KL between the policy before
  and after it, on the step's sampled tokens: two extra no-grad forwards of one micro-batch) and
  the entropy; TRL's ``reward_std`` and ``frac_reward_zero_std`` (groups whose rewards are all
  equal) of the step go along (``policy_signals=False`` turns the probe off).
* ``log``: merges the optimizer's dynamics under ``adaptive/`` into train logs, before the
  report_to integrations see them.
* ``add_callback``: keeps exactly one ``AdaptiveCallback`` (one is added when none is given;
  that one only warns when the optimizer takes no signals, so a plain torch optimizer trains too).
* ``__init__`` takes ``optimizer_cls_and_kwargs`` (also for the TRL trainers whose own
  ``__init__`` lacks it) and ``optimizer_wrapper``: the optimizer is then built by the
  Trainer's own ``create_optimizer``, with HF's decay groups (no weight decay for biases and
  LayerNorm weights, ``get_decay_parameter_names``; ``weight_decay`` comes from the
  training arguments), at the point where FSDP and DeepSpeed expect to wrap it.
  ``transformers`` refuses ``optimizers=`` under FSDP; this path works there.

The one read of a private attribute, TRL's per-generation reward record, is
:func:`trl_recorded_rewards`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer

from adaptiverl.signals.policy import PolicyProbe
from adaptiverl.trainer.callback import AdaptiveCallback, gradient_norm

#: TRL's per-generation-batch records fed to the optimizer as signals of the same name.
TRL_SIGNALS = ("reward", "reward_std", "frac_reward_zero_std")


def trl_recorded_rewards(trainer: Any, key: str = "reward") -> list[float] | None:
    """TRL's record of batch rewards (or another per-batch metric) this logging period, or None.

    ``GRPOTrainer`` / ``RLOOTrainer`` (TRL 1.16) append ``nanmean`` of the weighted reward sum,
    gathered over ranks, to ``trainer._metrics["train"]["reward"]`` each time they score a
    generation batch (``reward_std`` and ``frac_reward_zero_std`` beside it), and clear
    ``_metrics["train"]`` when they log. No public hook passes the values on per step; this is
    the only place adaptiverl reads them (``tests/test_trainers.py`` fails when TRL changes it).
    """
    metrics = getattr(trainer, "_metrics", None)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("train"), dict):
        return None
    values = metrics["train"].get(key)
    return values if isinstance(values, list) else None


def decay_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """HF's two parameter groups: ``weight_decay`` for weights, 0 for biases and LayerNorm weights.

    The same split as ``Trainer.create_optimizer`` (names from
    ``Trainer.get_decay_parameter_names``), for optimizers built outside a trainer and passed
    in ``optimizers=``. Only parameters with ``requires_grad``; empty groups are left out.
    """
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    decay = set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]  # uses no self
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class AdaptiveTrainerMixin:
    """Hands :class:`AdaptiveCallback` the loss, reward and gradient norm of every optimizer step.

    Args (besides the base trainer's):
        optimizer_cls_and_kwargs: ``(optimizer class, kwargs)`` built by the Trainer's
            ``create_optimizer`` over HF's decay groups. ``lr`` defaults to
            ``args.learning_rate``; ``weight_decay`` is set per group from
            ``args.weight_decay`` and must not be in ``kwargs``.
        optimizer_wrapper: called on the optimizer the Trainer built (through
            ``optimizer_cls_and_kwargs`` or ``args.optim``), e.g. ``AdaptiveOptimizer`` or
            ``functools.partial(AdaptiveOptimizer, lr_rule="trend")``.
        policy_signals: measure each step's policy change and entropy on GRPO / RLOO batches
            (two no-grad forwards of one micro-batch per optimizer step).
    """

    def __init__(self, *args: Any, optimizer_cls_and_kwargs: tuple[Any, dict[str, Any]] | None = None,
                 optimizer_wrapper: Callable[[torch.optim.Optimizer], Any] | None = None,
                 policy_signals: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if optimizer_cls_and_kwargs is not None:
            self.optimizer_cls_and_kwargs = self._checked_cls_and_kwargs(optimizer_cls_and_kwargs)
        if optimizer_wrapper is not None and not callable(optimizer_wrapper):
            raise TypeError(f"optimizer_wrapper must be callable, got {optimizer_wrapper!r}")
        if optimizer_wrapper is not None and self.optimizer is not None:
            raise ValueError("optimizer_wrapper wraps the optimizer the Trainer builds; with `optimizers=` "
                             "wrap your optimizer yourself")
        self.optimizer_wrapper = optimizer_wrapper
        if not any(isinstance(cb, AdaptiveCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(AdaptiveCallback(require_targets=False))
        self._adaptive_micro_losses: list[torch.Tensor] = []
        #: per TRL metric: (the list object last seen, how many of its entries were read)
        self._adaptive_trl_seen: dict[str, tuple[list[float] | None, int]] = {}
        self.policy_signals = bool(policy_signals)
        self._adaptive_probe: PolicyProbe | None = None

    def _checked_cls_and_kwargs(self, spec: Any) -> tuple[Any, dict[str, Any]]:
        if not (isinstance(spec, tuple | list) and len(spec) == 2 and callable(spec[0])
                and isinstance(spec[1], dict)):
            raise TypeError(f"optimizer_cls_and_kwargs must be (optimizer class, dict of kwargs), got {spec!r}")
        if self.optimizer is not None:
            raise ValueError("pass either `optimizers=` or `optimizer_cls_and_kwargs=`, not both")
        cls, kwargs = spec
        if "weight_decay" in kwargs:
            raise ValueError(
                "optimizer_cls_and_kwargs: 'weight_decay' is set per parameter group (HF's decay groups: "
                "none for biases and LayerNorm weights); set it in the training arguments "
                f"(weight_decay={kwargs['weight_decay']!r}) instead")
        return cls, {"lr": self.args.learning_rate, **kwargs}

    @property
    def adaptive_callback(self) -> AdaptiveCallback:
        """The ``AdaptiveCallback`` this trainer feeds."""
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, AdaptiveCallback))

    # ---- public Trainer methods -------------------------------------------
    def add_callback(self, callback: Any) -> None:
        """As ``Trainer.add_callback``; a new ``AdaptiveCallback`` replaces the one held."""
        is_adaptive_cb = isinstance(callback, AdaptiveCallback) or (
            isinstance(callback, type) and issubclass(callback, AdaptiveCallback))
        if is_adaptive_cb:
            for held in [cb for cb in self.callback_handler.callbacks if isinstance(cb, AdaptiveCallback)]:
                self.callback_handler.remove_callback(held)
        super().add_callback(callback)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> Any:
        """``Trainer.create_optimizer`` (HF's decay groups), then ``optimizer_wrapper`` on what it built."""
        built_here = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if built_here and self.optimizer_wrapper is not None:
            self.optimizer = optimizer = self.optimizer_wrapper(optimizer)
        return optimizer

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        """The base ``training_step``; after the window's last micro-batch, the step's signals go to the callback."""
        self._adaptive_probe = None
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._adaptive_micro_losses.append(loss.detach().float().mean())
        if self.accelerator.sync_gradients:
            self._hand_over_step(model, self._adaptive_probe)
        return loss

    def compute_loss(self, model: torch.nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """The base ``compute_loss``; on the window's last training micro-batch of sampled
        completions (TRL has generated them by now), first a :class:`PolicyProbe` of the policy."""
        if (self.policy_signals and model.training and self.accelerator.sync_gradients
                and PolicyProbe.applies_to(inputs)):
            temperature = float(getattr(self.args, "temperature", 1.0) or 1.0)
            self._adaptive_probe = PolicyProbe(model, inputs, temperature=temperature,
                                               seed=int(self.state.global_step))
        return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The base ``log``, with the optimizer's dynamics under ``adaptive/`` in train logs."""
        if "loss" in logs:
            for cb in self.callback_handler.callbacks:
                if isinstance(cb, AdaptiveCallback):
                    logs.update(cb.log_entries())
        super().log(logs, *args, **kwargs)

    # ---- helpers ------------------------------------------------------------
    def _hand_over_step(self, model: torch.nn.Module, probe: PolicyProbe | None = None) -> None:
        loss = torch.stack(self._adaptive_micro_losses).sum()
        self._adaptive_micro_losses.clear()
        accelerator = self.accelerator
        if accelerator.num_processes > 1:
            loss = accelerator.reduce(loss.to(accelerator.device), reduction="mean")
        norm = gradient_norm(model.parameters())
        if norm is None:
            loss_value, grad_norm = float(loss.item()), None
        else:
            loss_value, grad_norm = torch.stack([loss.to(norm.device), norm.float()]).tolist()
            scaler = getattr(accelerator, "scaler", None)
            if scaler is not None and scaler.is_enabled():  # fp16: gradients are still loss-scaled here
                grad_norm /= scaler.get_scale()
        trl = {key: self._new_trl_value(key) for key in TRL_SIGNALS}
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, AdaptiveCallback):
                cb.record_step(loss=loss_value, grad_norm=grad_norm, policy_probe=probe, **trl)

    def _new_trl_value(self, key: str) -> float | None:
        """Mean of what TRL recorded under ``key`` since the last step (None if nothing)."""
        values = trl_recorded_rewards(self, key)
        if values is None:
            return None
        held, seen = self._adaptive_trl_seen.get(key, (None, 0))
        if values is not held:
            seen = 0
        new = [v for v in values[seen:] if math.isfinite(v)]
        self._adaptive_trl_seen[key] = (values, len(values))
        return sum(new) / len(new) if new else None


class AdaptiveTrainer(AdaptiveTrainerMixin, Trainer):
    """``transformers.Trainer`` feeding :class:`AdaptiveCallback` every step (see :class:`AdaptiveTrainerMixin`)."""


def __getattr__(name: str) -> Any:
    """The TRL subclasses, defined on first use so that ``AdaptiveTrainer`` needs no TRL import."""
    bases = {"AdaptiveSFTTrainer": "SFTTrainer", "AdaptiveGRPOTrainer": "GRPOTrainer",
             "AdaptiveRLOOTrainer": "RLOOTrainer"}
    if name not in bases:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import trl

    base = getattr(trl, bases[name])
    cls = type(name, (AdaptiveTrainerMixin, base), {
        "__module__": __name__,
        "__doc__": f"``trl.{bases[name]}`` feeding :class:`AdaptiveCallback` every step "
                   "(see :class:`AdaptiveTrainerMixin`)."})
    globals()[name] = cls
    return cls
