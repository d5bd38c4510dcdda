"""The one SGD kernel: per-tensor learning rates, momentum, dampening, weight decay, Nesterov, maximize.

For each tensor ``i`` with learning rate ``lrs[i]`` (exactly ``torch.optim.SGD``'s update, whose
``lr`` is one float per group)::

    d   = -g if maximize else g
    d   = d + weight_decay * p
    b   = d                                   on the first step (buffer None)
    b   = momentum * b + (1 - dampening) * d  afterwards
    d   = d + momentum * b if nesterov else b (only with momentum != 0)
    p   = p - lrs[i] * d

Two implementations with the same signature, as in ``torch.optim``: :func:`sgd_reference`, a
readable loop over tensors, and :func:`sgd_foreach`, the same arithmetic with ``torch._foreach_*``
kernels per (device, dtype) bucket (one call per operation, whatever the number of tensors). In
float32 they agree bit for bit when the learning rates of a bucket are equal (then the update is
one ``_foreach_add_(alpha=-lr)``, the reference's ``add_(alpha=-lr)``), and the reference equals
``torch.optim.SGD(foreach=False)`` bit for bit. With distinct rates the fast path scales by a
scalar list first (``_foreach_mul`` then ``_foreach_add_``), and in float16 / bfloat16 on CPU
``_foreach_mul_`` rounds the momentum product differently from ``Tensor.mul_`` (torch's own two
SGD paths differ the same way); the twins then agree to a few ulps of the dtype (tested).
:func:`sgd` picks the fast path by default.

Half precision: both paths compute in the parameter dtype with ordinary elementwise kernels, so
they are finite and deterministic in float16 and bfloat16 on CPU. ``torch._fused_sgd_`` is not
used: on CPU it returned non-finite output from finite float16 input.

``momentum_buffers`` is one entry per tensor (``None`` before the first step); new buffers are
written into the list, and the caller stores them back (``state["momentum_buffer"]``).
"""

from __future__ import annotations

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


def sgd_reference(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None], *,
                  lrs: list[float], momentum: float, dampening: float, weight_decay: float,
                  nesterov: bool, maximize: bool) -> None:
    """The readable single-tensor twin of :func:`sgd_foreach` (module docstring)."""
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
                buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
            d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
        p.add_(d_p, alpha=-lr)


def buckets(params: list[Tensor]) -> list[list[int]]:
    """Indices of ``params`` grouped by (device, dtype), in first-seen order."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    return list(buckets.values())


def sgd_foreach(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None], *,
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
            if any(buf is None for buf in bufs):
                for k, (i, d_p) in enumerate(zip(index, d_ps, strict=True)):
                    buf = bufs[k]
                    if buf is None:
                        bufs[k] = momentum_buffers[i] = torch.clone(d_p).detach()
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
            else:
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, d_ps, alpha=1 - dampening)
            d_ps = torch._foreach_add(d_ps, bufs, alpha=momentum) if nesterov else bufs  # type: ignore[assignment]
        bucket_lrs = [lrs[i] for i in index]
        if all(lr == bucket_lrs[0] for lr in bucket_lrs):
            torch._foreach_add_(ps, d_ps, alpha=-bucket_lrs[0])
        else:
            torch._foreach_add_(ps, torch._foreach_mul(d_ps, [-lr for lr in bucket_lrs]))


def sgd(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None], *,
        lrs: list[float], momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False, maximize: bool = False, foreach: bool = True) -> None:
    """SGD update in place (module docstring); ``foreach=False`` runs the reference loop."""
    kernel = sgd_foreach if foreach else sgd_reference
    kernel(params, grads, momentum_buffers, lrs=lrs, momentum=momentum, dampening=dampening,
           weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
