"""Every optimizer the benchmarks compare, each at its usual default learning rate.

Competitors (real packages, the ``bench`` extra):

* ``adamw_fused_cosine`` / ``adamw_foreach_cosine``: ``torch.optim.AdamW`` (``fused=True`` /
  ``foreach=True``, weight decay 0.01) with linear warm-up over the first 5% of steps, then cosine
  decay to 0: ``lr_t = lr * min(t / w, 0.5 (1 + cos(pi (t - w) / (T - w))))``. The benchmarks tune its
  LR over the grid; that tuned result is the 1.00 of every normalised table.
* ``adamw_constant``: fused AdamW (weight decay 0.01) at a constant LR, no schedule.
* ``adamw_plateau``: AdamW (foreach) with ``ReduceLROnPlateau(factor=0.5, patience=T // 15)`` stepped
  on each training loss.
* ``sgd_momentum``: ``torch.optim.SGD(momentum=0.9)`` with the same warm-up + cosine schedule.
* ``schedulefree_adamw``: ``schedulefree.AdamWScheduleFree`` (Defazio et al. 2024, winner of the
  AlgoPerf self-tuning track) at its package default LR 2.5e-3, warm-up 5%; ``.train()`` / ``.eval()``
  are called around training and evaluation.
* ``prodigy``: ``prodigyopt.Prodigy`` (Mishchenko & Defazio 2024), learning-rate-free, ``lr=1.0``,
  with the cosine schedule its authors recommend. Its reported LR is the effective ``d * lr``.

Ours, imported lazily: ``online_adamw`` (the pretrained controller, the default),
``online_adamw_fresh`` (``controller="fresh"``: the fixed rule plus online learning, no meta-trained
weights), ``online_sgd``, ``online_rmsprop`` (each told ``total_steps`` and fed ``observe(loss=...)``),
``adaptive_optimizer`` (AdamW wrapped with the seed's rules, ``step_loss`` before ``step``),
``adaptive_scheduler`` (AdamW + ``AdaptiveScheduler.step_loss``), ``meta_plateau``,
``meta_advanced_plateau``, ``meta_rl`` (AdamW in an ``OptimizerWrapper``, fed loss, LR and gradient
norm through ``update_hyperparameters``) and ``enhanced_sgd`` (``step(closure=...)``). Ours take the
``lr`` default of their own constructor signature. A method whose module is missing is returned in
``unavailable`` with the reason, never silently dropped.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from benchmarks.tasks import Driver, Method

WARMUP_FRACTION = 0.05


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``WARMUP_FRACTION`` of the steps, then cosine decay to zero."""
    warmup = max(1, int(WARMUP_FRACTION * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _adamw_cosine(impl: str) -> Callable[[Iterable[nn.Parameter], float, int], Driver]:
    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, **{impl: True})
        return Driver(opt, scheduler=warmup_cosine(opt, total))

    return build


def _adamw_plateau(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, foreach=True)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5,
                                                         patience=max(5, total // 15))
    return Driver(opt, scheduler=plateau, scheduler_takes_loss=True)


def _sgd_momentum(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=True)
    return Driver(opt, scheduler=warmup_cosine(opt, total))


def _schedulefree(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    import schedulefree

    opt = schedulefree.AdamWScheduleFree(params, lr=lr, weight_decay=0.01,
                                         warmup_steps=max(1, int(WARMUP_FRACTION * total)))
    return Driver(opt)


def _prodigy(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    from prodigyopt import Prodigy

    opt = Prodigy(params, lr=lr, weight_decay=0.01)
    group = opt.param_groups[0]
    return Driver(opt, scheduler=warmup_cosine(opt, total), lr_fn=lambda: group["d"] * group["lr"])


def _grad_norm(optimizer: torch.optim.Optimizer) -> float:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads).item() if grads else 0.0


def _import(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def _signature_lr(cls: Any, fallback: float) -> float:
    """The ``lr`` default of ``cls``'s constructor, or ``fallback`` if it has none."""
    default = inspect.signature(cls).parameters.get("lr")
    if default is not None and isinstance(default.default, (int, float)) and default.default > 0:
        return float(default.default)
    return fallback


def _online(name: str, fallback_lr: float, controller: str = "pretrained") -> Method:
    """An Online optimizer at its defaults, told the horizon (as AdaptiveCallback does from
    ``max_steps``) and fed the training loss."""
    cls = _import("adaptiverl.optim.online", name)

    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        opt = cls(params, lr=lr, total_steps=total, controller=controller)
        return Driver(opt, on_loss=lambda loss: opt.observe(loss=loss), lr_fn=opt.effective_lr)

    suffix = "" if controller == "pretrained" else f"_{controller}"
    return Method(name="online_" + name.removeprefix("Online").lower() + suffix,
                  default_lr=_signature_lr(cls, fallback_lr), build=build, family="ours")


def _adamw_constant(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    return Driver(torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True))


def _adaptive_optimizer() -> Method:
    cls = _import("adaptiverl.optim.adaptive_optimizer", "AdaptiveOptimizer")

    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        opt = cls(torch.optim.AdamW(params, lr=lr, weight_decay=0.01), lr_rule="trend+variance",
                  betas_rule=("relative", "variance"), wd_rule="trend")

        def step(loss: torch.Tensor) -> None:
            opt.step_loss(loss)
            opt.step()

        return Driver(opt, step_fn=step)

    return Method("adaptive_optimizer", 1e-3, build, family="ours")


def _adaptive_scheduler() -> Method:
    cls = _import("adaptiverl.optim.adaptive_scheduler", "AdaptiveScheduler")

    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        sched = cls(opt)
        return Driver(opt, on_loss=sched.step_loss)

    return Method("adaptive_scheduler", 1e-3, build, family="ours")


def _meta(method_name: str, class_name: str) -> Method:
    module = "adaptiverl.optim.meta_optimizer"
    wrapper_cls = _import(module, "OptimizerWrapper")
    meta_cls = _import(module, class_name)

    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        base = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        wrapped = wrapper_cls(base, meta_cls())

        def step(loss: torch.Tensor) -> None:
            wrapped.update_hyperparameters({"loss": float(loss), "lr": base.param_groups[0]["lr"],
                                            "grad_norm": _grad_norm(base)})
            wrapped.step()

        return Driver(wrapped, step_fn=step)

    return Method(method_name, 1e-3, build, family="ours")


def _enhanced_sgd() -> Method:
    cls = _import("adaptiverl.optim.enhanced_sgd", "EnhancedSGD")

    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        opt = cls(params, lr=lr, momentum=0.9)
        return Driver(opt, step_fn=lambda loss: opt.step(closure=lambda: loss))

    return Method("enhanced_sgd", _signature_lr(cls, 1e-2), build, family="ours")


COMPETITORS: tuple[Method, ...] = (
    Method("adamw_fused_cosine", 1e-3, _adamw_cosine("fused"), family="torch"),
    Method("adamw_foreach_cosine", 1e-3, _adamw_cosine("foreach"), family="torch"),
    Method("adamw_constant", 1e-3, _adamw_constant, family="torch"),
    Method("adamw_plateau", 1e-3, _adamw_plateau, family="torch"),
    Method("sgd_momentum", 1e-2, _sgd_momentum, family="torch"),
    Method("schedulefree_adamw", 2.5e-3, _schedulefree, family="schedulefree"),
    Method("prodigy", 1.0, _prodigy, family="prodigyopt"),
)

# name -> factory; a factory raises ImportError/AttributeError while its module has not landed
OURS: dict[str, Callable[[], Method]] = {
    "online_adamw": lambda: _online("OnlineAdamW", 1e-3),
    "online_adamw_fresh": lambda: _online("OnlineAdamW", 1e-3, controller="fresh"),
    "online_sgd": lambda: _online("OnlineSGD", 1e-2),
    "online_rmsprop": lambda: _online("OnlineRMSProp", 1e-3),
    "adaptive_optimizer": _adaptive_optimizer,
    "adaptive_scheduler": _adaptive_scheduler,
    "meta_plateau": lambda: _meta("meta_plateau", "PlateauMetaOptimizer"),
    "meta_advanced_plateau": lambda: _meta("meta_advanced_plateau", "AdvancedPlateauMetaOptimizer"),
    "meta_rl": lambda: _meta("meta_rl", "RLMetaOptimizer"),
    "enhanced_sgd": _enhanced_sgd,
}

BASELINE = "adamw_fused_cosine"


def get_methods(only: Iterable[str] | None = None) -> tuple[list[Method], dict[str, str]]:
    """``(available methods, {name: why unavailable})``, competitors first.

    ``only`` restricts to the named methods; an unknown name raises ``ValueError`` listing the
    valid ones.
    """
    known = [m.name for m in COMPETITORS] + list(OURS)
    wanted = list(known) if only is None else list(only)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {known}")
    methods = [m for m in COMPETITORS if m.name in wanted]
    unavailable: dict[str, str] = {}
    for name, factory in OURS.items():
        if name not in wanted:
            continue
        try:
            methods.append(factory())
        except (ImportError, AttributeError) as err:
            unavailable[name] = f"not available: {type(err).__name__}: {err}"
    return methods, unavailable
