"""EnhancedSGD: the one SGD kernel + a gradient-processing chain + a controller.

Front end of the seed "EnhancedSGD: Adaptive Optimizer with Q-Learning", with its names
(``EnhancedSGD(params, lr, momentum, smoothing_factor, entropy_weight, adaptive_momentum, ...)``,
``step(closure=..., current_epoch=...)``, ``optimizer.q_controller.update_mix_prob(loss, epoch)``),
built on the shared core: statistics go through :class:`adaptiverl.signals.Signals`, every
multiplier comes from one controller
(:class:`~adaptiverl.controllers.enhanced.EnhancedSGDController`: Q-learning, entropy ratio, loss
spike, clipping), the gradient transformations are :mod:`adaptiverl.optim._gradient_processing`
and the update is the shared SGD kernel :func:`adaptiverl.optim._kernels.sgd`.

One step, in order (every stage but the SGD core is switched by its constructor argument; the
gradient stages 2-6 work on one copy of the gradients, so ``p.grad`` is never modified):

1. **Loss** from ``closure()`` (or the last :meth:`EnhancedSGD.observe`) is fed to ``Signals``.
2. **Gradient centering** (``gradient_centering``): ``g <- g - mean(g)`` per weight tensor.
3. **Statistics**: global norm ``||g||`` and the normalised entropy ``H`` of the histogram of
   ``|g|`` over a strided sample of all tensors (one host sync for both).
4. **Adaptive clipping** (``gradient_clipping``): threshold ``c_t = mean + clip_std * std`` of the
   recent (already clipped) gradient norms, after ``clip_warmup`` steps; if ``||g|| > c_t`` then
   ``g <- g * c_t / ||g||``. The threshold tracks the running variance of the norm, in the spirit
   of AutoClip (Seetharaman et al. 2020, arXiv:2007.14469), which uses a percentile instead.
5. **Annealed noise** (``noise_scale > 0``): ``g <- g + N(0, sigma_t^2)``,
   ``sigma_t^2 = noise_scale / (1 + t)^noise_decay`` (Neelakantan et al. 2015, arXiv:1511.06807).
6. **Gradient retention** (``gradient_buffer_size = K > 0``): a buffer of the ``K`` past gradients
   with the highest score (``retention_score``: ``"norm"`` or ``"entropy"``); scores decay by
   ``retention_decay`` per step so stale gradients are replaced. The update uses
   ``g <- (1 - retention_blend) * g + retention_blend * mean(buffer)``. Costs ``K + 1`` copies of
   the parameters.
7. **Multipliers** on each group's ``lr`` and ``momentum`` (multipliers, so they compose with any
   schedule that rewrites ``group["lr"]``; a momentum multiplier scales the momentum's averaging
   horizon, :func:`~adaptiverl.controllers.base.beta_from_multiplier`):

   * Q-learning (``q_learning``): ``(m_lr, m_mom)`` from the controller; its state is the
     discretised (loss trend, ``H``, loss variance), its reward the loss improvement plus
     ``entropy_weight * H``. ``adaptive_momentum=False`` fixes ``m_mom = 1``.
   * Entropy adjustment (``entropy_adjustment``): ``m_H = clip(EMA_fast(H) / EMA_slow(H), 0.5, 2)``
     with EMA rates ``smoothing_factor`` and ``smoothing_factor / 10``: a gradient distribution
     collapsing onto a few coordinates (falling ``H``) shortens the step, a spreading one lengthens it.
   * Loss spike (``loss_correction_factor``): when the loss's z-score against its window exceeds
     ``spike_threshold``, ``m_spike <- m_spike * loss_correction_factor`` (on LR and momentum);
     on every other step it recovers geometrically in log space,
     ``log m_spike <- (1 - 1 / spike_recovery_steps) * log m_spike``.

   ``lr_t = lr * m_lr * m_H * m_spike``,
   ``momentum_t = min(beta_from_multiplier(momentum, m_mom * m_spike), max_momentum)``.
8. **SGD core**, the shared kernel, identical to ``torch.optim.SGD``: ``d = g + weight_decay * p``;
   ``b <- momentum_t * b + (1 - dampening) * d`` (``b = d`` on the first step);
   ``p <- p - lr_t * (d + momentum_t * b if nesterov else b)``.
9. **Lookahead** (``lookahead_k > 0``; Zhang et al. 2019, arXiv:1907.08610): every ``k`` steps
   the slow weights move ``phi <- phi + lookahead_alpha * (theta - phi)`` and the fast weights are
   reset ``theta <- phi``.

**Bayesian initialisation** (the seed's ``bayesian_init=True``) is model initialisation, not an
optimizer step: the constructor calls the utility
:func:`adaptiverl.optim.initialization.sample_from_prior_` (weights from ``N(0, prior_std^2 /
fan_in)``), which any model can use without an optimizer.

**Tunables.** Everything that acts per param group is in ``defaults`` (so a group can override
it): ``lr``, ``momentum``, ``dampening``, ``weight_decay``, ``nesterov``, ``maximize``,
``max_momentum``, ``gradient_centering``, ``noise_scale``, ``noise_decay``, ``lookahead_k``,
``lookahead_alpha``. The controller's settings (Q-learning, entropy, spike, clipping) and the
retention buffer act on global statistics of all groups together and stay constructor arguments.

**Defaults.** Every feature is off by default, the Q-learner included: in the ablation
(``benchmarks/enhanced_sgd_ablation.py``, ``docs/enhanced_sgd.md``) none helped on every task. With
the defaults the optimizer computes exactly what ``torch.optim.SGD`` does; switch features on by
their arguments.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from adaptiverl.controllers.base import ALL_GROUPS, beta_from_multiplier
from adaptiverl.controllers.enhanced import EnhancedSGDController
from adaptiverl.controllers.qlearning import QLearningController
from adaptiverl.controllers.rules import ClipRule, RatioRule, SpikeRule
from adaptiverl.optim import _gradient_processing as gp
from adaptiverl.optim._kernels import sgd
from adaptiverl.optim.initialization import sample_from_prior_
from adaptiverl.signals import Signals, to_float

_RETENTION_SCORES = ("norm", "entropy")


def _check_group(where: str, group: dict[str, Any]) -> None:
    """Validate the per-group tunables (``where`` names the constructor or the group)."""
    checks = [
        (group["lr"] > 0.0, f"lr must be > 0, got {group['lr']}"),
        (0.0 <= group["momentum"] < 1.0, f"momentum must be in [0, 1), got {group['momentum']}"),
        (group["weight_decay"] >= 0.0, f"weight_decay must be >= 0, got {group['weight_decay']}"),
        (not group["nesterov"] or (group["momentum"] > 0 and group["dampening"] == 0),
         "nesterov=True needs momentum > 0 and dampening = 0"),
        (group["lookahead_k"] >= 0, f"lookahead_k must be >= 0 (0 = off), got {group['lookahead_k']}"),
        (0.0 < group["lookahead_alpha"] <= 1.0, f"lookahead_alpha must be in (0, 1], got {group['lookahead_alpha']}"),
        (group["noise_scale"] >= 0.0 and group["noise_decay"] >= 0.0,
         f"noise_scale and noise_decay must be >= 0, got {group['noise_scale']}, {group['noise_decay']}"),
        (0.0 < group["max_momentum"] < 1.0, f"max_momentum must be in (0, 1), got {group['max_momentum']}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{where}{message}")


class EnhancedSGD(Optimizer):
    """SGD with momentum whose LR and momentum are steered by a controller, plus gradient processing.

    See the module docstring for the math of every stage. Arguments (seed names first):

    Args:
        params: iterable of parameters or param-group dicts.
        lr: base learning rate (multiplied by the controller's multipliers each step).
        momentum: base momentum (its horizon multiplied by the Q-learner's and the spike multiplier).
        smoothing_factor: EMA rate of the fast gradient-entropy average (entropy adjustment).
        entropy_weight: weight of the gradient entropy in the Q-learner's reward.
        adaptive_momentum: let the Q-learner scale the momentum as well as the LR (only with
            ``q_learning=True``; the momentum multiplier stays in ``[0.5, 1]``).
        learning_rate, discount, epsilon, epsilon_decay, initial_mix_prob: Q-learner settings
            (see :class:`~adaptiverl.controllers.qlearning.QLearningController`).
        gradient_clipping: adaptive clipping of the global gradient norm.
        lookahead_k, lookahead_alpha: Lookahead period (0 = off) and slow-weight step (per group).
        loss_correction_factor: LR / momentum factor on a loss spike (``None`` = off).
        gradient_centering: subtract the per-tensor mean of each weight gradient (per group).
        gradient_buffer_size: number of retained past gradients (0 = off).
        weight_decay, dampening, nesterov, maximize: as in ``torch.optim.SGD`` (per group).
        q_learning: use the Q-learning controller at all (off by default, see the ablation).
        q_interval: optimizer steps per Q-learning decision (multipliers held in between).
        q_options: further :class:`QLearningController` arguments (factors, bounds, bucket edges).
        entropy_adjustment: scale the LR by the fast/slow gradient-entropy ratio.
        noise_scale, noise_decay: annealed gradient noise ``sigma_t^2 = noise_scale / (1+t)^noise_decay`` (per group).
        clip_std, clip_warmup: clipping threshold ``mean + clip_std * std`` after ``clip_warmup`` steps.
        spike_threshold, spike_recovery_steps: z-score that counts as a spike; recovery time scale.
        retention_score, retention_blend, retention_decay: buffer ranking, blend weight, score decay.
        bayesian_init, prior_std: initialise the weights from ``N(0, prior_std^2 / fan_in)``
            (:func:`~adaptiverl.optim.initialization.sample_from_prior_`).
        entropy_bins, entropy_sample_size: histogram bins and sample size of the gradient entropy.
        max_momentum: cap on the effective momentum (per group).
        signal_window: window of the loss / gradient-norm statistics.
        seed: seed of the optimizer's own random generators (Q-learner, noise, Bayesian init).
        finite_check: ``"full"`` (default) skips a step whose gradients hold a NaN or inf element,
            as the Online optimizers do, or whose update would overflow a parameter (parameters,
            momentum, controller and counters unchanged; counted in ``skipped_steps``, warned);
            ``"off"`` steps regardless, as ``torch.optim.SGD`` does.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.9,
                 smoothing_factor: float = 0.1, entropy_weight: float = 0.1,
                 adaptive_momentum: bool = True, *,
                 learning_rate: float = 0.1, discount: float = 0.9, epsilon: float = 0.2,
                 epsilon_decay: float = 0.998, initial_mix_prob: float = 0.9, q_interval: int = 10,
                 q_options: dict[str, Any] | None = None,
                 gradient_clipping: bool = False, lookahead_k: int = 0, lookahead_alpha: float = 0.5,
                 loss_correction_factor: float | None = None, gradient_centering: bool = False,
                 gradient_buffer_size: int = 0, weight_decay: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, maximize: bool = False, q_learning: bool = False,
                 entropy_adjustment: bool = False, noise_scale: float = 0.0, noise_decay: float = 0.55,
                 clip_std: float = 3.0, clip_warmup: int = 10, spike_threshold: float = 3.0,
                 spike_recovery_steps: int = 10, retention_score: str = "norm", retention_blend: float = 0.1,
                 retention_decay: float = 0.9, bayesian_init: bool = False, prior_std: float = 1.0,
                 entropy_bins: int = 64, entropy_sample_size: int = 16384, max_momentum: float = 0.999,
                 signal_window: int = 20, seed: int = 0, finite_check: str = "full") -> None:
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "maximize": maximize, "max_momentum": max_momentum,
                    "gradient_centering": gradient_centering, "noise_scale": noise_scale,
                    "noise_decay": noise_decay, "lookahead_k": lookahead_k, "lookahead_alpha": lookahead_alpha}
        _check_group("", defaults)
        if not 0.0 < smoothing_factor <= 1.0:
            raise ValueError(f"smoothing_factor must be in (0, 1], got {smoothing_factor}")
        if loss_correction_factor is not None and not 0.0 < loss_correction_factor < 1.0:
            raise ValueError(f"loss_correction_factor must be in (0, 1) or None, got {loss_correction_factor}")
        if gradient_buffer_size < 0:
            raise ValueError(f"gradient_buffer_size must be >= 0 (0 = off), got {gradient_buffer_size}")
        if retention_score not in _RETENTION_SCORES:
            raise ValueError(f"retention_score must be one of {_RETENTION_SCORES}, got {retention_score!r}")
        if not 0.0 < retention_blend <= 1.0:
            raise ValueError(f"retention_blend must be in (0, 1], got {retention_blend}")
        if not 0.0 < retention_decay <= 1.0:
            raise ValueError(f"retention_decay must be in (0, 1], got {retention_decay}")
        if prior_std <= 0.0:
            raise ValueError(f"prior_std must be > 0, got {prior_std}")
        clip = ClipRule("grad_norm", "grad_norm_raw", k=clip_std, warmup=clip_warmup)
        spike = SpikeRule("loss", factor=loss_correction_factor or 0.5, recovery_steps=spike_recovery_steps)
        super().__init__(params, defaults)
        for i, group in enumerate(self.param_groups):
            _check_group(f"param group {i}: ", group)

        self.finite_check = gp.check_finite_mode("EnhancedSGD", finite_check)
        self.skipped_steps = 0
        self.gradient_buffer_size = gradient_buffer_size
        self.retention_score, self.retention_blend, self.retention_decay = retention_score, retention_blend, retention_decay
        self.entropy_bins, self.entropy_sample_size = entropy_bins, entropy_sample_size
        self.seed = seed
        self.signals = Signals(window=signal_window, spike_threshold=spike_threshold)
        options = dict(q_options or {})
        if not adaptive_momentum:
            options["momentum_factors"] = (1.0,)
        self.q_controller = QLearningController(
            learning_rate=learning_rate, discount=discount, epsilon=epsilon,
            epsilon_decay=epsilon_decay, initial_mix_prob=initial_mix_prob,
            entropy_weight=entropy_weight, interval=q_interval, seed=seed, **options)
        self.controller = EnhancedSGDController(
            self.q_controller, q_learning=q_learning,
            entropy_ratio=RatioRule("grad_entropy", rate=smoothing_factor) if entropy_adjustment else None,
            spike=spike if loss_correction_factor is not None else None,
            clip=clip if gradient_clipping else None)
        self._generators: dict[str, torch.Generator] = {}
        self._pending_loss: Any = None
        self.step_count = 0
        self.retention_scores: list[float] = []
        self.epoch: int | None = None
        self._epoch_loss_sum = 0.0
        self._epoch_loss_count = 0
        self._last: dict[str, float] = {"grad_norm": math.nan, "grad_entropy": math.nan, "noise_std": 0.0}
        if bayesian_init:
            sample_from_prior_((p for group in self.param_groups for p in group["params"]), prior_std, seed=seed)

    @property
    def spike_multiplier(self) -> float:
        return self.controller.last["spike"]

    @property
    def entropy_multiplier(self) -> float:
        return self.controller.last["entropy"]

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = self._generators[key] = torch.Generator(device=device).manual_seed(self.seed + 1)
        return gen

    # ---- applier protocol ------------------------------------------------------
    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> None:
        """Record signals. ``loss`` is used by the next :meth:`step` unless that step's closure returns one."""
        if loss is not None:  # a tensor is read at the step (no host sync here), anything else now
            self._pending_loss = loss if isinstance(loss, torch.Tensor) else to_float(loss, "loss")
        if reward is not None or metrics:
            self.signals.observe(reward=reward, **metrics)

    def step_loss(self, loss: Any) -> None:
        """Record the loss for the next step (the same as ``observe(loss=loss)``)."""
        self.observe(loss=loss)

    def _effective(self, group: dict[str, Any]) -> tuple[float, float]:
        knobs = self.controller.multipliers()[ALL_GROUPS]
        momentum = beta_from_multiplier(float(group["momentum"]), knobs["momentum"])
        return group["lr"] * knobs["lr"], min(momentum, group["max_momentum"])

    def dynamics(self) -> dict[str, Any]:
        groups = []
        for group in self.param_groups:
            lr, momentum = self._effective(group)
            groups.append({"lr": lr, "momentum": momentum, "base_lr": group["lr"],
                           "base_momentum": group["momentum"], "weight_decay": group["weight_decay"]})
        summary = dict(groups[0])
        summary.update(self._last)
        summary.update(self.controller.summary())
        summary["step"] = float(self.step_count)
        summary.update(self.signals.summary())
        return {"summary": summary, "groups": groups, "tensors": []}

    # ---- the step ----------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None,
             current_epoch: int | None = None) -> Any:
        """One update. ``closure`` may recompute the loss (or, as in the seed, return it).

        ``current_epoch`` (optional): when it changes, the Q-learner's ``update_mix_prob`` gets the
        mean loss of the finished epoch.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        signal_loss = loss if loss is not None else self._pending_loss
        self._pending_loss = None
        loss_value = None
        if signal_loss is not None:
            loss_value = to_float(signal_loss, "loss")
            self.signals.observe(loss=loss_value)
        self._track_epoch(current_epoch, loss_value)

        groups = [g for g in self.param_groups if any(p.grad is not None for p in g["params"])]
        params = [[p for p in g["params"] if p.grad is not None] for g in groups]
        if not params:
            return loss
        if any(p.grad.is_sparse for ps in params for p in ps):
            raise RuntimeError("EnhancedSGD does not support sparse gradients")
        if self._skip(groups, params):
            return loss
        self.step_count += 1
        grads = self._processed_gradients(groups, params)
        for group, ps, gs in zip(groups, params, grads, strict=True):
            lr, momentum = self._effective(group)
            states = [self.state[p] for p in ps]
            bufs = [s.get("momentum_buffer") for s in states]
            if group["lookahead_k"] > 0 and any("lookahead_slow" not in s for s in states):
                for p, s in zip(ps, states, strict=True):
                    if "lookahead_slow" not in s:  # phi_0 = theta_0, before the first update
                        s["lookahead_slow"] = p.detach().clone()
            sgd(ps, gs, bufs, lrs=[lr] * len(ps), momentum=momentum,
                dampening=group["dampening"], weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                maximize=group["maximize"])
            for s, buf in zip(states, bufs, strict=True):
                s["momentum_buffer"] = buf
            if group["lookahead_k"] > 0 and self.step_count % group["lookahead_k"] == 0:
                slow = [s["lookahead_slow"] for s in states]
                torch._foreach_lerp_(slow, ps, group["lookahead_alpha"])
                torch._foreach_copy_(ps, slow)
        return loss

    def _skip(self, groups: list[dict[str, Any]], params: list[list[Tensor]]) -> bool:
        """With ``finite_check="full"``: whether to skip this step, because a gradient holds a NaN or
        inf element (:func:`~adaptiverl.optim._gradient_processing.non_finite_flag`, the native
        optimizers' check) or because the SGD update would push a parameter past its dtype's range
        (a finite gradient times a huge lr). The update is bounded per tensor from the L2 norms
        (each at least the largest magnitude) of the parameter ``P``, gradient ``G`` and momentum
        buffer ``B``::

            |d| <= G + wd P,   |b'| <= mu B + |d|,   |p'| <= P + lr (|d| + mu |b'| if nesterov else |b'|)

        with ``lr``, ``mu`` the last effective values and a margin of 4 for the controller's next
        multipliers and the gradient processing. One ``_foreach_norm`` per list and one host sync."""
        if self.finite_check == "off":
            return False
        flat = [p.grad for ps in params for p in ps]
        checks = [non_finite := gp.non_finite_flag(flat).double().reshape(())]
        for group, ps in zip(groups, params, strict=True):
            lr, momentum = self._effective(group)
            bufs = [self.state[p].get("momentum_buffer") for p in ps]
            if any(buf is None for buf in bufs):  # a tensor's first step: no buffer (0) yet
                bufs = [torch.zeros((), device=p.device, dtype=p.dtype) if buf is None else buf
                        for p, buf in zip(ps, bufs, strict=True)]
            big_p, big_g, big_b = (torch.stack(torch._foreach_norm(ts)).double().to(non_finite.device)
                                   for ts in (ps, [p.grad for p in ps], bufs))
            d = big_g + group["weight_decay"] * big_p
            b = momentum * big_b + d
            step = d + momentum * b if group["nesterov"] else b
            limit = torch.tensor([torch.finfo(p.dtype).max for p in ps], dtype=torch.float64, device=d.device)
            checks.append(((big_p + 4.0 * lr * step) / limit).max().nan_to_num(nan=1.0))
        found, *ratios = torch.stack(checks).tolist()
        if found:
            gp.record_skip(self, "non-finite gradient")
        elif max(ratios) >= 1.0:
            gp.record_skip(self, "the update would overflow a parameter (lr too large for the gradient)")
        return bool(found) or max(ratios) >= 1.0

    def _processed_gradients(self, groups: list[dict[str, Any]], params: list[list[Tensor]]) -> list[list[Tensor]]:
        """Stages 2-7: statistics, the controller's call, centering, clipping, noise, retention."""
        grads = [[p.grad for p in ps] for ps in params]
        clipping = self.controller.clip is not None
        copy = clipping or self.gradient_buffer_size > 0 or any(
            g["gradient_centering"] or g["noise_scale"] > 0 for g in groups)
        if copy:
            grads = [torch._foreach_mul(gs, 1.0) for gs in grads]
        for group, gs in zip(groups, grads, strict=True):
            if group["gradient_centering"]:
                for bucket in gp.by_device_and_dtype(gs):
                    gp.center_(bucket)
        flat = [g for gs in grads for g in gs]
        self._statistics(flat)
        knobs = self.controller(self.signals)[ALL_GROUPS]
        if clipping:
            norm, scale = self._last["grad_norm"], knobs["grad"]
            if scale != 1.0:
                torch._foreach_mul_(flat, scale)
            self._last["grad_norm"] = norm * scale
            self.signals.observe(grad_norm=norm * scale)
        for group, gs in zip(groups, grads, strict=True):
            if group["noise_scale"] > 0:
                std = math.sqrt(group["noise_scale"] / (1.0 + self.step_count) ** group["noise_decay"])
                self._last["noise_std"] = std
                for bucket in gp.by_device_and_dtype(gs):
                    gp.add_noise_(bucket, std, self._generator(bucket[0].device))
        if self.gradient_buffer_size > 0:
            self._retain([p for ps in params for p in ps], flat)
        return grads

    def _statistics(self, grads: list[Tensor]) -> None:
        """Global norm and entropy, brought to the host together (one sync), observed as signals."""
        need_entropy = self.controller.q_learning or self.controller.entropy_ratio is not None or (
            self.gradient_buffer_size > 0 and self.retention_score == "entropy")
        need_norm = self.controller.clip is not None or self.gradient_buffer_size > 0
        stats = []
        if need_norm:
            stats.append(gp.total_norm(grads))
        if need_entropy:
            stats.append(gp.gradient_entropy(grads, self.entropy_bins, self.entropy_sample_size)
                         .to(grads[0].device))
        if not stats:
            return
        values = torch.stack(stats).tolist()
        if need_norm:
            self._last["grad_norm"] = values.pop(0)
            self.signals.observe(grad_norm_raw=self._last["grad_norm"])
        if need_entropy:
            self._last["grad_entropy"] = values.pop(0)
            self.signals.observe(grad_entropy=self._last["grad_entropy"])

    def _retain(self, params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self.state[p] for p in params]
        for state, p in zip(states, params, strict=True):
            if "retained_grads" not in state:
                state["retained_grads"] = torch.zeros((self.gradient_buffer_size, *p.shape),
                                                      dtype=p.dtype, device=p.device)
                state["retained_sum"] = torch.zeros_like(p)
        score = self._last["grad_norm" if self.retention_score == "norm" else "grad_entropy"]
        gp.retain_and_blend_([s["retained_grads"] for s in states], [s["retained_sum"] for s in states], grads,
                             self.retention_scores, score, blend=self.retention_blend, decay=self.retention_decay)

    def _track_epoch(self, current_epoch: int | None, loss_value: float | None) -> None:
        if current_epoch is None:
            return
        if self.epoch is not None and current_epoch != self.epoch and self._epoch_loss_count:
            self.q_controller.update_mix_prob(self._epoch_loss_sum / self._epoch_loss_count, self.epoch)
            self._epoch_loss_sum, self._epoch_loss_count = 0.0, 0
        self.epoch = current_epoch
        if loss_value is not None and math.isfinite(loss_value):
            self._epoch_loss_sum += loss_value
            self._epoch_loss_count += 1

    # ---- persistence -------------------------------------------------------------
    _EXTRA_STATE = ("step_count", "retention_scores", "epoch", "_epoch_loss_sum", "_epoch_loss_count", "_last",
                    "skipped_steps")

    def __getstate__(self) -> dict[str, Any]:
        """Everything (torch keeps only defaults, state and param groups, and a copy could not
        step): ``copy.deepcopy`` and pickle give an optimizer that continues identically."""
        return self.__dict__.copy()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        extra = {key.lstrip("_"): copy.deepcopy(getattr(self, key)) for key in self._EXTRA_STATE}
        extra.update(signals=self.signals.state_dict(), controller=self.controller.state_dict(),
                     generators={k: g.get_state() for k, g in self._generators.items()})
        state["enhanced_sgd"] = extra
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's own state, then (if present) the signals, the controller, the generators and counters."""
        state = dict(state_dict)
        extra = state.pop("enhanced_sgd", None)
        super().load_state_dict(state)
        if extra is not None:
            self.signals.load_state_dict(extra["signals"])
            self.controller.load_state_dict(extra["controller"])
            for device, gen_state in extra["generators"].items():
                self._generator(torch.device(device)).set_state(gen_state)
            for key in self._EXTRA_STATE:
                if key.lstrip("_") in extra:  # skipped_steps is newer than some checkpoints
                    setattr(self, key, copy.deepcopy(extra[key.lstrip("_")]))
