"""The Online optimizers' arguments: torch's checks, the knob bounds, and the adaptation arguments
(:class:`Adaptation`), written once for the three classes of :mod:`adaptiverl.optim.online`."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor

from adaptiverl.controllers.online import CONTROLLER_KINDS, GROUP_TUNABLES
from adaptiverl.controllers.policy_rules import PRETRAINED_START_RMS

FINITE_CHECKS = ("auto", "full", "sample", "off")


@dataclass(frozen=True)
class Adaptation:
    """The adaptation arguments every Online optimizer takes (keyword-only, after torch's own).

    ``adapt``: ``False`` computes exactly torch's update. ``adapt_knobs``: ``False`` keeps the
    group knobs at their values. ``controller``: ``"pretrained"`` (meta-trained network) or
    ``"fresh"`` (the fixed rule plus online learning). ``total_steps``: the horizon (``None``:
    unknown, no schedule). ``scale_bounds`` / ``max_step_factor`` / ``hidden_size`` / ``meta_lr`` /
    ``seed``: the network's (:class:`adaptiverl.controllers.gru.GRUController`).
    ``snr_threshold``: the gate's ``tau``. ``feature_sample_size``: elements sampled per tensor.
    ``hypergrad_weight``, ``reward_weight``, ``explore_std``, ``knob_lr``, ``drift_gain``: the
    tunables a param group may override (they live in ``defaults``). ``knob_scale_bounds``: the
    knob multipliers' bounds. ``finite_check``: ``"auto"``, ``"full"``, ``"sample"`` or
    ``"off"``. ``signal_beta`` / ``signal_window``: the scalar signals' EMA and window.
    ``pretrained_start``: a tensor that looks pretrained starts at an lr of at most this times its
    weight rms (:func:`adaptiverl.controllers.policy_rules.pretrained_start_scales`; ``0``: off).
    """

    adapt: bool = True
    adapt_knobs: bool = True
    controller: str = "pretrained"
    total_steps: int | None = None
    scale_bounds: tuple[float, float] = (1e-3, 1e3)
    max_step_factor: float = 1.1
    hidden_size: int = 16
    meta_lr: float = 1e-3
    snr_threshold: float = 2.5
    feature_sample_size: int = 1024
    hypergrad_weight: float = 1.0
    reward_weight: float = 1.0
    explore_std: float = 0.05
    knob_lr: float = 1e-3
    knob_scale_bounds: tuple[float, float] = (0.5, 2.0)
    drift_gain: float = 1.0
    finite_check: str = "auto"
    signal_beta: float = 0.9
    signal_window: int = 20
    seed: int = 0
    pretrained_start: float = PRETRAINED_START_RMS

    @classmethod
    def signature(cls, init: Any) -> inspect.Signature:
        """``init``'s signature with ``**adaptation`` spelled out as these keyword-only fields."""
        own = inspect.signature(init)
        kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
                 for f in fields(cls)]
        return own.replace(parameters=kept + extra)

    @classmethod
    def parse(cls, owner: str, kwargs: dict[str, Any]) -> Adaptation:
        """Checked arguments; an unknown or invalid one raises naming ``owner`` and the argument."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"{owner}.__init__() got an unexpected keyword argument {unknown[0]!r}")
        args = cls(**kwargs)
        if args.feature_sample_size is None or int(args.feature_sample_size) < 1:
            raise ValueError(f"{owner}: feature_sample_size must be an int >= 1, got {args.feature_sample_size}")
        if args.finite_check not in FINITE_CHECKS:
            raise ValueError(f"{owner}: finite_check must be one of {FINITE_CHECKS}, got {args.finite_check!r}")
        if args.controller not in CONTROLLER_KINDS:
            raise ValueError(f"{owner}: controller must be one of {CONTROLLER_KINDS}, got {args.controller!r}")
        for key in (*GROUP_TUNABLES, "snr_threshold", "pretrained_start"):
            value = getattr(args, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{owner}: {key} must be a finite number >= 0, got {value}")
        kl, kh = (float(v) for v in args.knob_scale_bounds)
        if not 0.0 < kl <= 1.0 <= kh:
            raise ValueError(f"{owner}: knob_scale_bounds must satisfy 0 < low <= 1 <= high, "
                             f"got {args.knob_scale_bounds}")
        return args


def check_torch_args(name: str, lr: Any, eps: float | None, weight_decay: float, *, foreach: bool | None,
                      fused: bool | None, capturable: bool, differentiable: bool) -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(f"{name}: lr as a Tensor must have one element")
    if not float(lr) >= 0.0:
        raise ValueError(f"{name}: invalid learning rate lr={lr}")
    if eps is not None and not eps >= 0.0:
        raise ValueError(f"{name}: invalid eps={eps}")
    if not weight_decay >= 0.0:
        raise ValueError(f"{name}: invalid weight_decay={weight_decay}")
    if fused and foreach:
        raise RuntimeError(f"{name}: `foreach` and `fused` cannot both be True")
    if capturable:
        raise ValueError(f"{name}: capturable=True (CUDA graphs) is not supported; the controller "
                         "needs one host sync per step")
    if differentiable:
        raise ValueError(f"{name}: differentiable=True is not supported")


def knob_bounds(**bounds: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """``{knob: (low, high)}`` from the ``<knob>_bounds`` arguments: betas in [0, 1], weight decay >= 0."""
    out = {}
    for knob, value in bounds.items():
        a, b = (float(v) for v in value)
        hi = math.inf if knob == "weight_decay" else 1.0
        if not 0.0 <= a <= b <= hi:
            raise ValueError(f"{knob}_bounds must satisfy 0.0 <= low <= high <= {hi}, got {value}")
        out[knob] = (a, b)
    return out
