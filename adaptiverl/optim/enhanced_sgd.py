"""EnhancedSGD: SGD with momentum, a Q-learning controller and optional gradient processing.

Front end of the seed "EnhancedSGD: Adaptive Optimizer with Q-Learning", with its names
(``EnhancedSGD(params, lr, momentum, smoothing_factor, entropy_weight, adaptive_momentum, ...)``,
``step(closure=..., current_epoch=...)``, ``optimizer.q_controller.update_mix_prob(loss, epoch)``),
built on the shared core: loss statistics come from :class:`adaptiverl.signals.Signals`, the
controller is :class:`adaptiverl.controllers.qlearning.QLearningController`, and the per-step
tensor work uses ``torch._foreach_*`` kernels (:mod:`adaptiverl.optim._gradient_processing`).

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
   schedule that rewrites ``group["lr"]``):

   * Q-learning (``q_learning``): ``(m_lr, m_mom)`` from the controller; its state is the
     discretised (loss trend, ``H``, loss variance), its reward the loss improvement plus
     ``entropy_weight * H``. ``adaptive_momentum=False`` fixes ``m_mom = 1``.
   * Entropy adjustment (``entropy_adjustment``): ``m_H = clip(EMA_fast(H) / EMA_slow(H), 0.5, 2)``
     with EMA rates ``smoothing_factor`` and ``smoothing_factor / 10``: a gradient distribution
     collapsing onto a few coordinates (falling ``H``) shortens the step, a spreading one lengthens it.
   * Loss spike (``loss_correction_factor``): when the loss's z-score against its window exceeds
     ``spike_threshold``, ``m_spike <- m_spike * loss_correction_factor`` (on LR and momentum);
     on every other step it recovers, ``m_spike <- 1 - (1 - m_spike) * (1 - 1 / spike_recovery_steps)``.

   ``lr_t = lr * m_lr * m_H * m_spike``, ``momentum_t = min(momentum * m_mom * m_spike, max_momentum)``.
8. **SGD core**, identical to ``torch.optim.SGD``: ``d = g + weight_decay * p``;
   ``b <- momentum_t * b + (1 - dampening) * d`` (``b = d`` on the first step);
   ``p <- p - lr_t * (d + momentum_t * b if nesterov else b)``.
9. **Lookahead** (``lookahead_k > 0``; Zhang et al. 2019, arXiv:1907.08610): every ``k`` steps
   the slow weights move ``phi <- phi + lookahead_alpha * (theta - phi)`` and the fast weights are
   reset ``theta <- phi``.

**Bayesian initialisation** (``bayesian_init=True``, or :meth:`EnhancedSGD.reset_parameters_from_prior`
at any time) replaces every weight tensor (``dim >= 2``) by a draw from the zero-mean Gaussian
prior ``N(0, prior_std^2 / fan_in)``: the prior of a Bayesian neural network whose scaling keeps the
pre-activation variance independent of the width (Neal 1996, "Bayesian Learning for Neural
Networks", ch. 2). What is Bayesian about it is only that: a sample from that prior. No posterior is
formed; vectors (biases, norm scales) keep their values.

**Defaults.** Every feature is off by default, the Q-learner included: in the ablation
(``benchmarks/enhanced_sgd_ablation.py``, ``docs/enhanced_sgd.md``) none helped on every task. With
the defaults the optimizer computes exactly what ``torch.optim.SGD`` does; switch features on by
their arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from adaptiverl.controllers.qlearning import QLearningController
from adaptiverl.optim import _gradient_processing as gp
from adaptiverl.signals import ScalarSignal, Signals, to_float

_RETENTION_SCORES = ("norm", "entropy")


class EnhancedSGD(Optimizer):
    """SGD with momentum whose LR and momentum are steered by a Q-learner, plus gradient processing.

    See the module docstring for the math of every stage. Arguments (seed names first):

    Args:
        params: iterable of parameters or param-group dicts.
        lr: base learning rate (multiplied by the controllers' multipliers each step).
        momentum: base momentum (multiplied by the Q-learner's and the spike multiplier).
        smoothing_factor: EMA rate of the fast gradient-entropy average (entropy adjustment).
        entropy_weight: weight of the gradient entropy in the Q-learner's reward.
        adaptive_momentum: let the Q-learner scale the momentum as well as the LR (only with
            ``q_learning=True``; the momentum multiplier stays in ``[0.5, 1]``).
        learning_rate, discount, epsilon, epsilon_decay, initial_mix_prob: Q-learner settings
            (see :class:`~adaptiverl.controllers.qlearning.QLearningController`).
        gradient_clipping: adaptive clipping of the global gradient norm.
        lookahead_k, lookahead_alpha: Lookahead period (0 = off) and slow-weight step.
        loss_correction_factor: LR / momentum factor on a loss spike (``None`` = off).
        gradient_centering: subtract the per-tensor mean of each weight gradient.
        gradient_buffer_size: number of retained past gradients (0 = off).
        weight_decay, dampening, nesterov: as in ``torch.optim.SGD``.
        q_learning: use the Q-learning controller at all (off by default, see the ablation).
        q_interval: optimizer steps per Q-learning decision (multipliers held in between).
        q_options: further :class:`QLearningController` arguments (factors, bounds, bucket edges).
        entropy_adjustment: scale the LR by the fast/slow gradient-entropy ratio.
        noise_scale, noise_decay: annealed gradient noise ``sigma_t^2 = noise_scale / (1+t)^noise_decay``.
        clip_std, clip_warmup: clipping threshold ``mean + clip_std * std`` after ``clip_warmup`` steps.
        spike_threshold, spike_recovery_steps: z-score that counts as a spike; recovery time scale.
        retention_score, retention_blend, retention_decay: buffer ranking, blend weight, score decay.
        bayesian_init, prior_std: sample weights from ``N(0, prior_std^2 / fan_in)`` at construction.
        entropy_bins, entropy_sample_size: histogram bins and sample size of the gradient entropy.
        max_momentum: cap on the effective momentum.
        signal_window: window of the loss / gradient-norm statistics.
        seed: seed of the optimizer's own random generators (Q-learner, noise, Bayesian init).
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
                 nesterov: bool = False, q_learning: bool = False, entropy_adjustment: bool = False,
                 noise_scale: float = 0.0, noise_decay: float = 0.55, clip_std: float = 3.0,
                 clip_warmup: int = 10, spike_threshold: float = 3.0, spike_recovery_steps: int = 10,
                 retention_score: str = "norm", retention_blend: float = 0.1,
                 retention_decay: float = 0.9, bayesian_init: bool = False, prior_std: float = 1.0,
                 entropy_bins: int = 64, entropy_sample_size: int = 16384, max_momentum: float = 0.999,
                 signal_window: int = 20, seed: int = 0) -> None:
        if not lr > 0.0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not 0.0 < smoothing_factor <= 1.0:
            raise ValueError(f"smoothing_factor must be in (0, 1], got {smoothing_factor}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        if lookahead_k < 0:
            raise ValueError(f"lookahead_k must be >= 0 (0 = off), got {lookahead_k}")
        if not 0.0 < lookahead_alpha <= 1.0:
            raise ValueError(f"lookahead_alpha must be in (0, 1], got {lookahead_alpha}")
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
        if noise_scale < 0.0 or noise_decay < 0.0:
            raise ValueError(f"noise_scale and noise_decay must be >= 0, got {noise_scale}, {noise_decay}")
        if clip_std <= 0.0 or clip_warmup < 2:
            raise ValueError(f"need clip_std > 0 and clip_warmup >= 2, got {clip_std}, {clip_warmup}")
        if spike_recovery_steps < 1:
            raise ValueError(f"spike_recovery_steps must be >= 1, got {spike_recovery_steps}")
        if prior_std <= 0.0:
            raise ValueError(f"prior_std must be > 0, got {prior_std}")
        if not 0.0 < max_momentum < 1.0:
            raise ValueError(f"max_momentum must be in (0, 1), got {max_momentum}")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov}
        super().__init__(params, defaults)
        for i, group in enumerate(self.param_groups):
            if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
                raise ValueError(f"param group {i}: nesterov=True needs momentum > 0 and dampening = 0")

        self.smoothing_factor = smoothing_factor
        self.entropy_weight = entropy_weight
        self.adaptive_momentum = adaptive_momentum
        self.gradient_clipping = gradient_clipping
        self.lookahead_k = lookahead_k
        self.lookahead_alpha = lookahead_alpha
        self.loss_correction_factor = loss_correction_factor
        self.gradient_centering = gradient_centering
        self.gradient_buffer_size = gradient_buffer_size
        self.q_learning = q_learning
        self.entropy_adjustment = entropy_adjustment
        self.noise_scale = noise_scale
        self.noise_decay = noise_decay
        self.clip_std = clip_std
        self.clip_warmup = clip_warmup
        self.spike_recovery_steps = spike_recovery_steps
        self.retention_score = retention_score
        self.retention_blend = retention_blend
        self.retention_decay = retention_decay
        self.prior_std = prior_std
        self.entropy_bins = entropy_bins
        self.entropy_sample_size = entropy_sample_size
        self.max_momentum = max_momentum
        self.seed = seed

        self.signals = Signals(window=signal_window, spike_threshold=spike_threshold)
        self.entropy_fast = ScalarSignal("grad_entropy_fast", beta=1.0 - smoothing_factor, window=signal_window)
        self.entropy_slow = ScalarSignal("grad_entropy_slow", beta=1.0 - smoothing_factor / 10,
                                         window=signal_window)
        options = dict(q_options or {})
        if not adaptive_momentum:
            options["momentum_factors"] = (1.0,)
        self.q_controller = QLearningController(
            learning_rate=learning_rate, discount=discount, epsilon=epsilon,
            epsilon_decay=epsilon_decay, initial_mix_prob=initial_mix_prob,
            entropy_weight=entropy_weight, interval=q_interval, seed=seed, **options)
        self._generators: dict[str, torch.Generator] = {}
        self._pending_loss: Any = None
        self._lookahead_initialised = 0
        self.step_count = 0
        self.spike_multiplier = 1.0
        self.entropy_multiplier = 1.0
        self.retention_scores: list[float] = []
        self.epoch: int | None = None
        self._epoch_loss_sum = 0.0
        self._epoch_loss_count = 0
        self._last: dict[str, float] = {"grad_norm": math.nan, "grad_entropy": math.nan,
                                        "clip_threshold": math.inf, "clipped": 0.0, "noise_std": 0.0,
                                        "spike": 0.0}
        if bayesian_init:
            self.reset_parameters_from_prior()

    # ---- random generators -------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed + 1)
            self._generators[key] = gen
        return gen

    @torch.no_grad()
    def reset_parameters_from_prior(self, prior_std: float | None = None) -> None:
        """Replace every weight tensor (``dim >= 2``) by a draw from ``N(0, prior_std^2 / fan_in)``.

        ``fan_in = p[0].numel()`` (inputs per output unit: ``in_features`` for ``nn.Linear``,
        ``in_channels * kernel size`` for convolutions). Draws come from the optimizer's seeded
        generator; a one-off initialisation, not a hot path.
        """
        std = self.prior_std if prior_std is None else prior_std
        if std <= 0.0:
            raise ValueError(f"prior_std must be > 0, got {std}")
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() < 2:
                    continue
                fan_in = p[0].numel()
                sample = torch.randn(p.shape, generator=self._generator(p.device), device=p.device,
                                     dtype=p.dtype)
                p.copy_(sample.mul_(std / math.sqrt(fan_in)))

    # ---- applier protocol ------------------------------------------------------
    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> None:
        """Feed signals. ``loss`` is used by the next :meth:`step` unless that step's closure returns one."""
        if loss is not None:
            self._pending_loss = loss
        if reward is not None or metrics:
            self.signals.observe(reward=reward, **metrics)

    def _effective(self, group: dict[str, Any]) -> tuple[float, float]:
        lr_mult = self.spike_multiplier * self.entropy_multiplier
        mom_mult = self.spike_multiplier
        if self.q_learning:
            lr_mult *= self.q_controller.lr_multiplier
            mom_mult *= self.q_controller.momentum_multiplier
        return group["lr"] * lr_mult, min(group["momentum"] * mom_mult, self.max_momentum)

    def dynamics(self) -> dict[str, Any]:
        groups = []
        for group in self.param_groups:
            lr, momentum = self._effective(group)
            groups.append({"lr": lr, "momentum": momentum, "base_lr": group["lr"],
                           "base_momentum": group["momentum"], "weight_decay": group["weight_decay"]})
        summary = dict(groups[0])
        summary.update(self._last)
        summary.update({"spike_multiplier": self.spike_multiplier,
                        "entropy_multiplier": self.entropy_multiplier, "step": float(self.step_count)})
        if self.q_learning:
            summary.update(self.q_controller.summary())
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
            loss_value = to_float(signal_loss)
            self.signals.observe(loss=loss_value)
        self._track_epoch(current_epoch, loss_value)

        params, grads, groups = [], [], []
        for group in self.param_groups:
            p_g, g_g = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("EnhancedSGD does not support sparse gradients")
                p_g.append(p)
                g_g.append(p.grad)
            params.append(p_g)
            grads.append(g_g)
            groups.append(group)
        all_grads = [g for gs in grads for g in gs]
        if not all_grads:
            return loss
        self.step_count += 1

        processing = (self.gradient_centering or self.gradient_clipping or self.noise_scale > 0
                      or self.gradient_buffer_size > 0)
        if processing:
            grads = [torch._foreach_mul(gs, 1.0) if gs else [] for gs in grads]
            all_grads = [g for gs in grads for g in gs]
        by_kind = _group_by_device_dtype(all_grads) if processing else []
        if self.gradient_centering:
            for gs in by_kind:
                gp.center_(gs)

        need_entropy = self.q_learning or self.entropy_adjustment or (
            self.gradient_buffer_size > 0 and self.retention_score == "entropy")
        need_norm = self.gradient_clipping or self.gradient_buffer_size > 0
        self._statistics(all_grads, need_norm, need_entropy)

        if self.gradient_clipping:
            self._clip(by_kind)
        if self.noise_scale > 0:
            std = math.sqrt(self.noise_scale / (1.0 + self.step_count) ** self.noise_decay)
            self._last["noise_std"] = std
            for gs in by_kind:
                gp.add_noise_(gs, std, self._generator(gs[0].device))
        if self.gradient_buffer_size > 0:
            self._retain(params, grads)

        self._update_multipliers()
        if self.lookahead_k > 0:
            self._init_lookahead(params)
        for group, p_g, g_g in zip(groups, params, grads, strict=True):
            if p_g:
                lr, momentum = self._effective(group)
                self._sgd(group, p_g, g_g, lr, momentum)
        if self.lookahead_k > 0:
            self._lookahead(params)
        return loss

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

    def _statistics(self, grads: list[Tensor], need_norm: bool, need_entropy: bool) -> None:
        """Global norm and entropy, brought to the host together (one sync)."""
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
        if need_entropy:
            self._last["grad_entropy"] = values.pop(0)

    def _clip(self, by_kind: list[list[Tensor]]) -> None:
        norm = self._last["grad_norm"]
        threshold = math.inf
        norm_signal = self.signals.signals.get("grad_norm")
        if norm_signal is not None and norm_signal.count >= self.clip_warmup:
            threshold = norm_signal.mean + self.clip_std * norm_signal.std
        clipped = math.isfinite(norm) and norm > threshold
        if clipped:
            for gs in by_kind:
                torch._foreach_mul_(gs, threshold / norm)
        self._last["clip_threshold"] = threshold
        self._last["clipped"] = float(clipped)
        self.signals.observe(grad_norm=min(norm, threshold))
        if clipped:
            self._last["grad_norm"] = threshold

    def _retain(self, params: list[list[Tensor]], grads: list[list[Tensor]]) -> None:
        flat_params = [p for ps in params for p in ps]
        flat_grads = [g for gs in grads for g in gs]
        score = self._last["grad_norm" if self.retention_score == "norm" else "grad_entropy"]
        self.retention_scores = [s * self.retention_decay for s in self.retention_scores]
        states = [self.state[p] for p in flat_params]
        for state, p in zip(states, flat_params, strict=True):
            if "retained_grads" not in state:
                state["retained_grads"] = torch.zeros((self.gradient_buffer_size, *p.shape),
                                                      dtype=p.dtype, device=p.device)
                state["retained_sum"] = torch.zeros_like(p)
        slot = None
        if len(self.retention_scores) < self.gradient_buffer_size:
            slot = len(self.retention_scores)
            self.retention_scores.append(score)
        elif math.isfinite(score) and score > min(self.retention_scores):
            slot = self.retention_scores.index(min(self.retention_scores))
            self.retention_scores[slot] = score
        sums = [s["retained_sum"] for s in states]
        if slot is not None:
            slots = [s["retained_grads"][slot] for s in states]
            torch._foreach_sub_(sums, slots)
            torch._foreach_add_(sums, flat_grads)
            torch._foreach_copy_(slots, flat_grads)
        mean = torch._foreach_mul(sums, 1.0 / len(self.retention_scores))
        torch._foreach_lerp_(flat_grads, mean, self.retention_blend)

    def _update_multipliers(self) -> None:
        loss = self.signals.loss
        if self.loss_correction_factor is not None and loss.ready:
            spike = loss.is_spike and loss.count > 2
            self._last["spike"] = float(spike)
            if spike:
                self.spike_multiplier *= self.loss_correction_factor
            else:
                self.spike_multiplier = 1.0 - (1.0 - self.spike_multiplier) * (1.0 - 1.0 / self.spike_recovery_steps)
        entropy = self._last["grad_entropy"]
        if self.entropy_adjustment and math.isfinite(entropy):
            self.entropy_fast.update(entropy)
            self.entropy_slow.update(entropy)
            ratio = self.entropy_fast.ema / max(self.entropy_slow.ema, 1e-8)
            self.entropy_multiplier = min(max(ratio, 0.5), 2.0)
        if self.q_learning and math.isfinite(entropy):
            self.q_controller.step(self.signals, entropy)

    def _sgd(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], lr: float,
             momentum: float) -> None:
        """torch.optim.SGD's multi-tensor update with this step's ``lr`` and ``momentum``."""
        for p_kind, g_kind in _group_pairs_by_device_dtype(params, grads):
            if group["weight_decay"] != 0:
                g_kind = torch._foreach_add(g_kind, p_kind, alpha=group["weight_decay"])
            if group["momentum"] != 0:
                states = [self.state[p] for p in p_kind]
                if any(s.get("momentum_buffer") is None for s in states):
                    for s, g in zip(states, g_kind, strict=True):
                        if s.get("momentum_buffer") is None:
                            s["momentum_buffer"] = torch.clone(g).detach()
                        else:
                            s["momentum_buffer"].mul_(momentum).add_(g, alpha=1 - group["dampening"])
                    bufs = [s["momentum_buffer"] for s in states]
                else:
                    bufs = [s["momentum_buffer"] for s in states]
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, g_kind, alpha=1 - group["dampening"])
                if group["nesterov"]:
                    g_kind = torch._foreach_add(g_kind, bufs, alpha=momentum)
                else:
                    g_kind = bufs
            torch._foreach_add_(p_kind, g_kind, alpha=-lr)

    def _lookahead(self, params: list[list[Tensor]]) -> None:
        flat = [p for ps in params for p in ps]
        for p_kind, _ in _group_pairs_by_device_dtype(flat, flat):
            slow = [self.state[p].get("lookahead_slow") for p in p_kind]
            if any(s is None for s in slow):
                raise RuntimeError("lookahead slow weights missing (parameters added after the first step?)")
            if self.step_count % self.lookahead_k == 0:
                torch._foreach_lerp_(slow, p_kind, self.lookahead_alpha)
                torch._foreach_copy_(p_kind, slow)

    def _init_lookahead(self, params: list[list[Tensor]]) -> None:
        """Slow weights ``phi_0 = theta_0``: a copy of each parameter before its first update."""
        flat = [p for ps in params for p in ps]
        if self._lookahead_initialised == len(flat):
            return
        for p in flat:
            state = self.state[p]
            if "lookahead_slow" not in state:
                state["lookahead_slow"] = p.detach().clone()
        self._lookahead_initialised = len(flat)

    # ---- persistence -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["enhanced_sgd"] = {
            "signals": self.signals.state_dict(),
            "entropy_fast": self.entropy_fast.state_dict(),
            "entropy_slow": self.entropy_slow.state_dict(),
            "q_controller": self.q_controller.state_dict(),
            "generators": {k: g.get_state() for k, g in self._generators.items()},
            "step_count": self.step_count, "spike_multiplier": self.spike_multiplier,
            "entropy_multiplier": self.entropy_multiplier,
            "retention_scores": list(self.retention_scores), "epoch": self.epoch,
            "epoch_loss_sum": self._epoch_loss_sum, "epoch_loss_count": self._epoch_loss_count,
            "last": dict(self._last),
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("enhanced_sgd", None)
        super().load_state_dict(state_dict)
        if extra is None:
            return
        self.signals.load_state_dict(extra["signals"])
        self.entropy_fast.load_state_dict(extra["entropy_fast"])
        self.entropy_slow.load_state_dict(extra["entropy_slow"])
        self.q_controller.load_state_dict(extra["q_controller"])
        for key, gen_state in extra["generators"].items():
            self._generator(torch.device(key)).set_state(gen_state)
        self.step_count = extra["step_count"]
        self.spike_multiplier = extra["spike_multiplier"]
        self.entropy_multiplier = extra["entropy_multiplier"]
        self.retention_scores = list(extra["retention_scores"])
        self.epoch = extra["epoch"]
        self._epoch_loss_sum = extra["epoch_loss_sum"]
        self._epoch_loss_count = extra["epoch_loss_count"]
        self._last = dict(extra["last"])


def _group_by_device_dtype(tensors: list[Tensor]) -> list[list[Tensor]]:
    kinds: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        kinds.setdefault((t.device, t.dtype), []).append(t)
    return list(kinds.values())


def _group_pairs_by_device_dtype(params: list[Tensor], grads: list[Tensor]) -> list[tuple[list[Tensor], list[Tensor]]]:
    kinds: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    for p, g in zip(params, grads, strict=True):
        ps, gs = kinds.setdefault((p.device, p.dtype), ([], []))
        ps.append(p)
        gs.append(g)
    return list(kinds.values())
