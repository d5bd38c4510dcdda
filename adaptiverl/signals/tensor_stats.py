"""Per-tensor statistics: a fixed sample of every tensor, row sums, cosines, t-statistics, shards.

The scalar signals (loss, reward) live in :mod:`adaptiverl.signals.stats`; this module holds the
per-tensor ones the Online controller (:mod:`adaptiverl.controllers.online`) reads, one row per
parameter tensor (``T`` rows):

* :class:`RowSampler`: a fixed sample of at most ``k`` elements per tensor (evenly spaced
  contiguous blocks, :func:`row_layout`), gathered into a ``(T, width)`` matrix with one
  ``_foreach_copy_``.
* :func:`row_sums`: per-row dot products of the sampled matrices in float64 (``SUM_NAMES``).
  Every statistic below is a ratio of them, so under FSDP the shards' sums add up to the full
  tensor's with one all-reduce (:func:`all_reduce_sums`) and every rank reads the same figures.
* :func:`cosine`: a cosine from row sums; :func:`tensor_features`: the hypergradient, memory
  and knob cosines, the update-to-parameter ratio and the gradient-scale drift of one step.
* :func:`ema_tstat`: EMAs of ``x`` and ``x^2`` and the t-statistic of their mean.
* :func:`any_rank`: a per-rank flag combined over the shards (``MAX``).
* :func:`squared_norm`: ``sum_i ||g_i||^2`` of a list of tensors in float32 (the finite check).

Everything runs on the device without a host sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

EPS = 1e-12
#: ``log10(rms u / rms theta)`` is divided by this before clamping to [-1, 1].
UPDATE_RATIO_DECADES = 6.0
#: The gradient-scale drift ``log(rms g_t / rms g_{t-1})`` is clamped to +-DRIFT_MAX (a change by
#: e^30 between two steps): an overflowing gradient must not make the drift EMA of the knob rule infinite.
DRIFT_MAX = 30.0

#: Per-row sums of the sampled matrices. ``g``: gradient, ``u``: last update, ``m``: memory,
#: ``p``: parameter, ``mp`` / ``pp``: previous memory / parameter, ``dm``: previous memory minus
#: previous gradient.
SUM_NAMES = ("g_u", "g_g", "u_u", "g_m", "m_m", "p_p", "g_mp", "mp_mp", "g_dm", "dm_dm", "g_pp", "pp_pp",
             "count")
SUM_INDEX = {name: i for i, name in enumerate(SUM_NAMES)}
#: the pairs of SUM_NAMES as indices into row_sums' stack (g, u, m, p, mp, dm, pp)
_PAIR_A = [0, 0, 1, 0, 2, 3, 0, 4, 0, 5, 0, 6]
_PAIR_B = [1, 0, 1, 2, 2, 3, 4, 4, 5, 5, 6, 6]


def local(t: Tensor) -> Tensor:
    """A DTensor's local shard (the storage this rank owns), any other tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def is_sharded(params: list[Tensor]) -> bool:
    """Whether ``params`` are FSDP2 DTensor shards in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and any(isinstance(p, DTensor) for p in params)


def all_reduce_sums(sums: Tensor, sharded: bool) -> Tensor:
    """Shards' row sums -> the full tensor's (replicas' sums leave every ratio alone)."""
    if sharded:
        dist.all_reduce(sums)
    return sums


def any_rank(found: Tensor, sharded: bool) -> Tensor:
    """``found`` (1,) combined with ``MAX`` over the ranks (each shard checks only its own part)."""
    if sharded:
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
    return found


def row_layout(numel: int, k: int) -> tuple[int, int, int]:
    """``(blocks, block_len, block_stride)`` of a tensor's fixed sample of at most ``k`` elements.

    A tensor of at most k elements is taken whole. A larger one gives ``B = k // 64`` evenly
    spaced contiguous blocks of ``k // B`` elements (stride ``numel // B``): the same coverage as
    an element-wise stride but touching ~B memory pages instead of k, which keeps the gather cheap
    on tensors of 10^7 elements.
    """
    if numel <= k:
        return 1, numel, numel
    blocks = max(1, k // 64)
    return blocks, k // blocks, numel // blocks


class RowSampler:
    """Gathers each tensor's fixed sample (:func:`row_layout`) into a zero-padded ``(rows, width)`` matrix.

    One ``as_strided`` view per tensor and one ``_foreach_copy_`` for all of them. ``persistent``
    tensors (parameters, optimizer buffers) keep their views between steps while their storages
    are unchanged. With every row present, the output is one of two preallocated buffers per
    ``kind``, never ``avoid`` (the matrix the caller kept from the previous step).
    """

    def __init__(self, layout: list[tuple[int, int, int]], width: int) -> None:
        self.layout = layout
        self.width = width
        self._cache: dict[Any, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the cached views behind (they would alias the original's storages)."""
        return {"layout": self.layout, "width": self.width, "_cache": {}}

    def sample(self, kind: str, tensors: list[Tensor], rows: list[int], device: torch.device, *,
               persistent: bool, avoid: Tensor | None = None) -> Tensor:
        layout, width, cache = self.layout, self.width, self._cache
        if len(rows) == len(layout):
            buffers = cache.setdefault(("out", kind), [])
            avoid_ptr = None if avoid is None else avoid.data_ptr()
            out, dests = next(((b, d) for b, d in buffers if b.data_ptr() != avoid_ptr), (None, None))
            if out is None:
                out = torch.zeros(len(rows), width, device=device)
                dests = [out[i, :b * length].view(b, length) for i, (b, length, _) in enumerate(layout)]
                buffers.append((out, dests))
        else:
            out = torch.zeros(len(rows), width, device=device)
            dests = [out[j, :layout[r][0] * layout[r][1]].view(layout[r][0], layout[r][1])
                     for j, r in enumerate(rows)]
        key = (tuple(rows), tuple(t.data_ptr() for t in tensors)) if persistent else None
        cached = cache.get(("src", kind))
        if key is not None and cached is not None and cached[0] == key:
            srcs = cached[1]
        else:
            srcs = []
            for t, r in zip(tensors, rows, strict=True):
                b, length, stride = layout[r]
                flat = t if t.is_contiguous() else t.reshape(-1)
                srcs.append(flat.as_strided((b, length), (stride, 1)))
            if key is not None:
                cache[("src", kind)] = (key, srcs)
        torch._foreach_copy_(dests, srcs)
        return out


def row_sums(G: Tensor, U: Tensor, M: Tensor, P: Tensor, M_prev: Tensor, D_prev: Tensor, P_prev: Tensor,
             counts: Tensor) -> Tensor:
    """``(T, len(SUM_NAMES))`` float64 row sums (float64: no overflow for any finite float32 input)."""
    X = torch.empty(G.shape[0], 7, G.shape[1], dtype=torch.float64, device=G.device)  # (T, 7, W)
    for k, matrix in enumerate((G, U, M, P, M_prev, D_prev, P_prev)):
        X[:, k].copy_(matrix)  # straight into float64: no float32 stack to convert
    gram = torch.bmm(X, X.transpose(1, 2))  # (T, 7, 7): every pair's dot product in one call
    return torch.cat([gram[:, _PAIR_A, _PAIR_B], counts.double().unsqueeze(1)], dim=1)


def cosine(sums: Tensor, dot: str, a: str, b: str) -> Tensor:
    """Cosine from row sums; 0 where either vector is zero."""
    norms = sums[:, SUM_INDEX[a]] * sums[:, SUM_INDEX[b]]
    value = sums[:, SUM_INDEX[dot]] / norms.clamp_min(1e-300).sqrt()
    return torch.where(norms > 0, value.clamp(-1.0, 1.0), torch.zeros_like(value)).float()


def ema_tstat(mean: Tensor, sq: Tensor, value: Tensor, count: Tensor, active: Tensor,
              beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Fold ``value`` into the EMAs of x and x^2 where ``active``; return them and the t-statistic.

    ``t = m / sqrt(var / n_eff)`` with bias-corrected moments and ``n_eff = min(n, (1 + b) / (1 - b))``
    (the EMA's effective sample size); 0 until three values were folded in.
    """
    mean = torch.where(active, beta * mean + (1 - beta) * value, mean)
    sq = torch.where(active, beta * sq + (1 - beta) * value * value, sq)
    correction = (1.0 - torch.pow(torch.full_like(count, beta), count)).clamp_min(EPS)
    m_hat, sq_hat = mean / correction, sq / correction
    var = (sq_hat - m_hat * m_hat).clamp_min(0.0)
    n_eff = count.clamp(min=1.0, max=(1 + beta) / (1 - beta))
    t = m_hat / torch.sqrt(var / n_eff + 1e-8)
    return mean, sq, torch.where(count >= 3, t, torch.zeros_like(t)).clamp(-30.0, 30.0)


def unit(x: Tensor, scale: float) -> Tensor:
    """``clamp(x / scale, -1, 1)`` with NaN read as 0."""
    return torch.nan_to_num(x / scale, nan=0.0).clamp(-1.0, 1.0)


@dataclass
class TensorFeatures:
    """One step's per-row statistics (and the finite sampled matrices they came from)."""

    G: Tensor
    P: Tensor
    M: Tensor
    hyper_cos: Tensor       # cos(g_t, u_{t-1}), 0 for rows without a previous step
    memory_cos: Tensor      # cos(g_t, memory)
    update_ratio: Tensor    # log10(rms u / rms theta) / 6, in [-1, 1]
    drift: Tensor           # log(rms g_t / rms g_{t-1}), in [-DRIFT_MAX, DRIFT_MAX]
    grad_sq: Tensor         # mean square of g_t
    counts: Tensor          # sampled elements per row (summed over shards)
    knob_cos: dict[str, Tensor]  # the knob rules' cosines: momentum, beta1, weight_decay


def tensor_features(G: Tensor, P: Tensor, M: Tensor, signs: Tensor, *, P_prev: Tensor, G_prev: Tensor,
                    M_prev: Tensor, grad_sq_prev: Tensor, has_prev: Tensor, counts: Tensor,
                    sharded: bool) -> TensorFeatures:
    """The statistics of one step from the sampled gradient ``G``, parameter ``P`` and memory ``M``.

    ``signs`` (T,) is -1 for rows that maximise (the quantity minimised is -f, whose gradient is
    -grad); the realised last update is ``U = P - P_prev``. Non-finite sampled values read as 0,
    so a huge-but-finite gradient never makes a NaN feature.
    """
    G = torch.nan_to_num(G, nan=0.0, posinf=0.0, neginf=0.0)
    M = torch.nan_to_num(M, nan=0.0, posinf=0.0, neginf=0.0)
    G = G * signs.unsqueeze(1)
    U = torch.nan_to_num(P - P_prev, nan=0.0, posinf=0.0, neginf=0.0)
    sums = all_reduce_sums(row_sums(G, U, M, torch.nan_to_num(P), M_prev, M_prev - G_prev, P_prev, counts),
                           sharded)
    count = sums[:, SUM_INDEX["count"]].clamp_min(1.0)
    zero = torch.zeros_like(counts)
    grad_sq = (sums[:, SUM_INDEX["g_g"]] / count).float()
    rms_g, rms_g_prev = grad_sq.sqrt(), grad_sq_prev.sqrt()
    rms_u = (sums[:, SUM_INDEX["u_u"]] / count).sqrt().float()
    rms_p = (sums[:, SUM_INDEX["p_p"]] / count).sqrt().float()
    drift = torch.where(has_prev & (rms_g_prev > 0) & (rms_g > 0),
                        torch.log((rms_g + EPS) / (rms_g_prev + EPS)), zero)
    update_ratio = torch.where(
        has_prev, torch.log10(rms_u / (rms_p + EPS) + EPS).clamp(-12.0, 2.0) / UPDATE_RATIO_DECADES,
        torch.full_like(rms_g, -1.0))
    knob_cos = {"momentum": cosine(sums, "g_mp", "g_g", "mp_mp"), "beta1": cosine(sums, "g_dm", "g_g", "dm_dm"),
                "weight_decay": cosine(sums, "g_pp", "g_g", "pp_pp")}
    return TensorFeatures(G=G, P=P, M=M, hyper_cos=torch.where(has_prev, cosine(sums, "g_u", "g_g", "u_u"), zero),
                          memory_cos=cosine(sums, "g_m", "g_g", "m_m"), update_ratio=unit(update_ratio, 1.0),
                          drift=torch.nan_to_num(drift).clamp(-DRIFT_MAX, DRIFT_MAX), grad_sq=torch.nan_to_num(grad_sq),
                          counts=count.float(), knob_cos=knob_cos)


def squared_norm(tensors: list[Tensor], device: torch.device) -> Tensor:
    """``sum_i ||t_i||^2`` in float32 as a 0-d tensor on ``device``: non-finite exactly when an
    element is NaN or +-inf or the sum overflows float32 (a norm beyond ~1.8e19).

    One read of every element. On the CPU a float32 / float64 tensor is one BLAS ``dot`` with
    itself, which runs on every intra-op thread (``torch._foreach_norm`` reads each tensor on one
    thread on the CPU: 21-22 ms against 17 ms for GPT-2-small's gradients on 2 threads); other
    devices and dtypes use ``torch._foreach_norm`` (one fused launch per device and dtype on CUDA).
    """
    squares = []
    rest = []
    for t in tensors:
        if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and t.numel() > 0:
            flat = t.reshape(-1)
            squares.append(torch.dot(flat, flat).float())
        else:
            rest.append(t)
    if rest:
        squares += [n.float().square() for n in torch._foreach_norm(rest)]
    if not squares:
        return torch.zeros((), device=device)
    return torch.stack([q.to(device) for q in squares]).sum()
