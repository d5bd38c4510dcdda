"""Vectorised gradient transformations used by :class:`adaptiverl.optim.EnhancedSGD`.

Every function takes a list of gradient tensors (one device and dtype, except the two global
statistics, which combine lists from several devices/dtypes in float32) and does its per-tensor
work with ``torch._foreach_*`` kernels or one concatenation, never a Python loop that computes per
tensor or calls ``.item()``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from adaptiverl.optim._kernels import buckets


def total_norm(grads: list[Tensor]) -> Tensor:
    """Global L2 norm ``sqrt(sum_i ||g_i||^2)`` as a 0-d float32 tensor on ``grads[0]``'s device."""
    device = grads[0].device
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.float().to(device) for n in norms]))


def non_finite_flag(grads: list[Tensor]) -> Tensor:
    """A ``(1,)`` float32 tensor on ``grads[0]``'s device, > 0 iff an element of any gradient is NaN
    or +-inf: torch's AMP check ``_amp_foreach_non_finite_check_and_unscale_`` with a scale of 1
    (the gradients are left as they are), one fused call per device and dtype, no host sync."""
    found = torch.zeros(1, device=grads[0].device)
    for bucket in by_device_and_dtype(grads):
        device = bucket[0].device
        flag = found if device == found.device else torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(bucket, flag, torch.ones(1, device=device))
        if flag is not found:
            found += flag.to(found.device)
    return found


#: The values of an applier's ``finite_check``: ``"full"`` skips a step whose gradients hold a
#: non-finite element, ``"off"`` takes every step.
FINITE_CHECKS = ("full", "off")


def check_finite_mode(owner: str, finite_check: str) -> str:
    if finite_check not in FINITE_CHECKS:
        raise ValueError(f"{owner}: finite_check must be one of {FINITE_CHECKS}, got {finite_check!r}")
    return finite_check


def skip_non_finite(applier: Any, grads: list[Tensor]) -> bool:
    """Whether ``applier`` (with ``finite_check`` and ``skipped_steps``) must skip this step: with
    ``finite_check="full"``, when :func:`non_finite_flag` finds a non-finite element (one host
    sync); the skip is counted and warned about (:func:`record_skip`)."""
    if applier.finite_check == "off" or not grads or not non_finite_flag(grads).item():
        return False
    record_skip(applier, "non-finite gradient")
    return True


def record_skip(applier: Any, why: str) -> None:
    """Count a skipped step in ``applier.skipped_steps`` and warn about it."""
    applier.skipped_steps += 1
    warnings.warn(f"{type(applier).__name__}: {why}, step skipped (parameters and optimizer state "
                  f"unchanged; {applier.skipped_steps} skipped so far)", RuntimeWarning, stacklevel=4)


def magnitude_sample(grads: list[Tensor], sample_size: int) -> Tensor:
    """``|g|`` of a strided sample of all gradients, concatenated (float32, at most ~``sample_size`` + #tensors).

    One stride ``s = ceil(N / sample_size)`` (``N`` = total element count) is used for every
    tensor, so each tensor contributes in proportion to its size.
    """
    total = sum(g.numel() for g in grads)
    stride = max(1, -(-total // sample_size))
    device = grads[0].device
    return torch.cat([g.reshape(-1)[::stride].float().to(device) for g in grads]).abs_()


def gradient_entropy(grads: list[Tensor], bins: int = 64, sample_size: int = 16384) -> Tensor:
    """Normalised Shannon entropy of the histogram of gradient magnitudes, in ``[0, 1]``.

    ``x = |g| / max|g|`` over a strided sample (:func:`magnitude_sample`) is binned into ``bins``
    equal bins on ``[0, 1]`` (``torch.bincount`` of ``min(floor(x * bins), bins - 1)``, the bins of
    ``torch.histc`` at a fifth of its CPU cost); with ``p_b`` the bin frequencies,
    ``H = -sum_b p_b log p_b / log(bins)``. ``H`` is near 0 when a few huge coordinates squash all
    others into the lowest bin and near 1 when magnitudes are spread evenly over their range.
    An all-zero gradient has entropy 0. Returns a 0-d float32 tensor (no host sync).
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    sample = magnitude_sample(grads, sample_size)
    scaled = sample / sample.max().clamp_min(torch.finfo(torch.float32).tiny)
    index = (scaled * bins).long().clamp_(0, bins - 1)
    hist = torch.bincount(index, minlength=bins).float()
    p = hist / hist.sum().clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum() / math.log(bins)
    return torch.where(sample.max() > 0, entropy, torch.zeros_like(entropy))


def center_(grads: list[Tensor]) -> None:
    """In place, ``g <- g - mean(g)`` for every tensor with ``dim >= 2``.

    Per-tensor version of Gradient Centralization (Yong et al. 2020, arXiv:2004.01461), which
    centres each output row; vectors (biases, norms' scales) are left alone, as in that paper,
    because centring a bias gradient removes its only useful component. The means come from one
    ``torch.segment_reduce`` over the concatenated gradients.
    """
    targets = [g for g in grads if g.dim() >= 2]
    if not targets:
        return
    flat = torch.cat([g.reshape(-1) for g in targets])
    lengths = torch.tensor([g.numel() for g in targets], device=flat.device)
    means = torch.segment_reduce(flat, "mean", lengths=lengths)
    torch._foreach_sub_(targets, list(means.unbind(0)))


def add_noise_(grads: list[Tensor], std: float, generator: torch.Generator) -> None:
    """In place, ``g <- g + std * eps`` with ``eps ~ N(0, I)`` drawn in one call from ``generator``."""
    total = sum(g.numel() for g in grads)
    noise = torch.randn(total, generator=generator, device=grads[0].device, dtype=grads[0].dtype)
    pieces = noise.split([g.numel() for g in grads])
    torch._foreach_add_(grads, [n.view_as(g) for n, g in zip(pieces, grads, strict=True)], alpha=std)


def retain_and_blend_(buffers: list[Tensor], sums: list[Tensor], grads: list[Tensor], scores: list[float],
                      score: float, *, blend: float, decay: float) -> None:
    """Gradient retention: keep the ``K`` highest-scoring past gradients, blend their mean in.

    ``buffers[i]`` is a ``(K, *shape)`` stack of retained gradients of tensor ``i`` and ``sums[i]``
    their running sum; ``scores`` (host floats, one per filled slot, shared by all tensors) decay
    by ``decay`` per call so stale gradients are replaced. This step's gradient (score ``score``)
    takes a free slot, else the lowest-scoring one if it beats it; then, in place,
    ``g <- (1 - blend) * g + blend * mean(buffer)``. Per-tensor work is ``torch._foreach_*``.
    """
    capacity = buffers[0].shape[0]
    scores[:] = [s * decay for s in scores]
    slot = None
    if len(scores) < capacity:
        slot = len(scores)
        scores.append(score)
    elif math.isfinite(score) and score > min(scores):
        slot = scores.index(min(scores))
        scores[slot] = score
    if slot is not None:
        slots = [b[slot] for b in buffers]
        torch._foreach_sub_(sums, slots)
        torch._foreach_add_(sums, grads)
        torch._foreach_copy_(slots, grads)
    torch._foreach_lerp_(grads, torch._foreach_mul(sums, 1.0 / len(scores)), blend)


def by_device_and_dtype(tensors: list[Tensor]) -> list[list[Tensor]]:
    """``tensors`` split into lists of one device and dtype (what the ``_foreach`` kernels want)."""
    return [[tensors[i] for i in index] for index in buckets(tensors)]
