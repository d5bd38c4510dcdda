"""OnlineSGD, OnlineRMSProp, OnlineAdamW: torch's optimizers with online-adapted hyperparameters.

Each class takes torch's arguments and defaults (``torch.optim.SGD`` / ``RMSprop`` /
``AdamW``) plus the adaptation arguments below, and with ``adapt=False`` it computes
exactly torch's update. With ``adapt=True`` (default):

**Per-tensor step scale.** Tensor i is stepped with ``lr_i = group["lr"] * s_i``; ``s_i``
comes from a shared-weight GRU over one feature row per tensor
(:class:`adaptiverl.controllers.gru.GRUController`), bounded in ``scale_bounds``. Because
the multiplier is applied at step time and never written back, a scheduler that rewrites
``group["lr"]`` (HF's ``LambdaLR``) composes with it.

**Learning signal (hypergradient, Baydin et al. 2018, "Online Learning Rate Adaptation
with Hypergradient Descent", ICLR).** With ``theta_t = theta_{t-1} + u_{t-1}`` and the
update proportional to the scale, ``d u_{t-1} / d log s = u_{t-1}``, hence

    dL(theta_t) / d log s_{i,t-1} = g_{t,i} . u_{t-1,i}.

``u`` is the *realised* change of the tensor between steps, so one formula serves SGD,
RMSprop and AdamW. The signal fed to the controller is the cosine
``cos(g_t, u_{t-1})`` in [-1, 1] (scale-free; weight ``hypergrad_weight``): negative when
consecutive steps agree (the step is too small, scales rise), positive when they
oscillate (too large, scales fall). The controller takes one Adam step (``meta_lr``) on
``mean_i signal_i * log s_i(theta)`` through the last step (see the controller's docstring).

**Reward.** Once rewards are observed, the used log-scale is perturbed by
``explore_std * eps_i`` (``eps ~ N(0, 1)`` from the optimizer's own seeded generator, saved
in ``state_dict`` so every rank draws the same). When a new reward arrives, the
normalised reward change ``r = clip(delta EMA(R) / std(R), -3, 3)`` estimates the
directional derivative along the last perturbation (a simultaneous-perturbation
finite difference, Spall 1992), and ``-reward_weight * r * eps_{t-1,i}`` is added to the
signal: scales whose perturbation came with a reward increase are pushed up.

**Features** (one row per tensor, from a fixed sample (evenly spaced blocks) of at most
``feature_sample_size`` elements, all in about [-1, 1]): ``cos(g_t, u_{t-1})``;
``cos(g_t, memory)`` (momentum buffer or ``exp_avg``); ``log10(rms u / rms theta) / 6``;
``log(rms g_t / rms g_{t-1}) / 3``; the current ``log s / log hi``; ``tanh(100 * loss trend)``
and ``tanh(100 * reward trend)`` from :class:`adaptiverl.signals.Signals`. Loss-only,
reward-only and both work: absent signals read 0.

**Group knobs** (momentum, alpha, betas, weight decay) adapt as multipliers on the
``param_groups`` values, each clamped to an absolute bound given as an argument
(``momentum_bounds`` ...); the rules are in
:meth:`adaptiverl.controllers.online.OnlineController.knob_values`. A knob
whose base value is 0 stays 0. ``adapt_knobs=False`` keeps them at the group values.

**Bad input.** Non-finite ``loss`` / ``reward`` passed to :meth:`observe` are ignored
(one warning). A step whose gradients are non-finite (or whose total norm overflows float32,
which would overflow the momentum and the controller's statistics) is skipped with a warning:
parameters, optimizer state, step counters, controller and generator are untouched.
``finite_check="auto"`` reads the grad norm given to :meth:`observe` (the HF Trainer's clip
norm; free), else does ``"full"``: one read of every gradient (per-tensor norms, summed in
float32); ``"sample"`` checks only the sample the features use (free, but a lone Inf outside
the sample goes unseen); ``"off"`` none. The verdict travels in the step's one host sync with
the controller's output (the controller steps speculatively and is rolled back on a skip).

**Arguments.** torch's, then the class's knob bounds, then the adaptation arguments, which
are the same for the three classes and written once: :class:`adaptiverl.optim.online.Adaptation`
(``adapt``, ``adapt_knobs``, ``controller``, ``total_steps``, ``scale_bounds``, ``max_step_factor``,
``hidden_size``, ``meta_lr``, ``snr_threshold``, ``feature_sample_size``, ``hypergrad_weight``,
``reward_weight``, ``explore_std``, ``knob_lr``, ``knob_scale_bounds``, ``drift_gain``,
``finite_check``, ``signal_beta``, ``signal_window``, ``seed``, ``pretrained_start``);
``inspect.signature`` shows them.

**Kernels** (:mod:`adaptiverl.optim._kernels`, one dispatcher for the three algorithms, as torch's
``adamw()``). ``foreach``/``fused`` left at ``None`` use the fast path: AdamW torch's fused kernel,
one call per run of tensors sharing an lr (on this project's CPU 4x faster than the foreach
kernel with per-tensor lr lists, which ``foreach=True`` selects); SGD and RMSprop
``torch._foreach_*`` with the final update in place. ``foreach=False`` or ``fused=False`` select
the readable single-tensor kernels, which compute the same thing (tested equal).
``capturable`` and ``differentiable`` are not supported and raise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from adaptiverl.controllers.online import FEATURE_NAMES
from adaptiverl.optim._kernels import zeros_state
from adaptiverl.optim._online_args import Adaptation, check_torch_args, knob_bounds
from adaptiverl.optim._online_core import OnlineOptimizer

__all__ = ["FEATURE_NAMES", "Adaptation", "OnlineAdamW", "OnlineOptimizer", "OnlineRMSProp", "OnlineSGD"]


class OnlineSGD(OnlineOptimizer):
    """``torch.optim.SGD`` with an online per-tensor lr multiplier and adapted momentum / weight decay.

    Same arguments and defaults as ``torch.optim.SGD`` (``lr``, ``momentum``, ``dampening``,
    ``weight_decay``, ``nesterov``, ``maximize``, ``foreach``, ``fused``), then the adaptation
    arguments documented in :mod:`adaptiverl.optim.online`. Knobs: ``momentum`` (bounds
    ``momentum_bounds``), ``weight_decay`` (``weight_decay_bounds``).
    """

    ALGORITHM = "sgd"
    MEMORY, STATE_KEYS = "momentum_buffer", ("momentum_buffer",)
    KNOBS = ("momentum", "weight_decay")

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None, momentum_bounds: tuple[float, float] = (0.0, 0.999),
                 weight_decay_bounds: tuple[float, float] = (0.0, 1.0), **adaptation: Any) -> None:
        check_torch_args("OnlineSGD", lr, None, weight_decay, foreach=foreach, fused=fused,
                          capturable=False, differentiable=differentiable)
        if momentum < 0.0:
            raise ValueError(f"OnlineSGD: invalid momentum={momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("OnlineSGD: nesterov momentum requires a momentum and zero dampening")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "maximize": maximize, "foreach": foreach, "fused": fused,
                    "differentiable": differentiable}
        super().__init__(params, defaults, knob_bounds=knob_bounds(momentum=momentum_bounds,
                                                                    weight_decay=weight_decay_bounds), **adaptation)

    def _base_knobs(self, group: dict[str, Any]) -> list[float]:
        return [float(group["momentum"]), float(group["weight_decay"])]

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"momentum_buffer": None}


class OnlineRMSProp(OnlineOptimizer):
    """``torch.optim.RMSprop`` with an online per-tensor lr multiplier and adapted alpha / momentum / wd.

    Same arguments and defaults as ``torch.optim.RMSprop`` (``lr=1e-2``, ``alpha=0.99``,
    ``eps``, ``weight_decay``, ``momentum``, ``centered``, ``maximize``, ``foreach``), then the
    adaptation arguments of :mod:`adaptiverl.optim.online`. Knobs: ``alpha`` (drift rule,
    ``alpha_bounds``), ``momentum`` (``momentum_bounds``), ``weight_decay``.
    """

    ALGORITHM = "rmsprop"
    MEMORY, STATE_KEYS = "momentum_buffer", ("step", "square_avg", "momentum_buffer", "grad_avg")
    KNOBS = ("alpha", "momentum", "weight_decay")
    DRIFT_KNOBS = ("alpha",)

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, capturable: bool = False, foreach: bool | None = None,
                 maximize: bool = False, differentiable: bool = False, *,
                 alpha_bounds: tuple[float, float] = (0.9, 0.9999),
                 momentum_bounds: tuple[float, float] = (0.0, 0.999),
                 weight_decay_bounds: tuple[float, float] = (0.0, 1.0), **adaptation: Any) -> None:
        check_torch_args("OnlineRMSProp", lr, eps, weight_decay, foreach=foreach, fused=None,
                          capturable=capturable, differentiable=differentiable)
        if not momentum >= 0.0:
            raise ValueError(f"OnlineRMSProp: invalid momentum={momentum}")
        if not alpha >= 0.0:
            raise ValueError(f"OnlineRMSProp: invalid alpha={alpha}")
        defaults = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay, "momentum": momentum,
                    "centered": centered, "capturable": capturable, "foreach": foreach,
                    "maximize": maximize, "differentiable": differentiable}
        bounds = knob_bounds(alpha=alpha_bounds, momentum=momentum_bounds, weight_decay=weight_decay_bounds)
        super().__init__(params, defaults, knob_bounds=bounds, **adaptation)

    def _base_knobs(self, group: dict[str, Any]) -> list[float]:
        return [float(group["alpha"]), float(group["momentum"]), float(group["weight_decay"])]

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = {"step": torch.tensor(0.0),
                 "square_avg": zeros_state(p)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = zeros_state(p)
        if group["centered"]:
            state["grad_avg"] = zeros_state(p)
        return state

    def _required_state(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("step", "square_avg") + (("momentum_buffer",) if group.get("momentum", 0) > 0 else ()) \
            + (("grad_avg",) if group.get("centered") else ())

class OnlineAdamW(OnlineOptimizer):
    """``torch.optim.AdamW`` with an online per-tensor lr multiplier and adapted betas / weight decay.

    Same arguments and defaults as ``torch.optim.AdamW`` (``lr=1e-3``, ``betas=(0.9, 0.999)``,
    ``eps=1e-8``, ``weight_decay=1e-2``, ``amsgrad``, ``maximize``, ``foreach``, ``fused``), then
    the adaptation arguments of :mod:`adaptiverl.optim.online`. Knobs: ``beta1``
    (hypergradient, ``beta1_bounds``), ``beta2`` (drift rule, ``beta2_bounds``),
    ``weight_decay`` (``weight_decay_bounds``).
    """

    ALGORITHM = "adamw"
    FAST_KERNEL = "fused"
    MEMORY, STATE_KEYS = "exp_avg", ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    KNOBS = ("beta1", "beta2", "weight_decay")
    DRIFT_KNOBS = ("beta2",)

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 beta1_bounds: tuple[float, float] = (0.0, 0.999),
                 beta2_bounds: tuple[float, float] = (0.9, 0.99999),
                 weight_decay_bounds: tuple[float, float] = (0.0, 1.0), **adaptation: Any) -> None:
        check_torch_args("OnlineAdamW", lr, eps, weight_decay, foreach=foreach, fused=fused,
                          capturable=capturable, differentiable=differentiable)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"OnlineAdamW: invalid betas={betas}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize, "foreach": foreach, "capturable": capturable,
                    "differentiable": differentiable, "fused": fused}
        bounds = knob_bounds(beta1=beta1_bounds, beta2=beta2_bounds, weight_decay=weight_decay_bounds)
        super().__init__(params, defaults, knob_bounds=bounds, **adaptation)

    def _base_knobs(self, group: dict[str, Any]) -> list[float]:
        beta1, beta2 = group["betas"]
        return [float(beta1), float(beta2), float(group["weight_decay"])]

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        fast = not self._use_reference(group)
        state = {
            "step": torch.tensor(0.0, dtype=torch.float32, device=p.device if fast else None),
            "exp_avg": zeros_state(p),
            "exp_avg_sq": zeros_state(p),
        }
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = zeros_state(p)
        return state

    def _required_state(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group.get("amsgrad") else ())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also accepts a torch AdamW state dict; step counters move to their parameter's
        device, where the fused kernel reads them (once, at load time)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            if self._use_reference(group):
                continue
            for p in group["params"]:
                state = self.state.get(p)
                if state and state["step"].device != p.device:
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
