"""Shared core of the Online optimizers: features, learning signal, controller, knobs, state.

See :mod:`adaptiverl.optim.online` for the user-facing classes and the math. Each algorithm only
supplies its lazy state, its base knob values and two kernels with the same signature (a fast one
and a readable single-tensor reference). Per step, for the T parameter tensors (rows), the work
runs in named stages:

1. :meth:`OnlineOptimizer._gradients_finite` (``finite_check``): a non-finite gradient skips
   the whole step.
2. :meth:`OnlineOptimizer._tensor_features`: a fixed sample of at most
   ``k = feature_sample_size`` elements per tensor (evenly spaced blocks), gathered into
   ``(T, k)`` matrices (gradient ``G``, parameter ``P``, the algorithm's memory ``M``) in one
   batched pass; the realised last update is ``U = P - P_prev``. Gives :class:`TensorFeatures`.
3. :meth:`OnlineOptimizer._learning_signal`: running statistics of the hypergradient cosine
   over two windows, their t-statistics, the signal-to-noise gate and the reward
   finite difference. Gives :class:`LearningSignal`.
4. :meth:`OnlineOptimizer._controller_step`: the controller learns from the signal about its
   previous output, then one batched GRU call gives each row's bounded change of log scale;
   the horizon schedule multiplies the result.
5. :meth:`OnlineOptimizer._knob_values`: the group knobs (momentum, betas, alpha, weight decay).
6. One ``tolist()`` of scales, knob values and a finiteness flag (the only host sync besides the
   finite check), then the algorithm's kernel with ``lr_i = group["lr"] * s_i``.

All per-row controller state lives in one :class:`RowState` and the rest in one
:class:`ControllerState` (typed fields, saved as plain tensors in ``state_dict``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from adaptiverl.controllers.base import BETA_LIKE, beta_from_multiplier, bounded_log_update
from adaptiverl.controllers.gru import GRUController
from adaptiverl.signals.stats import Signals, to_float

_EPS = 1e-12
#: Per-row controller inputs, in column order. All lie in [-1, 1].
FEATURE_NAMES = ("hypergrad_cos", "hypergrad_tstat", "hypergrad_tstat_slow", "grad_memory_cos",
                 "log_update_ratio", "grad_scale_drift", "log_scale", "loss_trend_tstat",
                 "reward_trend_tstat", "progress", "horizon_known")
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
_FINITE_CHECKS = ("auto", "full", "sample", "off")
_CONTROLLERS = ("pretrained", "fresh")

#: EMA factors of the two hypergradient windows (effective lengths ~19 and ~199 steps).
FAST_BETA, SLOW_BETA = 0.9, 0.99
#: A t-statistic is read as ``clamp(t / TSTAT_SCALE, -1, 1)``.
TSTAT_SCALE = 3.0
#: Log-ratio features are divided by these before clamping to [-1, 1].
UPDATE_RATIO_DECADES = 6.0   # log10(rms u / rms theta) / 6
DRIFT_RANGE = 3.0            # log(rms g_t / rms g_{t-1}) / 3
#: The normalised reward change used as a finite difference is clipped to +-REWARD_CLIP std.
REWARD_CLIP = 3.0
#: The controller's fixed rule: z = -(2 t_fast + t_slow) / 3 (each t clamped to +-3): scales rise
#: while consecutive steps agree significantly (t < 0) and fall while they oscillate (t > 0).
PRIOR_GAINS = {"hypergrad_tstat": -2.0, "hypergrad_tstat_slow": -1.0}
#: The brake: one step whose hypergradient cosine shows a strong reversal (c_t above
#: max(BRAKE_COS, BRAKE_NOISE / sqrt(sampled elements)), far beyond what minibatch noise gives: a
#: random cosine has std 1 / sqrt(k)) cuts the scale at once by up to BRAKE_FACTOR, without
#: waiting for the t-statistics: a diverging step size is repaired before it blows up the weights.
#: A loss spike brakes every tensor: the observed loss more than BRAKE_SPIKE_Z standard deviations
#: above its window and more than BRAKE_SPIKE_RATIO times its previous EMA, for a loss whose window
#: is all positive (a cross-entropy or an MSE, not noise around zero).
BRAKE_COS, BRAKE_NOISE, BRAKE_FACTOR = 0.5, 4.0, 2.0
BRAKE_SPIKE_Z, BRAKE_SPIKE_RATIO = 4.0, 2.0
#: After this fraction of training the feedback gate is multiplied by the schedule's a(p) / max a.
ANNEAL_FREEZE_FROM = 0.1


#: Per-row sums of the sampled matrices; every feature is a ratio of them, so under FSDP the
#: shards' sums add up to the full tensor's (one all-reduce) and every rank sees the same features.
#: ``g``: gradient, ``u``: last update, ``m``: memory, ``p``: parameter, ``mp`` / ``pp``: previous
#: memory / parameter, ``dm``: previous memory minus previous gradient.
SUM_NAMES = ("g_u", "g_g", "u_u", "g_m", "m_m", "p_p", "g_mp", "mp_mp", "g_dm", "dm_dm", "g_pp", "pp_pp",
             "count")
_SUM = {name: i for i, name in enumerate(SUM_NAMES)}


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (the storage this rank owns), any other tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def _row_sums(G: Tensor, U: Tensor, M: Tensor, P: Tensor, M_prev: Tensor, D_prev: Tensor, P_prev: Tensor,
              counts: Tensor) -> Tensor:
    """``(T, len(SUM_NAMES))`` float64 row sums (float64: no overflow for any finite float32 input)."""
    g, u, m, p = G.double(), U.double(), M.double(), P.double()
    mp, dm, pp = M_prev.double(), D_prev.double(), P_prev.double()
    pairs = ((g, u), (g, g), (u, u), (g, m), (m, m), (p, p), (g, mp), (mp, mp), (g, dm), (dm, dm),
             (g, pp), (pp, pp))
    return torch.stack([(a * b).sum(1) for a, b in pairs] + [counts.double()], dim=1)


def _cos(sums: Tensor, dot: str, a: str, b: str) -> Tensor:
    """Cosine from row sums; 0 where either vector is zero."""
    norms = sums[:, _SUM[a]] * sums[:, _SUM[b]]
    value = sums[:, _SUM[dot]] / norms.clamp_min(1e-300).sqrt()
    return torch.where(norms > 0, value.clamp(-1.0, 1.0), torch.zeros_like(value)).float()


def _ema_tstat(mean: Tensor, sq: Tensor, value: Tensor, count: Tensor, active: Tensor,
               beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Fold ``value`` into the EMAs of x and x^2 where ``active``; return them and the t-statistic.

    ``t = m / sqrt(var / n_eff)`` with bias-corrected moments and ``n_eff = min(n, (1 + b) / (1 - b))``
    (the EMA's effective sample size); 0 until three values were folded in.
    """
    mean = torch.where(active, beta * mean + (1 - beta) * value, mean)
    sq = torch.where(active, beta * sq + (1 - beta) * value * value, sq)
    correction = (1.0 - torch.pow(torch.full_like(count, beta), count)).clamp_min(_EPS)
    m_hat, sq_hat = mean / correction, sq / correction
    var = (sq_hat - m_hat * m_hat).clamp_min(0.0)
    n_eff = count.clamp(min=1.0, max=(1 + beta) / (1 - beta))
    t = m_hat / torch.sqrt(var / n_eff + 1e-8)
    return mean, sq, torch.where(count >= 3, t, torch.zeros_like(t)).clamp(-30.0, 30.0)


def _gate(evidence: Tensor, tau: float) -> Tensor:
    """``clamp((|t| - tau) / tau, 0, 1)``: 0 below ``tau`` standard errors, 1 from ``2 tau``."""
    tau = max(tau, _EPS)
    return ((evidence.abs() - tau) / tau).clamp(0.0, 1.0)


def _unit(x: Tensor, scale: float) -> Tensor:
    """``clamp(x / scale, -1, 1)`` with NaN read as 0."""
    return torch.nan_to_num(x / scale, nan=0.0).clamp(-1.0, 1.0)


@dataclass
class RowState:
    """Per-tensor controller state (one row per parameter tensor)."""

    P_prev: Tensor           # (T, W) sampled parameters after the previous step
    G_prev: Tensor           # (T, W) sampled previous gradient
    grad_sq: Tensor          # (T,) mean square of the previous gradient (full tensor under FSDP)
    M_prev: Tensor           # (T, W) sampled previous memory (momentum / exp_avg)
    has_prev: Tensor         # (T,) bool: the row was stepped before
    x_prev: Tensor           # (T, F) features of the previous step
    h_in_prev: Tensor        # (T, H) hidden state that went into the previous step
    gate_prev: Tensor        # (T,) gate of the previous step
    hidden: Tensor           # (T, H) current hidden state
    log_scale: Tensor        # (T,) integrated log step scale
    noise: Tensor            # (T,) exploration noise of the previous step
    signal: Tensor           # (T,) last learning signal (for logging)
    cos_fast: Tensor         # (T,) EMA of the hypergradient cosine, window ~19
    cos_sq_fast: Tensor      # (T,) EMA of its square
    cos_slow: Tensor         # (T,) same, window ~199
    cos_sq_slow: Tensor
    cos_count: Tensor        # (T,) float: cosines folded in
    reward_fd: Tensor        # (T,) EMA of the reward finite difference r * eps_{t-1}
    reward_fd_sq: Tensor     # (T,) EMA of its square
    reward_count: Tensor     # (T,) float: finite differences folded in

    def take(self, rows: Tensor | None) -> RowState:
        if rows is None:
            return self
        return RowState(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})

    def put(self, rows: Tensor | None, new: RowState) -> None:
        for f in dataclasses.fields(self):
            if rows is None:
                setattr(self, f.name, getattr(new, f.name))
            else:
                getattr(self, f.name)[rows] = getattr(new, f.name)

    @classmethod
    def zeros(cls, rows: int, width: int, features: int, hidden: int, device: torch.device) -> RowState:
        def z(*shape: int) -> Tensor:
            return torch.zeros(*shape, device=device)
        return cls(P_prev=z(rows, width), G_prev=z(rows, width), grad_sq=z(rows), M_prev=z(rows, width),
                   has_prev=torch.zeros(rows, dtype=torch.bool, device=device),
                   x_prev=z(rows, features), h_in_prev=z(rows, hidden), gate_prev=z(rows),
                   hidden=z(rows, hidden), log_scale=z(rows), noise=z(rows), signal=z(rows),
                   cos_fast=z(rows), cos_sq_fast=z(rows), cos_slow=z(rows), cos_sq_slow=z(rows),
                   cos_count=z(rows), reward_fd=z(rows), reward_fd_sq=z(rows), reward_count=z(rows))

    def copy_rows_from(self, old: RowState) -> None:
        """Copy an older, smaller state into the first rows (after ``add_param_group``)."""
        n = old.has_prev.shape[0]
        for f in dataclasses.fields(self):
            dst, src = getattr(self, f.name), getattr(old, f.name)
            if dst.dim() == 2 and f.name in ("P_prev", "G_prev", "M_prev"):
                w = min(dst.shape[1], src.shape[1])
                dst[:n, :w] = src[:, :w]
            else:
                dst[:n] = src


@dataclass
class ControllerState:
    """Everything the adaptation carries between steps, besides the controller's weights."""

    rows: RowState
    layout: list[tuple[int, int, int]]   # per row: (blocks, block_len, block_stride) of the sample
    width: int
    counts: Tensor                        # (T,) sampled elements per row
    group_of_row: Tensor                  # (T,) long
    knob_log_mult: Tensor                 # (groups, knobs) float64
    drift_ema: Tensor                     # (groups,) float64
    seen: list[bool]                      # host copy of rows.has_prev
    last_reward_count: int = 0
    steps: int = 0
    knob_values: list[list[float]] | None = None
    scales: list[float] | None = None     # the step scales the last step used (schedule included)

    @property
    def num_rows(self) -> int:
        return len(self.layout)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and Python values (loads with ``torch.load(weights_only=True)``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rows"}
        out = {k: (v.clone() if isinstance(v, Tensor) else copy.deepcopy(v)) for k, v in out.items()}
        out["rows"] = {f.name: getattr(self.rows, f.name).clone() for f in dataclasses.fields(self.rows)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], device: torch.device) -> ControllerState:
        def move(v: Any) -> Any:
            return v.to(device, copy=True) if isinstance(v, Tensor) else copy.deepcopy(v)
        rows = RowState(**{k: move(v) for k, v in data["rows"].items()})
        rest = {k: move(v) for k, v in data.items() if k != "rows"}
        rest["layout"] = [tuple(x) for x in rest["layout"]]
        return cls(rows=rows, **rest)


@dataclass
class TensorFeatures:
    """Stage 2 output: the sampled matrices and per-row statistics of one step."""

    G: Tensor
    P: Tensor
    M: Tensor
    hyper_cos: Tensor       # cos(g_t, u_{t-1}), 0 for rows without a previous step
    memory_cos: Tensor      # cos(g_t, memory)
    update_ratio: Tensor    # log10(rms u / rms theta) / 6, in [-1, 1]
    drift: Tensor           # log(rms g_t / rms g_{t-1})
    grad_sq: Tensor         # mean square of g_t
    counts: Tensor          # sampled elements per row (summed over shards)
    knob_cos: dict[str, Tensor]  # the knob rules' cosines: momentum, beta1, weight_decay
    group_of_row: Tensor
    prev: RowState          # the active rows' state before this step


@dataclass
class LearningSignal:
    """Stage 3 output: hypergradient statistics, the gate and the controller's learning signal."""

    tstat_fast: Tensor
    tstat_slow: Tensor
    gate: Tensor            # (T,) in [0, 1]
    reward_step: Tensor     # (T,) the reward path's change of log s (0 without rewards)
    brake: Tensor           # (T,) in [0, 1]: strength of the immediate cut
    signal: Tensor          # (T,) ~ dL / d log s for the previous step's scale
    stats: dict[str, Tensor] = field(default_factory=dict)  # the updated running sums


class OnlineOptimizer(Optimizer):
    """Base class: a torch optimizer whose per-tensor lr and per-group knobs adapt online.

    Subclasses define ``KNOBS`` (names of the group knobs, in the order of ``_base_knobs``),
    ``_init_state``, ``_memory`` and the two kernels.

    Tunables that a param group may override (torch's habit: they live in ``defaults``):
    ``hypergrad_weight``, ``reward_weight``, ``explore_std``, ``knob_lr``, ``drift_gain``.
    The controller's structure is shared by every tensor and set once: ``controller``,
    ``hidden_size``, ``scale_bounds``, ``max_step_factor``, ``meta_lr``, ``snr_threshold``,
    ``feature_sample_size``, ``finite_check``, ``signal_beta`` / ``signal_window``, ``seed``.
    """

    KNOBS: tuple[str, ...] = ()
    #: knobs driven by the grad-scale drift rule instead of a one-step hypergradient
    DRIFT_KNOBS: tuple[str, ...] = ()
    #: the tunables copied into ``defaults`` (so param groups may override them)
    GROUP_TUNABLES = ("hypergrad_weight", "reward_weight", "explore_std", "knob_lr", "drift_gain")

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], *, adapt: bool,
                 adapt_knobs: bool, controller: str, total_steps: int | None,
                 scale_bounds: tuple[float, float], max_step_factor: float, hidden_size: int,
                 meta_lr: float, snr_threshold: float, feature_sample_size: int,
                 hypergrad_weight: float, reward_weight: float, explore_std: float, knob_lr: float,
                 knob_scale_bounds: tuple[float, float], drift_gain: float,
                 knob_bounds: dict[str, tuple[float, float]], finite_check: str,
                 signal_beta: float, signal_window: int, seed: int) -> None:
        name = type(self).__name__
        if feature_sample_size is None or int(feature_sample_size) < 1:
            raise ValueError(f"{name}: feature_sample_size must be an int >= 1, got {feature_sample_size}")
        if finite_check not in _FINITE_CHECKS:
            raise ValueError(f"{name}: finite_check must be one of {_FINITE_CHECKS}, got {finite_check!r}")
        if controller not in _CONTROLLERS:
            raise ValueError(f"{name}: controller must be one of {_CONTROLLERS}, got {controller!r}")
        tunables = {"hypergrad_weight": hypergrad_weight, "reward_weight": reward_weight,
                    "explore_std": explore_std, "knob_lr": knob_lr, "drift_gain": drift_gain}
        for key, value in (*tunables.items(), ("snr_threshold", snr_threshold)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name}: {key} must be a finite number >= 0, got {value}")
        kl, kh = (float(v) for v in knob_scale_bounds)
        if not 0.0 < kl <= 1.0 <= kh:
            raise ValueError(f"{name}: knob_scale_bounds must satisfy 0 < low <= 1 <= high, got {knob_scale_bounds}")
        super().__init__(params, {**defaults, **{k: float(v) for k, v in tunables.items()}})
        self.adapt = bool(adapt)
        self.adapt_knobs = bool(adapt_knobs)
        self.controller_kind = controller
        self.feature_sample_size = int(feature_sample_size)
        self.snr_threshold = float(snr_threshold)
        self.knob_log_bounds = (math.log(kl), math.log(kh))
        self.knob_bounds = {k: knob_bounds[k] for k in self.KNOBS}
        self.finite_check = finite_check
        self.signals = Signals(beta=signal_beta, window=signal_window)
        self._controller_args = {"hidden_size": hidden_size, "scale_bounds": scale_bounds,
                                 "max_step_factor": max_step_factor, "meta_lr": meta_lr, "seed": seed}
        self.controller = self._build_controller()
        self.generator = torch.Generator().manual_seed(seed)
        self.skipped_steps = 0
        self.controller_resets = 0
        self.total_steps = None
        self.set_total_steps(total_steps)
        self._ctl: ControllerState | None = None
        self._sample_cache: dict[Any, Any] = {}
        self._pending_grad_norm: float | None = None
        self._shard_reduce = False  # set when parameters are FSDP2 DTensor shards
        self._signals_fed = False
        self._warned_no_signals = False

    def _build_controller(self) -> GRUController:
        ctl = GRUController(len(FEATURE_NAMES), **self._controller_args,
                            prior={FEATURE_INDEX[k]: v for k, v in PRIOR_GAINS.items()})
        if self.controller_kind == "pretrained":
            ctl.load_pretrained()
        return ctl

    # ------------------------------------------------------------------ API
    def set_total_steps(self, total_steps: int | None) -> None:
        """The training horizon in optimizer steps (``None``: unknown, no schedule).

        The controller reads the fraction of training done and applies its horizon schedule;
        :class:`adaptiverl.trainer.AdaptiveCallback` sets this from the trainer's ``max_steps``.
        """
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ValueError(f"{type(self).__name__}: total_steps must be an int >= 1 or None, "
                             f"got {total_steps!r}")
        self.total_steps = total_steps

    @property
    def progress(self) -> float | None:
        """Fraction of ``total_steps`` done (``None`` when the horizon is unknown)."""
        if self.total_steps is None:
            return None
        done = self._ctl.steps if self._ctl is not None else 0
        return min(1.0, done / self.total_steps)

    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> dict[str, bool]:
        """Feed scalar signals (floats or 0-d tensors); non-finite ones are ignored with one warning.

        ``grad_norm`` (the total gradient norm the caller already computed, e.g. the HF
        Trainer's for clipping) also serves as the finite check of the next step under
        ``finite_check="auto"``: a non-finite value skips that step.
        """
        if "grad_norm" in metrics and metrics["grad_norm"] is not None:
            self._pending_grad_norm = to_float(metrics["grad_norm"])
        accepted = self.signals.observe(loss=loss, reward=reward, **metrics)
        if loss is not None or reward is not None:
            self._signals_fed = True
        return accepted

    # Seed names (AdaptiveRL front end).
    def step_loss(self, loss: Any) -> None:
        self.observe(loss=loss)

    def step_reward(self, reward: Any) -> None:
        self.observe(reward=reward)

    # ------------------------------------------------------- subclass hooks
    def _base_knobs(self, group: dict[str, Any]) -> list[float]:
        raise NotImplementedError

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _memory(self, state: dict[str, Any]) -> Tensor | None:
        raise NotImplementedError

    def _kernel_fast(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                     states: list[dict[str, Any]], lrs: list[float], knobs: dict[str, float]) -> None:
        raise NotImplementedError

    def _kernel_reference(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                          states: list[dict[str, Any]], lrs: list[float], knobs: dict[str, float]) -> None:
        raise NotImplementedError

    def _use_reference(self, group: dict[str, Any]) -> bool:
        """The single-tensor kernel: asked for (``foreach=False`` / ``fused=False``), or half
        precision on the CPU, where torch's fused CPU kernels are not reliable (non-finite
        output from finite fp16 input was seen) and the reference is exact and deterministic."""
        if group.get("foreach") is False or group.get("fused") is False:
            return True
        return any(p.device.type == "cpu" and p.dtype in (torch.float16, torch.bfloat16)
                   for p in group["params"])

    # ------------------------------------------------------------ rows
    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _ensure_controller_state(self, device: torch.device) -> ControllerState:
        params = self._all_params()
        ctl = self._ctl
        if ctl is not None and ctl.num_rows == len(params):
            return ctl
        layout = [self._row_layout(_local(p).numel()) for p in params]
        self._shard_reduce = (dist.is_available() and dist.is_initialized()
                              and any(isinstance(p, DTensor) for p in params))
        counts = [b * length for b, length, _ in layout]
        width = max(counts)
        group_of_row = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]
        rows = RowState.zeros(len(params), width, len(FEATURE_NAMES), self.controller.hidden_size, device)
        new = ControllerState(
            rows=rows, layout=layout, width=width,
            counts=torch.tensor([max(c, 1) for c in counts], dtype=torch.float32, device=device),
            group_of_row=torch.tensor(group_of_row, dtype=torch.long, device=device),
            # float64: knob values must round-trip exactly (0.9 stays 0.9, not 0.8999999762)
            knob_log_mult=torch.zeros(len(self.param_groups), len(self.KNOBS), device=device,
                                      dtype=torch.float64),
            drift_ema=torch.zeros(len(self.param_groups), device=device, dtype=torch.float64),
            seen=[False] * len(params))
        if ctl is not None:  # param groups were added: keep what the old rows learned
            rows.copy_rows_from(ctl.rows)
            g_old = ctl.knob_log_mult.shape[0]
            new.knob_log_mult[:g_old] = ctl.knob_log_mult
            new.drift_ema[:g_old] = ctl.drift_ema
            new.seen[:ctl.num_rows] = ctl.seen
            new.last_reward_count, new.steps = ctl.last_reward_count, ctl.steps
        self.controller.to(device)
        self._ctl = new
        self._sample_cache = {}
        return new

    def _row_layout(self, numel: int) -> tuple[int, int, int]:
        """``(blocks, block_len, block_stride)`` of a tensor's fixed sample.

        A tensor of at most k elements is taken whole. A larger one gives ``B = k // 64``
        evenly spaced contiguous blocks of ``k // B`` elements (stride ``numel // B``):
        the same coverage as an element-wise stride but touching ~B memory pages
        instead of k, which keeps the gather cheap on tensors of 10^7 elements.
        """
        k = self.feature_sample_size
        if numel <= k:
            return 1, numel, numel
        blocks = max(1, k // 64)
        return blocks, k // blocks, numel // blocks

    def _sample(self, kind: str, tensors: list[Tensor], rows: list[int], ctl: ControllerState,
                device: torch.device, persistent: bool) -> Tensor:
        """``(len(rows), width)`` float32 matrix of the tensors' fixed samples, zero-padded.

        One ``as_strided`` view per tensor and one ``_foreach_copy_`` for all of them.
        ``persistent`` tensors (parameters, optimizer buffers) keep their views between
        steps while their storages are unchanged. With every row present, the output is
        one of two preallocated buffers, never the one the state's ``<kind>_prev`` holds.
        """
        layout, width = ctl.layout, ctl.width
        cache = self._sample_cache
        if len(rows) == ctl.num_rows:
            prev = getattr(ctl.rows, kind + "_prev")
            buffers = cache.setdefault(("out", kind), [])
            out, dests = next(((b, d) for b, d in buffers if b.data_ptr() != prev.data_ptr()), (None, None))
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

    # ------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimisation step (see the module docstring for the order of work)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batch = self._collect()
        grad_norm, self._pending_grad_norm = self._pending_grad_norm, None
        if not batch["params"]:
            return loss
        if not self._gradients_finite(batch, grad_norm):
            self.skipped_steps += 1
            warnings.warn(
                f"{type(self).__name__}: non-finite gradient, step skipped (parameters, optimizer "
                f"and controller state unchanged; {self.skipped_steps} skipped so far)",
                RuntimeWarning, stacklevel=4)
            return loss
        for group, params, states in zip(self.param_groups, batch["by_group"], batch["states"], strict=True):
            for p, state in zip(params, states, strict=True):
                if not state:
                    state.update(self._init_state(p, group))
        if self.adapt:
            self._warn_if_unfed()
            scales, knob_values = self._adapt(batch)
        else:
            scales = [1.0] * len(batch["params"])
            knob_values = [self._base_knobs(g) for g in self.param_groups]
        offset = 0
        for gi, (group, params, grads, states) in enumerate(
                zip(self.param_groups, batch["by_group"], batch["grads_by_group"], batch["states"],
                    strict=True)):
            n = len(params)
            if n == 0:
                continue
            base_lr = float(group["lr"])  # a Tensor lr (torch accepts one) becomes a float once
            lrs = [base_lr * s for s in scales[offset:offset + n]]
            offset += n
            knobs = dict(zip(self.KNOBS, knob_values[gi], strict=True))
            kernel = self._kernel_reference if self._use_reference(group) else self._kernel_fast
            if self._shard_reduce:  # element-wise updates: each rank steps the shard it owns
                local_states = [{k: _local(v) if isinstance(v, Tensor) else v for k, v in st.items()}
                                for st in states]
                kernel(group, [_local(p) for p in params], [_local(g) for g in grads], local_states, lrs, knobs)
                for st, local in zip(states, local_states, strict=True):
                    st.update({k: v for k, v in local.items() if k not in st or st[k] is None})
            else:
                kernel(group, params, grads, states, lrs, knobs)
        return loss

    def _warn_if_unfed(self) -> None:
        if self._signals_fed or self._warned_no_signals:
            return
        steps = self._ctl.steps if self._ctl is not None else 0
        if steps >= 1:
            self._warned_no_signals = True
            warnings.warn(
                f"{type(self).__name__}: no loss or reward has been observed; the step scales adapt "
                "from gradients alone. Call `optimizer.observe(loss=...)` each step, or train with "
                "`callbacks=[AdaptiveCallback()]` (adaptiverl.trainer).", UserWarning, stacklevel=4)

    def _collect(self) -> dict[str, Any]:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        rows: list[int] = []
        by_group: list[list[Tensor]] = []
        grads_by_group: list[list[Tensor]] = []
        states: list[list[dict[str, Any]]] = []
        row = 0
        state = self.state
        for group in self.param_groups:
            gp, gg, gs = [], [], []
            for p in group["params"]:
                grad = p.grad
                if grad is not None:
                    if grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                    if p.is_complex():
                        raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
                    gp.append(p)
                    gg.append(grad)
                    gs.append(state[p])
                    rows.append(row)
                row += 1
            by_group.append(gp)
            grads_by_group.append(gg)
            states.append(gs)
            params.extend(gp)
            grads.extend(gg)
        return {"params": params, "grads": grads, "rows": rows, "by_group": by_group,
                "grads_by_group": grads_by_group, "states": states,
                "local_params": [_local(p) for p in params], "local_grads": [_local(g) for g in grads]}

    def _gradients_finite(self, batch: dict[str, Any], grad_norm: float | None) -> bool:
        """Whether to take the step. ``auto``: the observed grad norm when one was given for
        this step (free: the caller already reduced every element), else ``full``."""
        mode = self.finite_check
        if mode == "off":
            return True
        if mode == "auto":
            if grad_norm is not None:
                return math.isfinite(grad_norm)
            mode = "full"
        grads = batch["local_grads"]
        if mode == "full":
            found = torch.zeros(1, device=grads[0].device)
            inv_scale = torch.ones(1, device=grads[0].device)
            by_device: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            for g in grads:
                by_device.setdefault((g.device, g.dtype), []).append(g)
            for (dev, _), gs in by_device.items():
                if dev != found.device:
                    f = torch.zeros(1, device=dev)
                    torch._amp_foreach_non_finite_check_and_unscale_(gs, f, inv_scale.to(dev))
                    found += f.to(found.device)
                else:
                    torch._amp_foreach_non_finite_check_and_unscale_(gs, found, inv_scale)
            return self._all_ranks_finite(found)
        device = grads[0].device
        ctl = self._ensure_controller_state(device)
        sample = self._sample("G", grads, batch["rows"], ctl, device, persistent=False)
        batch["G_sample"] = sample
        return self._all_ranks_finite((~torch.isfinite(sample)).any().float().reshape(1))

    def _all_ranks_finite(self, found: Tensor) -> bool:
        """``found`` (1,) > 0 on any rank: skip everywhere (each shard checks only its own part)."""
        if self._shard_reduce:
            dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return not bool(found.item())

    # ------------------------------------------------------- adaptation
    def _adapt(self, batch: dict[str, Any]) -> tuple[list[float], list[list[float]]]:
        device = batch["grads"][0].device
        ctl = self._ensure_controller_state(device)
        rows_list = batch["rows"]
        all_active = len(rows_list) == ctl.num_rows
        rows = None if all_active else torch.tensor(rows_list, dtype=torch.long, device=device)
        group_tunables = self._row_tunables(ctl, rows, device)

        feats = self._tensor_features(batch, ctl, rows, device)
        sig = self._learning_signal(feats, ctl, group_tunables)
        x = self._feature_matrix(feats, sig)
        new_rows, used = self._controller_step(ctl, rows, feats, sig, x, group_tunables, device)
        knob_values = self._knob_values(ctl, feats, group_tunables["group_table"])
        ctl.rows.put(rows, new_rows)
        ctl.steps += 1

        finite = self.controller.is_finite() & torch.isfinite(new_rows.hidden).all() \
            & torch.isfinite(new_rows.log_scale).all() & torch.isfinite(used).all()
        packed = torch.cat([used.exp().double(), knob_values.flatten(), finite.double().reshape(1)]).tolist()
        n = len(rows_list)
        scales, flat, ok = packed[:n], packed[n:-1], packed[-1] == 1.0
        if not ok:
            self._reset_controller(ctl)
            scales = [1.0] * n
        nk = len(self.KNOBS)
        knobs = [flat[i * nk:(i + 1) * nk] for i in range(len(self.param_groups))]
        ctl.knob_values = knobs
        if all_active:
            ctl.scales = scales
        return scales, knobs

    def _reset_controller(self, ctl: ControllerState) -> None:
        """A non-finite controller state: rebuild the controller and its rows, warn, scale 1."""
        self.controller_resets += 1
        warnings.warn(f"{type(self).__name__}: the controller state became non-finite; it was reset "
                      f"to its initial weights and scales 1 ({self.controller_resets} resets so far)",
                      RuntimeWarning, stacklevel=5)
        device = ctl.counts.device
        self.controller = self._build_controller().to(device)
        fresh = RowState.zeros(ctl.num_rows, ctl.width, len(FEATURE_NAMES), self.controller.hidden_size,
                               device)
        ctl.rows.put(None, fresh)
        ctl.seen = [False] * ctl.num_rows

    def _row_tunables(self, ctl: ControllerState, rows: Tensor | None, device: torch.device) -> dict[str, Tensor]:
        """Per-row values of the group tunables (param groups may override them)."""
        key = tuple(tuple(float(g[k]) for k in self.GROUP_TUNABLES) for g in self.param_groups)
        cached = self._sample_cache.get(("tunables", rows is None))
        if cached is None or cached[0] != key or rows is not None:
            table = torch.tensor(key, dtype=torch.float32, device=device)  # (groups, tunables)
            per_row = table[ctl.group_of_row if rows is None else ctl.group_of_row[rows]]
            values = {k: per_row[:, j] for j, k in enumerate(self.GROUP_TUNABLES)}
            values["group_table"] = table
            self._sample_cache[("tunables", rows is None)] = (key, values)
            return values
        return cached[1]

    def _tensor_features(self, batch: dict[str, Any], ctl: ControllerState, rows: Tensor | None,
                         device: torch.device) -> TensorFeatures:
        """Stage 2: sample G, P, M and compute the per-row gradient / update statistics."""
        rows_list = batch["rows"]
        G = batch.get("G_sample")
        if G is None:
            G = self._sample("G", batch["local_grads"], rows_list, ctl, device, persistent=False)
        P = self._sample("P", batch["local_params"], rows_list, ctl, device, persistent=True)
        mems = [self._memory(s) for states in batch["states"] for s in states]
        M = self._sample("M", [_local(m) if m is not None else p for m, p in
                               zip(mems, batch["local_params"], strict=True)],
                         rows_list, ctl, device, persistent=True)
        missing = [i for i, m in enumerate(mems) if m is None]
        if missing:
            M[missing] = 0.0
        # finite inputs only from here on: a huge-but-finite gradient must not make NaN features
        G = torch.nan_to_num(G, nan=0.0, posinf=0.0, neginf=0.0)
        M = torch.nan_to_num(M, nan=0.0, posinf=0.0, neginf=0.0)
        # maximize: the quantity being minimised is -f, whose gradient is -grad.
        signs = torch.tensor([-1.0 if g["maximize"] else 1.0 for g in self.param_groups], device=device)
        group_of_row = ctl.group_of_row if rows is None else ctl.group_of_row[rows]
        G = G * signs[group_of_row].unsqueeze(1)
        prev = ctl.rows.take(rows)
        counts = ctl.counts if rows is None else ctl.counts[rows]
        U = torch.nan_to_num(P - prev.P_prev, nan=0.0, posinf=0.0, neginf=0.0)
        sums = _row_sums(G, U, M, torch.nan_to_num(P), prev.M_prev, prev.M_prev - prev.G_prev, prev.P_prev,
                         counts)
        if self._shard_reduce:
            dist.all_reduce(sums)  # shards' sums -> the full tensor's (replicas' sums leave ratios alone)
        count = sums[:, _SUM["count"]].clamp_min(1.0)
        zero = torch.zeros_like(counts)
        has_prev = prev.has_prev
        grad_sq = (sums[:, _SUM["g_g"]] / count).float()
        rms_g, rms_g_prev = grad_sq.sqrt(), prev.grad_sq.sqrt()
        rms_u = (sums[:, _SUM["u_u"]] / count).sqrt().float()
        rms_p = (sums[:, _SUM["p_p"]] / count).sqrt().float()
        drift = torch.where(has_prev & (rms_g_prev > 0) & (rms_g > 0),
                            torch.log((rms_g + _EPS) / (rms_g_prev + _EPS)), zero)
        update_ratio = torch.where(
            has_prev, torch.log10(rms_u / (rms_p + _EPS) + _EPS).clamp(-12.0, 2.0) / UPDATE_RATIO_DECADES,
            torch.full_like(rms_g, -1.0))
        knob_cos = {"momentum": _cos(sums, "g_mp", "g_g", "mp_mp"), "beta1": _cos(sums, "g_dm", "g_g", "dm_dm"),
                    "weight_decay": _cos(sums, "g_pp", "g_g", "pp_pp")}
        return TensorFeatures(G=G, P=P, M=M, hyper_cos=torch.where(has_prev, _cos(sums, "g_u", "g_g", "u_u"), zero),
                              memory_cos=_cos(sums, "g_m", "g_g", "m_m"), update_ratio=_unit(update_ratio, 1.0),
                              drift=torch.nan_to_num(drift), grad_sq=torch.nan_to_num(grad_sq),
                              counts=count.float(),
                              knob_cos=knob_cos, group_of_row=group_of_row, prev=prev)

    def _learning_signal(self, feats: TensorFeatures, ctl: ControllerState,
                         tunables: dict[str, Tensor]) -> LearningSignal:
        """Stage 3: windowed hypergradient statistics, SNR gate, and the controller's signal.

        For each row the cosine ``c_t = cos(g_t, u_{t-1})`` (Baydin et al. 2018's hypergradient
        ``dL/d log s = g_t . u_{t-1}``, made scale-free) is folded into EMAs of ``c`` and ``c^2``
        over a fast (~19 steps) and a slow (~199 steps) window. Each gives a t-statistic
        ``t = mean / sqrt(var / n_eff)`` with ``n_eff = min(n, (1 + beta) / (1 - beta))``: how
        many standard errors the mean cosine is from zero. The **gate**
        ``clamp((max(|t_fast|, |t_slow|) - tau) / tau, 0, 1)`` (``tau = snr_threshold``) opens
        only on evidence: a one-step cosine, however large, moves nothing by itself, and a
        pure-noise signal (``|t|`` mostly below ``tau``) leaves the scales where they are.
        The learning signal is ``hypergrad_weight * clamp(t_fast / 3, -1, 1) * gate``
        (no Adam-style normalisation that would turn noise into unit steps), minus the reward
        finite difference ``fd_i = clip(delta R / std R, +-3) * eps_{t-1,i}`` along the previous
        exploration noise (Spall 1992), weighted by ``reward_weight``.

        The reward also moves the scales directly: ``fd`` is folded into an EMA with its own
        t-statistic ``t_R``, and ``reward_step = log(max_step_factor) * reward_weight *
        tanh(t_R / 3) * gate(t_R)`` is added to the controller's change (a scale whose
        perturbations keep coming with reward increases grows; noise alone moves nothing).
        ``hypergrad_weight`` scales the hypergradient gate (0: only the reward path acts).
        """
        prev, has_prev = feats.prev, feats.prev.has_prev
        c = feats.hyper_cos
        n = prev.cos_count + has_prev.float()
        fast_mean, fast_sq, t_fast = _ema_tstat(prev.cos_fast, prev.cos_sq_fast, c, n, has_prev, FAST_BETA)
        slow_mean, slow_sq, t_slow = _ema_tstat(prev.cos_slow, prev.cos_sq_slow, c, n, has_prev, SLOW_BETA)
        stats = {"cos_count": n, "cos_fast": fast_mean, "cos_sq_fast": fast_sq,
                 "cos_slow": slow_mean, "cos_sq_slow": slow_sq}
        gate = (tunables["hypergrad_weight"] * _gate(torch.maximum(t_fast.abs(), t_slow.abs()),
                                                     self.snr_threshold)).clamp(max=1.0)
        progress = self.progress
        if progress is not None and progress >= ANNEAL_FREEZE_FROM:
            peak = max(self.controller.schedule_values())
            gate = gate * min(1.0, math.exp(self.controller.schedule(progress) - peak))
        signal = tunables["hypergrad_weight"] * _unit(t_fast, TSTAT_SCALE) * gate

        # reward: simultaneous-perturbation finite difference along the previous exploration noise
        reward = self.signals.reward
        new_reward = reward.count > ctl.last_reward_count
        ctl.last_reward_count = reward.count
        fd = torch.zeros_like(c)
        if new_reward:
            r = max(-REWARD_CLIP, min(REWARD_CLIP, reward.delta / (reward.std + 1e-8)))
            fd = r * prev.noise
            signal = signal - tunables["reward_weight"] * fd
        active = (prev.noise != 0) if new_reward else torch.zeros_like(has_prev)
        r_count = prev.reward_count + active.float()
        r_mean, r_sq, t_reward = _ema_tstat(prev.reward_fd, prev.reward_fd_sq, fd, r_count, active, FAST_BETA)
        stats.update(reward_fd=r_mean, reward_fd_sq=r_sq, reward_count=r_count)
        reward_step = (self.controller.max_log_step * tunables["reward_weight"]
                       * torch.tanh(t_reward / TSTAT_SCALE) * _gate(t_reward, self.snr_threshold))
        threshold = torch.clamp(BRAKE_NOISE / feats.counts.sqrt(), min=BRAKE_COS)
        brake = torch.where(has_prev & (threshold < 1.0),
                            ((c - threshold) / (1.0 - threshold).clamp_min(_EPS)).clamp(0.0, 1.0),
                            torch.zeros_like(c))
        loss = self.signals.loss
        # only for a positive loss (every value of the window > 0), as a cross-entropy or an MSE
        # is: a loss that is noise around zero (a policy-gradient surrogate, a random objective)
        # would spike by chance
        if (loss.count >= 5 and loss.z_score > BRAKE_SPIKE_Z and loss.last is not None
                and loss.prev_ema is not None and min(loss.values) > 0
                and loss.last > BRAKE_SPIKE_RATIO * loss.prev_ema):
            brake = torch.ones_like(brake)
        brake = brake * tunables["hypergrad_weight"].clamp(max=1.0)
        return LearningSignal(tstat_fast=t_fast, tstat_slow=t_slow, gate=gate, reward_step=reward_step,
                              brake=brake, signal=signal, stats=stats)

    def _feature_matrix(self, feats: TensorFeatures, sig: LearningSignal) -> Tensor:
        """The ``(T, F)`` controller input, columns in ``FEATURE_NAMES`` order."""
        progress = self.progress
        loss, reward = self.signals.loss, self.signals.reward
        globals_ = {
            "loss_trend_tstat": _scalar_unit(loss.trend_tstat),
            "reward_trend_tstat": _scalar_unit(reward.trend_tstat),
            "progress": 0.0 if progress is None else progress,
            "horizon_known": 0.0 if progress is None else 1.0,
        }
        per_row = {
            "hypergrad_cos": feats.hyper_cos,
            "hypergrad_tstat": _unit(sig.tstat_fast, TSTAT_SCALE),
            "hypergrad_tstat_slow": _unit(sig.tstat_slow, TSTAT_SCALE),
            "grad_memory_cos": feats.memory_cos,
            "log_update_ratio": feats.update_ratio,
            "grad_scale_drift": _unit(feats.drift, DRIFT_RANGE),
            "log_scale": feats.prev.log_scale / self.controller.log_hi,
        }
        like = feats.hyper_cos
        columns = [per_row[name] if name in per_row else torch.full_like(like, globals_[name])
                   for name in FEATURE_NAMES]
        return torch.stack(columns, dim=1)

    def _controller_step(self, ctl: ControllerState, rows: Tensor | None, feats: TensorFeatures,
                         sig: LearningSignal, x: Tensor, tunables: dict[str, Tensor],
                         device: torch.device) -> tuple[RowState, Tensor]:
        """Stage 4: learn from the signal about the previous change, then take the next one.

        Returns the new rows' state and the log scales this step uses:
        ``log s_i + explore_std * eps_i + log a(p)`` (exploration only once rewards arrive).
        """
        prev = feats.prev
        seen = ctl.seen
        rows_list = None if rows is None else rows.tolist()
        if any(seen) if rows is None else any(seen[r] for r in rows_list):
            weight = prev.has_prev.float()
            if rows is None:
                full = (prev.x_prev, prev.h_in_prev, prev.gate_prev, sig.signal, weight)
            else:  # learn on every row's stored inputs, with weight only on the active ones
                full_signal = torch.zeros(ctl.num_rows, device=device)
                full_weight = torch.zeros(ctl.num_rows, device=device)
                full_signal[rows] = sig.signal
                full_weight[rows] = weight
                r = ctl.rows
                full = (r.x_prev, r.h_in_prev, r.gate_prev, full_signal, full_weight)
            self.controller.learn(*full)
        if rows is None:
            if not all(seen):
                ctl.seen = [True] * ctl.num_rows
        else:
            for r in rows_list:
                seen[r] = True

        raw, h_new = self.controller(x, prev.hidden)
        step_cap = self.controller.max_log_step
        delta = (self.controller.delta(raw, sig.gate) + sig.reward_step).clamp(-step_cap, step_cap) \
            - sig.brake * math.log(BRAKE_FACTOR)
        log_scale = self.controller.integrate(prev.log_scale, delta)
        k = x.shape[0]
        if self.signals.reward.count > 0:
            # one draw shared by every tensor: a per-tensor draw would split the reward's
            # finite difference over T tensors and drown it in noise (its SNR falls as 1/sqrt(T))
            noise = torch.randn(1, generator=self.generator).to(device).expand(k).clone()
        else:
            noise = torch.zeros(k, device=device)
        log_lo, log_hi = self.controller.log_lo, self.controller.log_hi
        used = (log_scale + tunables["explore_std"] * noise).clamp(log_lo, log_hi)
        used = used + self.controller.schedule(self.progress)
        new = RowState(
            P_prev=feats.P, G_prev=feats.G, grad_sq=feats.grad_sq, M_prev=feats.M,
            has_prev=torch.ones_like(prev.has_prev),
            x_prev=x, h_in_prev=prev.hidden, gate_prev=sig.gate, hidden=h_new.detach(),
            log_scale=log_scale.detach(), noise=noise, signal=sig.signal,
            **sig.stats)
        return new, used.detach()

    def _knob_values(self, ctl: ControllerState, feats: TensorFeatures, group_table: Tensor) -> Tensor:
        """Stage 5: effective knob values (groups, knobs), clamped to their absolute bounds.

        One-step hypergradients, normalised to cosines and averaged over a group's tensors,
        drive ``log m`` (the knob's multiplier, one :func:`bounded_log_update` per step) by
        ``knob_lr * cos``, with ``m`` inside ``knob_scale_bounds``. Beta-like knobs (momentum,
        betas, alpha) take the package's one mapping, ``beta' = 1 - (1 - beta) / m`` (``m``
        scales the averaging horizon, :func:`beta_from_multiplier`); weight decay is ``base * m``:

        * momentum (SGD, RMSprop): ``theta_{t+1} = theta_t - lr (mu b_{t-1} + ...)``, so
          ``dL/dmu = -lr g_{t+1} . b_{t-1}``: grow mu while the new gradient agrees with
          the old buffer.
        * beta1 (Adam): ``m_t = b1 m_{t-1} + (1 - b1) g_t`` gives ``dm_t/db1 = m_{t-1} - g_t``
          and ``dL/db1 ~ -g_{t+1} . (m_{t-1} - g_t)`` (bias correction ignored).
        * weight decay (decoupled or L2): ``dL/dlambda ~ -lr g_{t+1} . theta_t``.

        beta2 (Adam) and alpha (RMSprop) follow a rule instead: their horizon multiplier is
        ``m = 1 / (1 + drift_gain * d)``, i.e. ``1 - beta_eff = (1 - beta) * (1 + drift_gain * d)``,
        with ``d`` an EMA (0.9) of the group mean of ``|log(rms g_t / rms g_{t-1})|``.
        """
        G, prev, group_of_row = feats.G, feats.prev, feats.group_of_row
        has_prev = prev.has_prev
        n_groups = len(self.param_groups)
        base = torch.tensor([self._base_knobs(g) for g in self.param_groups], device=G.device,
                            dtype=torch.float64).reshape(n_groups, len(self.KNOBS))
        if not self.adapt_knobs or not self.KNOBS:
            return base
        counts = torch.zeros(n_groups, device=G.device).index_add_(0, group_of_row, has_prev.float())
        denom = counts.clamp_min(1.0)

        def group_mean(per_row: Tensor) -> Tensor:
            return torch.zeros(n_groups, device=G.device).index_add_(0, group_of_row, per_row) / denom

        zero = torch.zeros_like(feats.drift)
        signals = feats.knob_cos
        knob_lr = group_table[:, self.GROUP_TUNABLES.index("knob_lr")].double().unsqueeze(1)
        drift_gain = group_table[:, self.GROUP_TUNABLES.index("drift_gain")].double()
        lo, hi = self.knob_log_bounds
        step = torch.stack([group_mean(torch.where(has_prev, signals[k], zero)) if k in signals
                            else torch.zeros(n_groups, device=G.device) for k in self.KNOBS], dim=1).double()
        active = (counts > 0).double().unsqueeze(1)
        ctl.knob_log_mult = bounded_log_update(ctl.knob_log_mult, knob_lr * step * active, log_min=lo, log_max=hi)
        ctl.drift_ema = torch.where(counts > 0, 0.9 * ctl.drift_ema + 0.1 * group_mean(feats.drift.abs()).double(),
                                    ctl.drift_ema)
        mult = ctl.knob_log_mult.exp()
        cols = []
        for j, name in enumerate(self.KNOBS):
            # the drift rule shortens the horizon: 1 - beta_eff = (1 - beta) (1 + drift_gain d)
            m = 1.0 / (1.0 + drift_gain * ctl.drift_ema) if name in self.DRIFT_KNOBS else mult[:, j]
            col = beta_from_multiplier(base[:, j], m) if name in BETA_LIKE else base[:, j] * m
            lo_b, hi_b = self.knob_bounds[name]
            cols.append(torch.where(base[:, j] == 0, base[:, j], col.clamp(lo_b, hi_b)))
        return torch.stack(cols, dim=1)

    # ------------------------------------------------------------ logging
    def effective_knobs(self) -> list[dict[str, float]]:
        """The knob values the last step used, per group (the base values before any step)."""
        last = self._ctl.knob_values if self._ctl is not None else None
        out = []
        for gi, group in enumerate(self.param_groups):
            values = last[gi] if last is not None and gi < len(last) else self._base_knobs(group)
            out.append(dict(zip(self.KNOBS, values, strict=True)))
        return out

    def effective_lr(self) -> float:
        """Mean over tensors of ``group["lr"] * delta_scale`` the last step used (host values, no sync)."""
        scales = self._ctl.scales if self._ctl is not None else None
        lrs = [float(g["lr"]) for g in self.param_groups for _ in g["params"]]
        if scales is None or len(scales) != len(lrs):
            return sum(lrs) / max(1, len(lrs))
        return sum(lr * s for lr, s in zip(lrs, scales, strict=True)) / max(1, len(lrs))

    def dynamics(self) -> dict[str, Any]:
        """Summary, per-group and per-tensor figures for logging (not for the hot path).

        ``delta_scale`` is the multiplier the last step applied to ``group["lr"]`` (the
        controller's scale times the horizon schedule), so ``lr = base_lr * delta_scale``.
        """
        params = self._all_params()
        ctl = self._ctl
        rows = len(params)
        scales, grad_signal, hidden_norm, gate = [1.0] * rows, [0.0] * rows, [0.0] * rows, [0.0] * rows
        if ctl is not None:  # rows added by add_param_group since the last step keep the defaults
            known = ctl.num_rows
            sched = self.controller.schedule(self.progress)
            scales[:known] = ctl.scales if ctl.scales is not None and len(ctl.scales) == known else \
                (ctl.rows.log_scale + sched).exp().tolist()
            grad_signal[:known] = ctl.rows.signal.tolist()
            hidden_norm[:known] = torch.linalg.vector_norm(ctl.rows.hidden, dim=1).tolist()
            gate[:known] = ctl.rows.gate_prev.tolist()
        first, second = self._moment_stats(params)
        knobs = self.effective_knobs()
        tensors, groups = [], []
        row = 0
        for gi, group in enumerate(self.param_groups):
            lrs = []
            for _ in group["params"]:
                lr = float(group["lr"]) * scales[row]
                lrs.append(lr)
                tensors.append({"group": gi, "lr": lr, "delta_scale": scales[row],
                                "grad_signal": grad_signal[row], "gate": gate[row],
                                "hidden_norm": hidden_norm[row],
                                "exp_avg_norm": first[row], "exp_avg_sq_mean": second[row]})
                row += 1
            groups.append({"lr": sum(lrs) / max(1, len(lrs)), "base_lr": float(group["lr"]), **knobs[gi]})
        summary: dict[str, float] = {}
        if groups:
            for key in groups[0]:
                summary[key] = sum(g[key] for g in groups) / len(groups)
        progress = self.progress
        summary.update({
            "delta_scale_mean": sum(scales) / max(1, rows),
            "delta_scale_min": min(scales, default=1.0),
            "delta_scale_max": max(scales, default=1.0),
            "schedule": math.exp(self.controller.schedule(progress)),
            "progress": -1.0 if progress is None else progress,
            "gate_mean": sum(gate) / max(1, rows),
            "grad_signal_mean": sum(grad_signal) / max(1, rows),
            "hidden_norm_mean": sum(hidden_norm) / max(1, rows),
            "loss_trend": self.signals.loss.trend,
            "reward_trend": self.signals.reward.trend,
            "skipped_steps": float(self.skipped_steps),
            "controller_resets": float(self.controller_resets),
        })
        return {"summary": summary, "groups": groups, "tensors": tensors}

    def _moment_stats(self, params: list[Tensor]) -> tuple[list[float], list[float]]:
        """Per tensor: norm of the first-moment buffer and mean of the second (0 where absent)."""
        first = [0.0] * len(params)
        second = [0.0] * len(params)
        idx_m, ms, idx_v, vs = [], [], [], []
        for i, p in enumerate(params):
            state = self.state.get(p, {})
            m = self._memory(state) if state else None
            if m is not None:  # a shard's own figures under FSDP (logging only)
                idx_m.append(i)
                ms.append(_local(m))
            v = state.get("exp_avg_sq", state.get("square_avg")) if state else None
            if v is not None:
                idx_v.append(i)
                vs.append(_local(v))
        if ms:
            for i, val in zip(idx_m, torch.stack(torch._foreach_norm(ms)).tolist(), strict=True):
                first[i] = val
        if vs:
            for i, val in zip(idx_v, torch.stack([v.float().mean() for v in vs]).tolist(), strict=True):
                second[i] = val
        return first, second

    def format_dynamics(self, step: int | None = None, max_tensors: int | None = 8) -> str:
        """The seed's log block: ``[OnlineAdamW] Step 100 dynamics:`` then one block per tensor."""
        dyn = self.dynamics()
        step = self._ctl.steps if step is None and self._ctl is not None else (step or 0)
        s = dyn["summary"]
        knob_text = " | ".join(f"{k}={s[k]:.4g}" for k in self.KNOBS)
        lines = [f"[{type(self).__name__}] Step {step} dynamics:",
                 f"  lr={s['lr']:.3e} | {knob_text} | delta_scale mean={s['delta_scale_mean']:.4f} "
                 f"[{s['delta_scale_min']:.4f}, {s['delta_scale_max']:.4f}]"]
        shown = dyn["tensors"] if max_tensors is None else dyn["tensors"][:max_tensors]
        for i, t in enumerate(shown):
            lines.append(f"  Tensor {i} | grad_signal={t['grad_signal']:.4f} | hidden_norm={t['hidden_norm']:.4f}"
                         f" | delta_scale={t['delta_scale']:.4f}")
            lines.append(f"  exp_avg_norm={t['exp_avg_norm']:.4f} | exp_avg_sq_mean={t['exp_avg_sq_mean']:.6f}")
        if len(shown) < len(dyn["tensors"]):
            lines.append(f"  ... {len(dyn['tensors']) - len(shown)} more tensors")
        return "\n".join(lines)

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["online"] = {
            "controller": self.controller.full_state_dict(),
            "ctl": None if self._ctl is None else self._ctl.to_dict(),
            "signals": self.signals.state_dict(),
            "generator": self.generator.get_state(),
            "skipped_steps": self.skipped_steps,
            "controller_resets": self.controller_resets,
            "total_steps": self.total_steps,
        }
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        online = state_dict.pop("online", None)
        super().load_state_dict(state_dict)
        if online is None:
            return
        self.controller.load_full_state_dict(online["controller"])
        self.signals.load_state_dict(online["signals"])
        self.generator.set_state(online["generator"])
        self.skipped_steps = online["skipped_steps"]
        self.controller_resets = online.get("controller_resets", 0)
        if online.get("total_steps") is not None:
            self.set_total_steps(online["total_steps"])
        self._signals_fed = self._signals_fed or self.signals.loss.count > 0 or self.signals.reward.count > 0
        ctl = online["ctl"]
        if ctl is not None:
            device = next(iter(self._all_params())).device
            ctl = ControllerState.from_dict(ctl, device)
            self.controller.to(device)
        self._ctl = ctl
        self._sample_cache = {}


def _scalar_unit(value: float) -> float:
    """``clamp(value / TSTAT_SCALE, -1, 1)`` for a Python float (NaN -> 0, +-inf -> +-1)."""
    if math.isnan(value):
        return 0.0
    return max(-1.0, min(1.0, value / TSTAT_SCALE))
