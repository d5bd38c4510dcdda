"""The update kernels of the native optimizers: SGD, RMSprop and AdamW with per-tensor learning rates.

As in ``torch.optim`` (whose ``adamw()`` dispatches to ``_single_tensor_adamw`` /
``_multi_tensor_adamw`` / ``_fused_adamw``), every algorithm has module-level implementations with
one signature, and one dispatcher, :func:`apply_update`, picks the implementation
(``"single_tensor"``: a readable loop, the reference; ``"multi_tensor"``: ``torch._foreach_*``;
``"fused"``: torch's fused AdamW kernel). All take one learning rate per tensor (``lrs``) and
the group's knob values; the Online optimizers pass ``lr_i = group["lr"] * s_i``.

**SGD** (also :class:`adaptiverl.optim.EnhancedSGD`'s update, through :func:`sgd`). For each tensor ``i`` with learning rate ``lrs[i]`` (exactly ``torch.optim.SGD``'s update, whose
``lr`` is one float per group)::

    d   = -g if maximize else g
    d   = d + weight_decay * p
    b   = d                                   on the first step (buffer None)
    b   = momentum * b + (1 - dampening) * d  afterwards
    d   = d + momentum * b if nesterov else b (only with momentum != 0)
    p   = p - lrs[i] * d

Two implementations with the same signature: :func:`sgd_single_tensor`, a readable loop over
tensors, and :func:`sgd_multi_tensor`, the same arithmetic with ``torch._foreach_*`` kernels per
(device, dtype) bucket (one call per operation, whatever the number of tensors). The final update
is ``add_(alpha=-lr)`` per tensor in both (one ``_foreach_add_`` when a bucket's rates are equal):
in place, never a model-sized scaled copy.

**One pass for the momentum on the CPU.** With ``dampening == 0`` (the default) both twins write
the buffer in one pass, ``torch.add(d, b, alpha=momentum, out=b)``, where torch's SGD reads and
writes it twice (``b.mul_(momentum).add_(d)``): the memory-bound CPU step makes two passes over
model-sized tensors instead of three (on GPT-2-small shapes the update alone measured 0.71x the time
of ``torch.optim.SGD(foreach=True)``'s). The CPU's vectorised kernel
fuses that multiply-add (one rounding instead of two), so on the CPU the twins agree with each
other bit for bit in every dtype and with ``torch.optim.SGD`` to the last bit or so (a relative
~1e-7 per step in float32, tested); on other devices (where ``torch._foreach_*`` are true multi-tensor
kernels) both twins keep torch's two-step form, and the reference equals ``torch.optim.SGD`` bit
for bit. :func:`sgd` picks the fast path by default.

Half precision: both paths compute in the parameter dtype with ordinary elementwise kernels, so
they are finite and deterministic in float16 and bfloat16 on CPU. ``torch._fused_sgd_`` is not
used: on CPU it returned non-finite output from finite float16 input.

``momentum_buffers`` is one entry per tensor (``None`` before the first step); new buffers are
written into the list, and the caller stores them back (``state["momentum_buffer"]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _check(params: Sequence[Tensor], grads: Sequence[Tensor], momentum_buffers: Sequence[Tensor | None],
           lrs: Sequence[float], momentum: float, dampening: float, weight_decay: float,
           nesterov: bool) -> None:
    if not len(params) == len(grads) == len(momentum_buffers) == len(lrs):
        raise ValueError(f"sgd: params, grads, momentum_buffers and lrs must have one entry per tensor, got "
                         f"{len(params)}, {len(grads)}, {len(momentum_buffers)}, {len(lrs)}")
    if momentum < 0.0:
        raise ValueError(f"sgd: momentum must be >= 0, got {momentum}")
    if weight_decay < 0.0:
        raise ValueError(f"sgd: weight_decay must be >= 0, got {weight_decay}")
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError("sgd: nesterov=True needs momentum > 0 and dampening = 0")


def sgd_single_tensor(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None], *,
                  lrs: list[float], momentum: float, dampening: float, weight_decay: float,
                  nesterov: bool, maximize: bool) -> None:
    """The readable single-tensor twin of :func:`sgd_multi_tensor` (module docstring)."""
    _check(params, grads, momentum_buffers, lrs, momentum, dampening, weight_decay, nesterov)
    for i, (p, g, lr) in enumerate(zip(params, grads, lrs, strict=True)):
        d_p = -g if maximize else g
        if weight_decay != 0:
            d_p = d_p.add(p, alpha=weight_decay)
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = momentum_buffers[i] = torch.clone(d_p).detach()
            else:
                _momentum_(buf, d_p, momentum, dampening)
            d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
        p.add_(d_p, alpha=-lr)


def _one_pass(buf: Tensor, dampening: float) -> bool:
    """Whether the momentum update of ``buf`` runs as one fused pass (module docstring)."""
    return dampening == 0 and buf.device.type == "cpu"


def _momentum_(buf: Tensor, d_p: Tensor, momentum: float, dampening: float) -> None:
    """``buf = momentum * buf + (1 - dampening) * d_p`` in place: one pass on the CPU."""
    if _one_pass(buf, dampening):
        torch.add(d_p, buf, alpha=momentum, out=buf)
    else:
        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)


def buckets(params: list[Tensor]) -> list[list[int]]:
    """Indices of ``params`` grouped by (device, dtype), in first-seen order."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    return list(buckets.values())


def sgd_multi_tensor(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None], *,
                lrs: list[float], momentum: float, dampening: float, weight_decay: float,
                nesterov: bool, maximize: bool) -> None:
    """The multi-tensor path: ``torch._foreach_*`` per (device, dtype) bucket (module docstring)."""
    _check(params, grads, momentum_buffers, lrs, momentum, dampening, weight_decay, nesterov)
    for index in buckets(params):
        ps = [params[i] for i in index]
        d_ps = [grads[i] for i in index]
        if maximize:
            d_ps = torch._foreach_neg(d_ps)
        if weight_decay != 0:
            d_ps = torch._foreach_add(d_ps, ps, alpha=weight_decay)
        if momentum != 0:
            bufs = [momentum_buffers[i] for i in index]
            # per tensor on the first step, and on the CPU (whose foreach ops loop over tensors anyway)
            if any(buf is None for buf in bufs) or _one_pass(bufs[0], dampening):
                for k, (i, d_p) in enumerate(zip(index, d_ps, strict=True)):
                    buf = bufs[k]
                    if buf is None:
                        bufs[k] = momentum_buffers[i] = torch.clone(d_p).detach()
                    else:
                        _momentum_(buf, d_p, momentum, dampening)
            else:
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, d_ps, alpha=1 - dampening)
            d_ps = torch._foreach_add(d_ps, bufs, alpha=momentum) if nesterov else bufs  # type: ignore[assignment]
        _add_scaled_(ps, d_ps, [-lrs[i] for i in index])


def sgd(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None], *,
        lrs: list[float], momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False, maximize: bool = False, foreach: bool = True) -> None:
    """SGD update in place (module docstring); ``foreach=False`` runs the reference loop."""
    kernel = sgd_multi_tensor if foreach else sgd_single_tensor
    kernel(params, grads, momentum_buffers, lrs=lrs, momentum=momentum, dampening=dampening,
           weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)


def _add_scaled_(params: list[Tensor], updates: list[Tensor], scales: list[float]) -> None:
    """In place, ``p_i += scales[i] * u_i``: one ``_foreach_add_`` when the scales are equal, else
    ``add_`` per tensor (never a scaled copy of every update)."""
    if all(s == scales[0] for s in scales):
        torch._foreach_add_(params, updates, alpha=scales[0])
        return
    for p, u, s in zip(params, updates, scales, strict=True):
        p.add_(u, alpha=s)


# ---- half precision on the CPU ------------------------------------------------------------------

_HALF = (torch.float16, torch.bfloat16)


def compute_dtype(p: Tensor) -> torch.dtype:
    """float32 for half-precision parameters on the CPU (their states and update math), else
    the parameter's own dtype. In fp16, AdamW's ``eps = 1e-8`` and small ``g^2`` underflow to 0
    and ``0 / 0`` gives NaN; the update is computed in float32 and rounded once into ``p``."""
    return torch.float32 if p.device.type == "cpu" and p.dtype in _HALF else p.dtype


def zeros_state(p: Tensor) -> Tensor:
    """A zero optimizer buffer for ``p`` in its :func:`compute_dtype`."""
    return torch.zeros_like(p, dtype=compute_dtype(p), memory_format=torch.preserve_format)


def _work(p: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """The tensor the single-tensor kernels update (``p`` itself, or a float32 copy) and ``g`` in its dtype."""
    dtype = compute_dtype(p)
    work = p if p.dtype == dtype else p.to(dtype)
    return work, g.to(dtype)


# ---- RMSprop -------------------------------------------------------------------------------------
# torch.optim.RMSprop's update with lr_i per tensor: v = alpha v + (1 - alpha) g^2 (centered: minus
# the squared mean gradient), then p -= lr_i g / (sqrt(v) + eps), or through a momentum buffer.

def rmsprop_single_tensor(params: list[Tensor], grads: list[Tensor], states: list[dict], *, lrs: list[float],
                          alpha: float, momentum: float, weight_decay: float, eps: float, centered: bool,
                          maximize: bool) -> None:
    for param, grad, state, lr in zip(params, grads, states, lrs, strict=True):
        p, g = _work(param, grad)
        state["step"] += 1
        g = -g if maximize else g
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if centered:
            grad_avg = state["grad_avg"]
            grad_avg.lerp_(g, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(eps)
        if momentum > 0:
            buf = state["momentum_buffer"]
            buf.mul_(momentum).addcdiv_(g, avg)
            p.add_(buf, alpha=-lr)
        else:
            p.addcdiv_(g, avg, value=-lr)
        if p is not param:
            param.copy_(p)


def rmsprop_multi_tensor(params: list[Tensor], grads: list[Tensor], states: list[dict], *, lrs: list[float],
                         alpha: float, momentum: float, weight_decay: float, eps: float, centered: bool,
                         maximize: bool) -> None:
    square_avgs = [s["square_avg"] for s in states]
    torch._foreach_add_([s["step"] for s in states], 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
    if centered:
        grad_avgs = [s["grad_avg"] for s in states]
        torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
        avg = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_sqrt_(avg)
    else:
        avg = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(avg, eps)
    if momentum > 0:
        bufs = [s["momentum_buffer"] for s in states]
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_addcdiv_(bufs, grads, avg)
        _add_scaled_(params, bufs, [-lr for lr in lrs])
    else:
        torch._foreach_addcdiv_(params, grads, avg, [-lr for lr in lrs])


# ---- AdamW ---------------------------------------------------------------------------------------
# torch.optim.AdamW's update with lr_i per tensor: p *= 1 - lr_i wd; m = lerp(m, g, 1 - b1);
# v = b2 v + (1 - b2) g^2 (amsgrad: v_max = max(v_max, v)); p -= lr_i / (1 - b1^t) m / (sqrt(v) /
# sqrt(1 - b2^t) + eps).

def adamw_single_tensor(params: list[Tensor], grads: list[Tensor], states: list[dict], *, lrs: list[float],
                        beta1: float, beta2: float, weight_decay: float, eps: float, amsgrad: bool,
                        maximize: bool) -> None:
    for param, grad, state, lr in zip(params, grads, states, lrs, strict=True):
        p, g = _work(param, grad)
        g = -g if maximize else g
        state["step"] += 1
        step = float(state["step"])
        p.mul_(1 - lr * weight_decay)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        if amsgrad:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            denom = (state["max_exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
        if p is not param:
            param.copy_(p)


def adamw_multi_tensor(params: list[Tensor], grads: list[Tensor], states: list[dict], *, lrs: list[float],
                       beta1: float, beta2: float, weight_decay: float, eps: float, amsgrad: bool,
                       maximize: bool) -> None:
    """``torch._foreach_*`` per (device, dtype) bucket with the lrs as scalar lists; the bias
    corrections come from the step tensors in float64 on their device (nothing is read back)."""
    for index in buckets(params):
        _adamw_bucket([params[i] for i in index], [grads[i] for i in index], [states[i] for i in index],
                      [lrs[i] for i in index], beta1, beta2, weight_decay, eps, amsgrad, maximize)


def _adamw_bucket(params: list[Tensor], grads: list[Tensor], states: list[dict], lrs: list[float], beta1: float,
                  beta2: float, weight_decay: float, eps: float, amsgrad: bool, maximize: bool) -> None:
    exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        torch._foreach_mul_(params, [1 - lr * weight_decay for lr in lrs])
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    t = torch.stack(steps).double().to(params[0].device)
    bias_correction2_sqrt = (1 - beta2**t).sqrt().to(params[0].dtype).unbind()
    step_size = (-torch.tensor(lrs, dtype=torch.float64, device=t.device) / (1 - beta1**t)).to(params[0].dtype)
    if amsgrad:
        max_sqs = [s["max_exp_avg_sq"] for s in states]
        torch._foreach_maximum_(max_sqs, exp_avg_sqs)
        denom = torch._foreach_sqrt(max_sqs)
    else:
        denom = torch._foreach_sqrt(exp_avg_sqs)
    # p += step_size m / (sqrt(v) / bc2 + eps), as m / ((sqrt(v) / bc2 + eps) / step_size)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(denom, step_size.unbind())
    torch._foreach_addcdiv_(params, exp_avgs, denom)


def adamw_fused(params: list[Tensor], grads: list[Tensor], states: list[dict], *, lrs: list[float],
                beta1: float, beta2: float, weight_decay: float, eps: float, amsgrad: bool,
                maximize: bool) -> None:
    """torch's fused AdamW kernel (``step`` tensors on the parameters' device), one call per run
    of tensors that share a learning rate: all of them in one call when the rates are equal."""
    torch._foreach_add_([s["step"] for s in states], 1)  # the fused kernel reads, never bumps, the step
    by_lr: dict[float, list[int]] = {}
    for i, lr in enumerate(lrs):
        by_lr.setdefault(lr, []).append(i)
    for lr, index in by_lr.items():
        sub = [states[i] for i in index]
        torch._fused_adamw_([params[i] for i in index], [grads[i] for i in index], [s["exp_avg"] for s in sub],
                            [s["exp_avg_sq"] for s in sub], [s["max_exp_avg_sq"] for s in sub] if amsgrad else [],
                            [s["step"] for s in sub], amsgrad=amsgrad, lr=lr, beta1=beta1, beta2=beta2,
                            weight_decay=weight_decay, eps=eps, maximize=maximize, grad_scale=None, found_inf=None)


# ---- the dispatcher ------------------------------------------------------------------------------

def _sgd_states(params: list[Tensor], grads: list[Tensor], states: list[dict], *, lrs: list[float],
                momentum: float, weight_decay: float, dampening: float, nesterov: bool, maximize: bool,
                foreach: bool) -> None:
    buffers = [s.get("momentum_buffer") for s in states] if momentum != 0 else [None] * len(params)
    sgd(params, grads, buffers, lrs=lrs, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
        nesterov=nesterov, maximize=maximize, foreach=foreach)
    if momentum != 0:
        for state, buf in zip(states, buffers, strict=True):
            state["momentum_buffer"] = buf


KERNELS = {
    ("sgd", "single_tensor"): lambda *a, **k: _sgd_states(*a, **k, foreach=False),
    ("sgd", "multi_tensor"): lambda *a, **k: _sgd_states(*a, **k, foreach=True),
    ("rmsprop", "single_tensor"): rmsprop_single_tensor,
    ("rmsprop", "multi_tensor"): rmsprop_multi_tensor,
    ("adamw", "single_tensor"): adamw_single_tensor,
    ("adamw", "multi_tensor"): adamw_multi_tensor,
    ("adamw", "fused"): adamw_fused,
}
#: The group options each algorithm's kernels read (besides ``lrs`` and the knob values).
OPTIONS = {"sgd": ("dampening", "nesterov", "maximize"), "rmsprop": ("eps", "centered", "maximize"),
           "adamw": ("eps", "amsgrad", "maximize")}


def apply_update(algorithm: str, impl: str, params: list[Tensor], grads: list[Tensor], states: list[dict], *,
                 lrs: list[float], knobs: dict[str, float], group: dict) -> None:
    """The one dispatcher: ``algorithm``'s ``impl`` kernel with per-tensor ``lrs``, the group's knob
    values (``momentum``, ``alpha``, ``beta1`` / ``beta2``, ``weight_decay``) and its options."""
    kernel = KERNELS.get((algorithm, impl))
    if kernel is None:
        raise ValueError(f"no {impl!r} kernel for {algorithm!r}; have {sorted(KERNELS)}")
    kernel(params, grads, states, lrs=lrs, **knobs, **{k: group[k] for k in OPTIONS[algorithm]})
