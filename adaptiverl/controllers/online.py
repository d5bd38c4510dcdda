"""The Online controller: per-tensor step scales and group knobs from per-tensor statistics.

The controller of :class:`~adaptiverl.optim.OnlineSGD`, :class:`~adaptiverl.optim.OnlineRMSProp`
and :class:`~adaptiverl.optim.OnlineAdamW` (the appliers, :mod:`adaptiverl.optim.online`). The
applier calls it once per step (:meth:`OnlineController.__call__`) with the scalar
:class:`~adaptiverl.signals.Signals` and the step's tensors (:class:`StepInputs`); it returns,
on the device and without a host sync, each tensor's log step scale, each group's knob values
and one finiteness flag (:class:`StepOutput`). The applier reads the three with its one host
sync. For the T parameter tensors (rows), the work runs in named stages:

1. :meth:`OnlineController.features`: a fixed sample of at most ``k = feature_sample_size``
   elements per tensor, gathered into ``(T, k)`` matrices (gradient ``G``, parameter ``P``, the
   algorithm's memory ``M``) and reduced to per-row statistics by
   :mod:`adaptiverl.signals.tensor_stats`. Gives :class:`~adaptiverl.signals.tensor_stats.TensorFeatures`.
2. :meth:`OnlineController.learning_signal`: running statistics of the hypergradient cosine over
   two windows, their t-statistics, the signal-to-noise gate, the brake and the reward finite
   difference. Gives :class:`LearningSignal`.
3. :meth:`OnlineController.feature_matrix`: the ``(T, F)`` network input, ``FEATURE_NAMES``.
4. :meth:`OnlineController.scale_step`: the network learns from the signal about its previous
   output, then one batched GRU call (:class:`~adaptiverl.controllers.gru.GRUController`) gives
   each row's bounded change of log scale; the horizon schedule multiplies the result.
5. :meth:`OnlineController.knob_values`: the group knobs (momentum, betas, alpha, weight decay).

All per-row state lives in one :class:`RowState` and the rest in one :class:`ControllerState`
(typed fields, saved as plain tensors in :meth:`OnlineController.state_dict`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from adaptiverl.controllers.base import (
    BETA_LIKE,
    Controller,
    beta_from_multiplier,
    bounded_log_update,
)
from adaptiverl.controllers.gru import GRUController
from adaptiverl.controllers.policy_rules import (
    ANNEAL_ENTROPY_HOLD,
    KL_ENTROPY_POWER,
    KL_FOLD_SCHEDULE,
    KL_LOW,
    KL_MEDIAN_OF,
    KL_RAISE_IMMEDIATE,
    KL_TARGET,
    anneal_advances,
    entropy_fraction,
    kl_adaptive_factor,
    kl_raise,
    kl_raises,
    kl_target,
    recent_kl,
)
from adaptiverl.signals.stats import Signals
from adaptiverl.signals.tensor_stats import (
    EPS,
    UPDATE_RATIO_DECADES,
    RowSampler,
    TensorFeatures,
    ema_tstat,
    local,
    row_layout,
    tensor_features,
    unit,
)

#: Per-row controller inputs, in column order. All lie in [-1, 1].
FEATURE_NAMES = ("hypergrad_cos", "hypergrad_tstat", "hypergrad_tstat_slow", "grad_memory_cos",
                 "log_update_ratio", "grad_scale_drift", "log_scale", "loss_trend_tstat",
                 "reward_trend_tstat", "progress", "horizon_known")
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
CONTROLLER_KINDS = ("pretrained", "fresh")
#: The tunables a param group may override (they live in the optimizer's ``defaults``).
GROUP_TUNABLES = ("hypergrad_weight", "reward_weight", "explore_std", "knob_lr", "drift_gain")

#: EMA factors of the two hypergradient windows (effective lengths ~19 and ~199 steps).
FAST_BETA, SLOW_BETA = 0.9, 0.99
#: A t-statistic is read as ``clamp(t / TSTAT_SCALE, -1, 1)``.
TSTAT_SCALE = 3.0
#: ``log(rms g_t / rms g_{t-1})`` is divided by this before clamping to [-1, 1].
DRIFT_RANGE = 3.0
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
#: In RL (once rewards are fed) every tensor takes the same change of its log scale each step: the
#: mean of the rows' changes. A policy-gradient loss is a surrogate near zero, so the per-tensor
#: hypergradients are noise there, and per-tensor changes pushed the rows' scales apart (the
#: quickstart's GRPO run: from the pretrained guard's 80x spread at step 1 to 1600x at step 200).
#: Chosen on the GRPO tasks of ``scripts/rl_dev.py`` (docs/online.md); its ``_pertensor`` turns it
#: off. Supervised runs are untouched.
SHARE_CHANGE_IN_RL = True
#: In RL the rows also share one level: offsets they had when the rewards started (the pretrained
#: guard's start scales, 0.01x-1x on a pre-trained policy) are replaced by the rows' mean log scale
#: (their geometric mean), so the guard's overall caution stays and its per-tensor split, which no RL
#: signal can correct once the changes are shared, goes. Rows that are already equal (a fresh model)
#: are left exactly as they are. Chosen on the pre-trained-policy GRPO tasks of ``scripts/rl_dev.py``
#: (docs/online.md); its ``_offsets`` turns it off (the offsets kept, as before 2026-12-07).
SHARE_LEVEL_IN_RL = True
#: Development switch (``_spread{c}``), off (``None``): every row's log scale is kept within ``log c``
#: of the rows' mean after each step (``c = 1``: one level shared by every tensor). ``_spread1`` is
#: how the shared change above was first measured (the same on a fresh model, where every row starts
#: at 1); ``_spread3`` did nothing (docs/online.md).
SCALE_SPREAD: float | None = None
#: Development switch, off (``None``): softer ways to pool the rows' levels in supervised runs, measured
#: for the suite's convnet gap (docs/online.md, "The suite's held-out gaps"; nothing shipped).
#: ``("shrink", l)`` (rl_dev ``_shrink{l}``): each row's log offset from the rows' mean is multiplied
#: by ``1 - l`` after every step, so a per-tensor move decays unless evidence renews it;
#: ``("shrink_down", l)`` (``_shrinkdn{l}``): only the offsets below the mean;
#: ``("evidence", k)`` (``_devtau{k}``): the part of a row's change that differs from the rows' mean
#: change is gated again, at ``k`` times the SNR threshold.
ROW_POOLING: tuple[str, float] | None = None
#: A ceiling on each matrix's realised update relative to its weights (the LARS / LAMB trust ratio,
#: as a ceiling, not a target): a row whose last update moved its sampled weights by more than this
#: fraction of their rms (``rms(u) / rms(theta)``) has its log scale cut by the excess (``log(ratio /
#: UPDATE_RATIO_MAX)``), so its next update is about that fraction. Matrices only (``dim >= 2``), and
#: not those that were all zero when their row was made (LoRA's B: the ratio has no meaning there
#: yet); biases and gains are free. Without it the per-tensor hypergradients of a transformer LM
#: drove single matrices to 100-900x the base lr (a 2-layer GPT-2 at 1e-3: the first block's attention
#: matrix at 883x, the run on a plateau for 300 steps). Supervised runs only: not once a reward or a
#: policy change (``policy_kl``) has been fed (``UPDATE_RATIO_IN_RL``).
#: 0.05 was chosen over 0.01, 0.03, 0.1 and 0.2 on ``scripts/rl_dev.py``'s ``lm`` and ``scratch`` tasks
#: (docs/online.md); ``None`` turns it off (``_trust{r}`` sets it there).
UPDATE_RATIO_MAX: float | None = 0.05
#: Development switch, off: the update ceiling also acts in RL (``_trustrl`` in rl_dev).
UPDATE_RATIO_IN_RL = False
#: Held-out pooling, in supervised runs fed a validation loss (``observe(eval_loss=)``; AdaptiveCallback
#: feeds the HF Trainer's ``eval_loss`` at every evaluation). The per-tensor rule is the better optimizer
#: of the training loss, and on some models that is overfitting: on a small convnet it fit its training
#: data 2x lower than one shared level and ended 15% worse held out, while on an MLP, a noisy
#: regression and an LM the same per-tensor freedom lowers the held-out loss too. No statistic of the
#: training loss tells the cases apart; a validation loss does. After ``EVAL_POOL_PATIENCE``
#: readings in a row above ``1 + EVAL_POOL_MARGIN`` times the best one so far, every step pulls each
#: row back towards the rows' common move from their start (:meth:`OnlineController.pool_to_start`):
#: its own part of the move is multiplied by ``1 - EVAL_POOL_RATE``, so the pretrained guard's start pattern is kept and
#: only what the rows learned apart decays. A reading back within the margin stops it. Not once a
#: reward or a policy change has been fed. 0.02, 0.01 and 2 were chosen on ``scripts/rl_dev.py``'s
#: ``glyphs_cnn``, ``glyphs_mlp``, ``noisyreg`` and ``lm`` (docs/online.md); ``None`` turns it off.
EVAL_POOL_RATE: float | None = 0.02
EVAL_POOL_MARGIN = 0.01
#: How many readings in a row must be above the margin before held-out pooling acts (as the HF
#: EarlyStoppingCallback's patience): 2, chosen on the same dev tasks over 1 and 3 (1 let one noisy
#: reading on an LM's early plateau stop the tensors that were leaving it, 3 gave away half the gain).
EVAL_POOL_PATIENCE = 2


def ceiling_rows(params: list[Tensor], device: torch.device, sharded: bool) -> Tensor:
    """(T,) bool: the rows :data:`UPDATE_RATIO_MAX` applies to, matrices with a non-zero weight
    (over every shard); computed on the device when the rows are made, without a host read."""
    zero = torch.zeros((), device=device)
    flags = torch.stack([local(p).detach().ne(0).any().to(device, torch.float32) if p.dim() >= 2 else zero
                         for p in params]) if params else zero.reshape(0)
    if sharded:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags > 0


def gate(evidence: Tensor, tau: float) -> Tensor:
    """``clamp((|t| - tau) / tau, 0, 1)``: 0 below ``tau`` standard errors, 1 from ``2 tau``."""
    tau = max(tau, EPS)
    return ((evidence.abs() - tau) / tau).clamp(0.0, 1.0)


def scalar_unit(value: float) -> float:
    """``clamp(value / TSTAT_SCALE, -1, 1)`` for a Python float (NaN -> 0, +-inf -> +-1)."""
    if math.isnan(value):
        return 0.0
    return max(-1.0, min(1.0, value / TSTAT_SCALE))


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
        """Replace the fields (never in place: a shallow copy taken before stays the old state)."""
        for f in dataclasses.fields(self):
            if rows is None:
                setattr(self, f.name, getattr(new, f.name))
            else:
                merged = getattr(self, f.name).clone()
                merged[rows] = getattr(new, f.name)
                setattr(self, f.name, merged)

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
    """Everything the adaptation carries between steps, besides the network's weights."""

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
    #: steps that count towards the horizon schedule: all of them, except rewarded steps while the
    #: reward climbed (:func:`~adaptiverl.controllers.policy_rules.anneal_advances`)
    anneal_steps: float = 0.0
    last_kl_count: int = 0                # policy_kl values seen (the KL prior acts on new ones)
    kl_reached: bool = False              # a measured policy_kl has reached half the target (search over)
    entropy_ref: float = 0.0              # the largest policy entropy fed so far (kl_target's reference)
    knob_values: list[list[float]] | None = None
    scales: list[float] | None = None     # the step scales the last step used (schedule included)
    #: (T,) bool: rows under the update ceiling (UPDATE_RATIO_MAX): matrices not all zero when made
    ceiling_rows: Tensor | None = None
    #: (T,) the rows' log scales when they were made (the pretrained guard's pattern): held-out pooling
    #: pulls towards it; a state saved before it takes the rows' scales when pooling first acts
    start_log_scale: Tensor | None = None
    eval_count: int = 0                   # eval_loss values seen (held-out pooling reads new ones)
    eval_best: float = math.inf           # the lowest eval_loss fed so far
    eval_pooling: bool = False            # held-out pooling acts (EVAL_POOL_PATIENCE readings over the margin)
    eval_worse: int = 0                   # readings in a row above the margin (EVAL_POOL_PATIENCE)

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
        rest.setdefault("anneal_steps", float(rest["steps"]))  # saved before the anneal gate: all counted
        rest.setdefault("kl_reached", rest.get("last_kl_count", 0) > 0)  # saved before the KL search: no new search
        return cls(rows=rows, **rest)


@dataclass
class LearningSignal:
    """Stage 2 output: hypergradient statistics, the gate and the controller's learning signal."""

    tstat_fast: Tensor
    tstat_slow: Tensor
    gate: Tensor            # (T,) in [0, 1]
    reward_step: Tensor     # (T,) the reward path's change of log s (0 without rewards)
    brake: Tensor           # (T,) in [0, 1]: strength of the immediate cut
    lift: Tensor            # (T,) an immediate change of log s beyond the step cap (the KL prior; < 0: a cut)
    signal: Tensor          # (T,) ~ dL / d log s for the previous step's scale
    stats: dict[str, Tensor] = field(default_factory=dict)  # the updated running sums


@dataclass
class StepInputs:
    """What the applier hands the controller each step (host lists, device tensors)."""

    rows: list[int]                       # the rows (tensors) that have a gradient this step
    grads: list[Tensor]                   # their gradients (local shards under FSDP)
    params: list[Tensor]                  # their parameters (local shards)
    memories: list[Tensor | None]         # their memory buffers (momentum / exp_avg), None if none yet
    maximize: list[bool]                  # per param group
    tunables: tuple[tuple[float, ...], ...]  # per param group, GROUP_TUNABLES order
    base_knobs: list[list[float]]         # per param group, the algorithm's knob values
    progress: float | None                # fraction of training done (None: unknown horizon)
    grad_sample: Tensor | None = None     # the sampled gradients, if the finite check took them


@dataclass
class StepOutput:
    """The controller's decision for one step, on the device (read with the applier's one sync)."""

    log_scales: Tensor      # (rows,) log of each active tensor's step scale, schedule included
    knobs: Tensor           # (groups, knobs) float64 knob values, clamped to their bounds
    finite: Tensor          # 0-d bool: the controller's state and output are finite


class OnlineController(Controller):
    """Per-tensor step scales (a GRU over per-tensor statistics) and adapted group knobs.

    Unlike the rule controllers, which map :class:`~adaptiverl.signals.Signals` to host multipliers,
    this one also reads the step's tensors and answers with device tensors (:class:`StepOutput`),
    so the applier pays one host sync per step for everything.

    Args:
        knobs / drift_knobs: the applier's group knob names, in its order; those driven by the
            gradient-scale drift rule instead of a one-step hypergradient.
        knob_bounds: absolute bounds per knob; ``knob_scale_bounds``: bounds of the multiplier.
        adapt_knobs: ``False`` keeps the knobs at the group values.
        kind: ``"pretrained"`` (meta-trained network) or ``"fresh"`` (the fixed rule, zero head).
        hidden_size, scale_bounds, max_step_factor, meta_lr, seed: the network's
            (:class:`~adaptiverl.controllers.gru.GRUController`).
        snr_threshold: the gate's ``tau``; feature_sample_size: ``k``, elements sampled per tensor.

    ``config`` keeps these arguments: ``Subclass(**controller.config)`` builds a variant with the
    same structure (docs/architecture.md's worked example swaps one into an optimizer this way).
    """

    def __init__(self, *, knobs: tuple[str, ...], drift_knobs: tuple[str, ...],
                 knob_bounds: dict[str, tuple[float, float]], knob_scale_bounds: tuple[float, float],
                 adapt_knobs: bool, kind: str, hidden_size: int, scale_bounds: tuple[float, float],
                 max_step_factor: float, meta_lr: float, snr_threshold: float, feature_sample_size: int,
                 seed: int) -> None:
        self.config = {"knobs": knobs, "drift_knobs": drift_knobs, "knob_bounds": knob_bounds,
                       "knob_scale_bounds": knob_scale_bounds, "adapt_knobs": adapt_knobs, "kind": kind,
                       "hidden_size": hidden_size, "scale_bounds": scale_bounds, "max_step_factor": max_step_factor,
                       "meta_lr": meta_lr, "snr_threshold": snr_threshold,
                       "feature_sample_size": feature_sample_size, "seed": seed}
        self.knobs, self.drift_knobs = tuple(knobs), tuple(drift_knobs)
        self.knob_bounds = {k: knob_bounds[k] for k in self.knobs}
        kl, kh = (float(v) for v in knob_scale_bounds)
        self.knob_log_bounds = (math.log(kl), math.log(kh))
        self.adapt_knobs = bool(adapt_knobs)
        self.kind = kind
        self.snr_threshold = float(snr_threshold)
        self.feature_sample_size = int(feature_sample_size)
        self._network_args = {"hidden_size": hidden_size, "scale_bounds": scale_bounds,
                              "max_step_factor": max_step_factor, "meta_lr": meta_lr, "seed": seed}
        self.network = self.build_network()
        self.generator = torch.Generator().manual_seed(seed)
        self.state: ControllerState | None = None
        self.resets = 0
        self.sharded = False
        self._sampler: RowSampler | None = None
        self._tunables: dict[bool, tuple[Any, dict[str, Tensor]]] = {}

    def build_network(self) -> GRUController:
        """A new network: the fixed rule (``PRIOR_GAINS``), pretrained weights unless ``kind="fresh"``."""
        net = GRUController(len(FEATURE_NAMES), **self._network_args,
                            prior={FEATURE_INDEX[k]: v for k, v in PRIOR_GAINS.items()})
        if self.kind == "pretrained":
            net.load_pretrained()
        return net

    # ------------------------------------------------------------ rows
    @property
    def steps(self) -> int:
        """Steps the controller has taken (0 before the first)."""
        return self.state.steps if self.state is not None else 0

    def progress(self, total_steps: int | None) -> float | None:
        """Fraction of ``total_steps`` the horizon schedule has reached (``None``: unknown horizon).

        The steps done, less the rewarded ones taken while the reward was climbing: the anneal
        advances only on evidence (:func:`~adaptiverl.controllers.policy_rules.anneal_advances`).
        """
        if total_steps is None:
            return None
        done = self.state.anneal_steps if self.state is not None else 0.0
        return min(1.0, done / total_steps)

    def ready(self, rows: int) -> bool:
        """Whether :meth:`prepare` has set up exactly ``rows`` rows (and the sampler)."""
        return self.state is not None and self.state.num_rows == rows and self._sampler is not None

    def prepare(self, params: list[Tensor], groups: list[int], device: torch.device, sharded: bool,
                start_scales: list[float] | None = None) -> None:
        """Rows for ``params`` (``groups``: the param group of each); rows learned so far are kept.
        ``start_scales``: the initial step scale of each new row (default 1; clamped to the bounds)."""
        state = self.state
        if state is not None and state.num_rows == len(params):
            if self._sampler is None:
                self._sampler = RowSampler(state.layout, state.width)
                self.sharded = sharded
            if state.ceiling_rows is None:  # a state saved before the ceiling: judged by today's weights
                state.ceiling_rows = ceiling_rows(params, device, sharded)
            return
        self.sharded = sharded
        layout = [row_layout(local(p).numel(), self.feature_sample_size) for p in params]
        counts = [b * length for b, length, _ in layout]
        width = max(counts)
        n_groups = max(groups) + 1
        rows = RowState.zeros(len(params), width, len(FEATURE_NAMES), self.network.hidden_size, device)
        if start_scales is not None:
            start = rows.log_scale.new_tensor(start_scales).clamp_min(1e-30).log()
            rows.log_scale = self.network.clamp_log_scale(start)
        new = ControllerState(
            rows=rows, layout=layout, width=width,
            counts=torch.tensor([max(c, 1) for c in counts], dtype=torch.float32, device=device),
            group_of_row=torch.tensor(groups, dtype=torch.long, device=device),
            # float64: knob values must round-trip exactly (0.9 stays 0.9, not 0.8999999762)
            knob_log_mult=torch.zeros(n_groups, len(self.knobs), device=device, dtype=torch.float64),
            drift_ema=torch.zeros(n_groups, device=device, dtype=torch.float64),
            seen=[False] * len(params), ceiling_rows=ceiling_rows(params, device, sharded),
            start_log_scale=rows.log_scale.clone())
        if state is not None:  # param groups were added: keep what the old rows learned
            rows.copy_rows_from(state.rows)
            if state.ceiling_rows is not None:
                new.ceiling_rows[:state.num_rows] = state.ceiling_rows
            g_old = state.knob_log_mult.shape[0]
            new.knob_log_mult[:g_old] = state.knob_log_mult
            new.drift_ema[:g_old] = state.drift_ema
            new.seen[:state.num_rows] = state.seen
            new.last_reward_count, new.steps = state.last_reward_count, state.steps
            new.anneal_steps, new.last_kl_count = state.anneal_steps, state.last_kl_count
            new.kl_reached = state.kl_reached
            new.eval_count, new.eval_best, new.eval_pooling = state.eval_count, state.eval_best, state.eval_pooling
            new.eval_worse = state.eval_worse
            old_start = state.start_log_scale if state.start_log_scale is not None else state.rows.log_scale
            new.start_log_scale[:state.num_rows] = old_start
        self.network.to(device)
        self.state = new
        self._sampler = RowSampler(layout, width)
        self._tunables = {}

    def sample_gradients(self, grads: list[Tensor], rows: list[int], device: torch.device) -> Tensor:
        """The gradients' fixed samples, ``(len(rows), width)`` (what the features read)."""
        assert self._sampler is not None and self.state is not None, "prepare() first"
        return self._sampler.sample("G", grads, rows, device, persistent=False, avoid=self.state.rows.G_prev)

    # ------------------------------------------------------------ the step
    def __call__(self, signals: Signals, inputs: StepInputs) -> StepOutput:  # type: ignore[override]
        """One step: features, learning signal, network, knobs. Device tensors, no host sync."""
        ctl = self.state
        assert ctl is not None and self._sampler is not None, "prepare() first"
        device = ctl.counts.device
        all_active = len(inputs.rows) == ctl.num_rows
        rows = None if all_active else torch.tensor(inputs.rows, dtype=torch.long, device=device)
        tunables = self.row_tunables(inputs.tunables, rows, device)
        prev = ctl.rows.take(rows)
        group_of_row = ctl.group_of_row if rows is None else ctl.group_of_row[rows]
        feats = self.features(inputs, prev, rows, group_of_row, device)
        sig = self.learning_signal(signals, feats, prev, tunables, inputs.progress)
        x = self.feature_matrix(signals, feats, sig, prev, inputs.progress)
        new_rows, used = self.scale_step(signals, rows, feats, sig, prev, x, tunables, inputs.progress)
        knobs = self.knob_values(feats, prev, group_of_row, inputs.base_knobs, tunables["group_table"])
        ctl.rows.put(rows, new_rows)
        ctl.steps += 1
        reward = signals.reward
        fraction = None
        if ANNEAL_ENTROPY_HOLD is not None:  # a development switch: no entropy read on the shipped path
            entropy = signals.signals.get("entropy")
            fraction = entropy_fraction(None if entropy is None else entropy.last, ctl.entropy_ref)
        ctl.anneal_steps += float(anneal_advances(inputs.progress, reward.trend_tstat, reward.count > 0,
                                                  fraction, ANNEAL_ENTROPY_HOLD))
        finite = self.network.is_finite() & torch.isfinite(new_rows.hidden).all() \
            & torch.isfinite(new_rows.log_scale).all() & torch.isfinite(used).all()
        return StepOutput(log_scales=used, knobs=knobs, finite=finite)

    def record(self, scales: list[float], knobs: list[list[float]], all_rows: bool) -> None:
        """Keep the host values of the last step (read by logging without a sync)."""
        assert self.state is not None
        self.state.knob_values = knobs
        if all_rows:
            self.state.scales = scales

    def snapshot(self) -> dict[str, Any]:
        """What one call changes, kept so that :meth:`restore` can undo it (a step whose gradients
        turn out non-finite in the same host sync as the controller's output). Cheap: references
        to the row tensors (replaced, never written in place), a copy of the network's few weights
        (its online learning writes in place) and of the generator's state."""
        ctl = self.state
        assert ctl is not None
        return {"rows": dataclasses.replace(ctl.rows), "knob_log_mult": ctl.knob_log_mult,
                "drift_ema": ctl.drift_ema, "steps": ctl.steps, "last_reward_count": ctl.last_reward_count,
                "anneal_steps": ctl.anneal_steps, "last_kl_count": ctl.last_kl_count,
                "kl_reached": ctl.kl_reached, "seen": list(ctl.seen), "generator": self.generator.get_state(),
                "weights": [w.detach().clone() for w in self.network.parameters()]}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Undo the calls since :meth:`snapshot`."""
        ctl = self.state
        assert ctl is not None
        ctl.rows = snapshot["rows"]
        ctl.knob_log_mult, ctl.drift_ema = snapshot["knob_log_mult"], snapshot["drift_ema"]
        ctl.steps, ctl.last_reward_count = snapshot["steps"], snapshot["last_reward_count"]
        ctl.anneal_steps, ctl.last_kl_count = snapshot["anneal_steps"], snapshot["last_kl_count"]
        ctl.kl_reached = snapshot["kl_reached"]
        ctl.seen = snapshot["seen"]
        self.generator.set_state(snapshot["generator"])
        with torch.no_grad():
            for w, saved in zip(self.network.parameters(), snapshot["weights"], strict=True):
                w.copy_(saved)

    def reset(self) -> None:
        """Forget everything (the :class:`~adaptiverl.controllers.base.Stateful` meaning): the
        initial network, no rows, the generator at its seed, no resets counted."""
        self.network = self.build_network()
        self.generator = torch.Generator().manual_seed(self._network_args["seed"])
        self.state = None
        self.resets = 0
        self._sampler = None
        self._tunables = {}

    def recover(self) -> None:
        """After a non-finite state: a new network and fresh rows (scales 1); the knob multipliers
        and the step count stay."""
        self.resets += 1
        ctl = self.state
        assert ctl is not None
        device = ctl.counts.device
        self.network = self.build_network().to(device)
        fresh = RowState.zeros(ctl.num_rows, ctl.width, len(FEATURE_NAMES), self.network.hidden_size, device)
        ctl.rows.put(None, fresh)
        ctl.seen = [False] * ctl.num_rows

    def row_tunables(self, key: tuple[tuple[float, ...], ...], rows: Tensor | None,
                      device: torch.device) -> dict[str, Tensor]:
        """Per-row values of the group tunables (param groups may override them)."""
        assert self.state is not None
        cached = self._tunables.get(rows is None)
        if cached is None or cached[0] != key or rows is not None:
            table = torch.tensor(key, dtype=torch.float32, device=device)  # (groups, tunables)
            per_row = table[self.state.group_of_row if rows is None else self.state.group_of_row[rows]]
            values = {k: per_row[:, j] for j, k in enumerate(GROUP_TUNABLES)}
            values["group_table"] = table
            self._tunables[rows is None] = (key, values)
            return values
        return cached[1]

    def features(self, inputs: StepInputs, prev: RowState, rows: Tensor | None, group_of_row: Tensor,
                 device: torch.device) -> TensorFeatures:
        """Stage 1: sample G, P, M and compute the per-row gradient / update statistics."""
        ctl, sampler = self.state, self._sampler
        assert ctl is not None and sampler is not None
        G = inputs.grad_sample
        if G is None:
            G = sampler.sample("G", inputs.grads, inputs.rows, device, persistent=False, avoid=ctl.rows.G_prev)
        P = sampler.sample("P", inputs.params, inputs.rows, device, persistent=True, avoid=ctl.rows.P_prev)
        mems = inputs.memories
        M = sampler.sample("M", [local(m) if m is not None else p for m, p in
                                 zip(mems, inputs.params, strict=True)],
                           inputs.rows, device, persistent=True, avoid=ctl.rows.M_prev)
        missing = [i for i, m in enumerate(mems) if m is None]
        if missing:
            M[missing] = 0.0
        signs = torch.tensor([-1.0 if m else 1.0 for m in inputs.maximize], device=device)
        counts = ctl.counts if rows is None else ctl.counts[rows]
        return tensor_features(G, P, M, signs[group_of_row], P_prev=prev.P_prev, G_prev=prev.G_prev,
                               M_prev=prev.M_prev, grad_sq_prev=prev.grad_sq, has_prev=prev.has_prev,
                               counts=counts, sharded=self.sharded)

    def learning_signal(self, signals: Signals, feats: TensorFeatures, prev: RowState,
                        tunables: dict[str, Tensor], progress: float | None) -> LearningSignal:
        """Stage 2: windowed hypergradient statistics, SNR gate, and the controller's signal.

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
        ctl = self.state
        assert ctl is not None
        has_prev = prev.has_prev
        c = feats.hyper_cos
        n = prev.cos_count + has_prev.float()
        fast_mean, fast_sq, t_fast = ema_tstat(prev.cos_fast, prev.cos_sq_fast, c, n, has_prev, FAST_BETA)
        slow_mean, slow_sq, t_slow = ema_tstat(prev.cos_slow, prev.cos_sq_slow, c, n, has_prev, SLOW_BETA)
        stats = {"cos_count": n, "cos_fast": fast_mean, "cos_sq_fast": fast_sq,
                 "cos_slow": slow_mean, "cos_sq_slow": slow_sq}
        open_ = (tunables["hypergrad_weight"] * gate(torch.maximum(t_fast.abs(), t_slow.abs()),
                                                     self.snr_threshold)).clamp(max=1.0)
        if progress is not None and progress >= ANNEAL_FREEZE_FROM:
            open_ = open_ * self.network.anneal(progress)
        signal = tunables["hypergrad_weight"] * unit(t_fast, TSTAT_SCALE) * open_

        # reward: simultaneous-perturbation finite difference along the previous exploration noise
        reward = signals.reward
        new_reward = reward.count > ctl.last_reward_count
        ctl.last_reward_count = reward.count
        fd = torch.zeros_like(c)
        if new_reward:
            r = max(-REWARD_CLIP, min(REWARD_CLIP, reward.delta / (reward.std + 1e-8)))
            fd = r * prev.noise
            signal = signal - tunables["reward_weight"] * fd
        active = (prev.noise != 0) if new_reward else torch.zeros_like(has_prev)
        r_count = prev.reward_count + active.float()
        r_mean, r_sq, t_reward = ema_tstat(prev.reward_fd, prev.reward_fd_sq, fd, r_count, active, FAST_BETA)
        stats.update(reward_fd=r_mean, reward_fd_sq=r_sq, reward_count=r_count)
        reward_step = (self.network.max_log_step * tunables["reward_weight"]
                       * torch.tanh(t_reward / TSTAT_SCALE) * gate(t_reward, self.snr_threshold))
        brake = self.brake(signals, feats, has_prev, tunables)
        reward_step, brake, lift = self.kl_prior(signals, reward_step, brake, progress)
        return LearningSignal(tstat_fast=t_fast, tstat_slow=t_slow, gate=open_, reward_step=reward_step,
                              brake=brake, lift=lift, signal=signal, stats=stats)

    def kl_prior(self, signals: Signals, step: Tensor, brake: Tensor,
                 progress: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """rsl_rl's KL-adaptive rule on a newly measured policy change (``observe(policy_kl=)``).

        The target is ``KL_TARGET`` scaled by the policy's entropy relative to the largest fed so
        far (:func:`kl_target`; fixed when no entropy is fed). Below half of it every row's change
        gets the network's largest step up (1.1x)
        and a lift beyond that step cap up to :func:`kl_raise`'s factor: 2x while the controller
        still searches (no measured KL has reached half the target yet), then 1.5x
        (:func:`kl_raises` may hold a raise: development variants). Above twice the target the brake
        cuts every row by 1.5 at once, so up and down steps are the same size. With
        ``KL_FOLD_SCHEDULE`` (a development switch, off), when the search ends with the horizon
        known the schedule's rise still ahead comes off every row at once. Nothing
        without a new measurement (supervised runs), so the rest of the controller is unchanged there.
        Returns ``(step, brake, lift)`` (``lift``: an immediate change of log s beyond the step
        cap: > 0 raises, < 0 cuts).
        """
        ctl = self.state
        lift = torch.zeros_like(step)
        kl = signals.signals.get("policy_kl")
        if ctl is None or kl is None or kl.count <= ctl.last_kl_count or kl.last is None:
            return step, brake, lift
        ctl.last_kl_count = kl.count
        value = recent_kl(kl.values, KL_MEDIAN_OF)
        entropy = signals.signals.get("entropy")
        entropy = None if entropy is None else entropy.last
        if entropy is not None:
            ctl.entropy_ref = max(ctl.entropy_ref, entropy)
        target = kl_target(entropy, ctl.entropy_ref, KL_TARGET, KL_ENTROPY_POWER)
        search_ends = not ctl.kl_reached and value >= KL_LOW * target
        ctl.kl_reached = ctl.kl_reached or search_ends
        searching = not ctl.kl_reached
        if KL_FOLD_SCHEDULE and search_ends and progress is not None:
            # the search found the level: the schedule's rise still ahead would carry the lr past it
            lift = lift - (max(self.network.schedule_values()) - self.network.schedule(progress))
        factor = kl_adaptive_factor(value, target)
        if factor > 1.0:
            if not kl_raises(searching, signals.reward):
                return step, brake, lift
            if KL_RAISE_IMMEDIATE and not searching:
                return step, brake, lift + self.network.max_log_step
            extra = math.log(kl_raise(value, target, searching=searching)) - self.network.max_log_step
            return step + self.network.max_log_step, brake, lift + max(0.0, extra)
        if factor < 1.0:
            return step, brake.clamp(min=math.log(1.0 / factor) / math.log(BRAKE_FACTOR)), lift
        return step, brake, lift

    def brake(self, signals: Signals, feats: TensorFeatures, has_prev: Tensor, tunables: dict[str, Tensor]) -> Tensor:
        """Strength in [0, 1] of the immediate cut: a strong reversal of a row, or a loss spike (all rows)."""
        c = feats.hyper_cos
        threshold = torch.clamp(BRAKE_NOISE / feats.counts.sqrt(), min=BRAKE_COS)
        brake = torch.where(has_prev & (threshold < 1.0),
                            ((c - threshold) / (1.0 - threshold).clamp_min(EPS)).clamp(0.0, 1.0),
                            torch.zeros_like(c))
        loss = signals.loss
        # only for a positive loss (every value of the window > 0), as a cross-entropy or an MSE
        # is: a loss that is noise around zero (a policy-gradient surrogate, a random objective)
        # would spike by chance
        if (loss.count >= 5 and loss.z_score > BRAKE_SPIKE_Z and loss.last is not None
                and loss.prev_ema is not None and min(loss.values) > 0
                and loss.last > BRAKE_SPIKE_RATIO * loss.prev_ema):
            brake = torch.ones_like(brake)
        return brake * tunables["hypergrad_weight"].clamp(max=1.0)

    def feature_matrix(self, signals: Signals, feats: TensorFeatures, sig: LearningSignal, prev: RowState,
                       progress: float | None) -> Tensor:
        """Stage 3: the ``(T, F)`` network input, columns in ``FEATURE_NAMES`` order."""
        loss, reward = signals.loss, signals.reward
        globals_ = {
            "loss_trend_tstat": scalar_unit(loss.trend_tstat),
            "reward_trend_tstat": scalar_unit(reward.trend_tstat),
            "progress": 0.0 if progress is None else progress,
            "horizon_known": 0.0 if progress is None else 1.0,
        }
        per_row = {
            "hypergrad_cos": feats.hyper_cos,
            "hypergrad_tstat": unit(sig.tstat_fast, TSTAT_SCALE),
            "hypergrad_tstat_slow": unit(sig.tstat_slow, TSTAT_SCALE),
            "grad_memory_cos": feats.memory_cos,
            "log_update_ratio": feats.update_ratio,
            "grad_scale_drift": unit(feats.drift, DRIFT_RANGE),
            "log_scale": prev.log_scale / self.network.log_hi,
        }
        like = feats.hyper_cos
        columns = [per_row[name] if name in per_row else torch.full_like(like, globals_[name])
                   for name in FEATURE_NAMES]
        return torch.stack(columns, dim=1)

    def scale_step(self, signals: Signals, rows: Tensor | None, feats: TensorFeatures, sig: LearningSignal,
                   prev: RowState, x: Tensor, tunables: dict[str, Tensor],
                   progress: float | None) -> tuple[RowState, Tensor]:
        """Stage 4: learn from the signal about the previous change, then take the next one.

        Returns the new rows' state and the log scales this step uses:
        ``log s_i + explore_std * eps_i + log a(p)`` (exploration only once rewards arrive).
        """
        ctl = self.state
        assert ctl is not None
        device = x.device
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
            self.network.learn(*full)
        if rows is None:
            if not all(seen):
                ctl.seen = [True] * ctl.num_rows
        else:
            for r in rows_list:
                seen[r] = True

        log_scale, h_new = self.network.advance(x, prev.hidden, prev.log_scale, sig.gate, sig.reward_step,
                                                sig.brake * math.log(BRAKE_FACTOR) - sig.lift)
        rewarded = signals.reward.count > 0
        if SHARE_CHANGE_IN_RL and rewarded:
            log_scale = self.network.clamp_log_scale(prev.log_scale + (log_scale - prev.log_scale).mean())
            if SHARE_LEVEL_IN_RL:  # one level; rows already equal stay bit-identical (no rounding of a mean)
                log_scale = torch.where(log_scale.amax() > log_scale.amin(), log_scale.mean(), log_scale)
        if SCALE_SPREAD is not None:
            centre, width = log_scale.mean(), math.log(SCALE_SPREAD)
            log_scale = log_scale.clamp(centre - width, centre + width)
        if ROW_POOLING is not None and not rewarded:
            log_scale = self.pool_rows(log_scale, prev, sig)
        kl = signals.signals.get("policy_kl")
        policy = rewarded or (kl is not None and kl.count > 0)  # RL: a reward or a policy change fed
        if EVAL_POOL_RATE is not None and not policy and self.heldout_gate(signals):
            log_scale = self.pool_to_start(log_scale, rows)
        if UPDATE_RATIO_MAX is not None and (UPDATE_RATIO_IN_RL or not policy):
            log_scale = self.update_ceiling(log_scale, prev, feats, rows)
        k = x.shape[0]
        if rewarded:
            # one draw shared by every tensor: a per-tensor draw would split the reward's
            # finite difference over T tensors and drown it in noise (its SNR falls as 1/sqrt(T))
            noise = torch.randn(1, generator=self.generator).to(device).expand(k).clone()
        else:
            noise = torch.zeros(k, device=device)
        used = self.network.clamp_log_scale(log_scale + tunables["explore_std"] * noise)
        used = used + self.network.schedule(progress)
        new = RowState(
            P_prev=feats.P, G_prev=feats.G, grad_sq=feats.grad_sq, M_prev=feats.M,
            has_prev=torch.ones_like(prev.has_prev),
            x_prev=x, h_in_prev=prev.hidden, gate_prev=sig.gate, hidden=h_new.detach(),
            log_scale=log_scale.detach(), noise=noise, signal=sig.signal,
            **sig.stats)
        return new, used.detach()

    def heldout_gate(self, signals: Signals) -> bool:
        """Whether held-out pooling acts this step: reads a newly fed ``eval_loss`` (host floats only)."""
        ctl = self.state
        assert ctl is not None
        held_out = signals.signals.get("eval_loss")
        if held_out is not None and held_out.count > ctl.eval_count and held_out.last is not None:
            ctl.eval_count = held_out.count
            worse = held_out.last > (1.0 + EVAL_POOL_MARGIN) * ctl.eval_best
            ctl.eval_worse = ctl.eval_worse + 1 if worse else 0
            ctl.eval_pooling = ctl.eval_worse >= EVAL_POOL_PATIENCE
            ctl.eval_best = min(ctl.eval_best, held_out.last)
        return ctl.eval_pooling

    def pool_to_start(self, log_scale: Tensor, rows: Tensor | None) -> Tensor:
        """Each row's own part of its move since the start times ``1 - EVAL_POOL_RATE`` (the rows' common move kept)."""
        ctl = self.state
        assert ctl is not None and EVAL_POOL_RATE is not None
        if ctl.start_log_scale is None:  # a state saved before held-out pooling: its pattern as it is now
            ctl.start_log_scale = ctl.rows.log_scale.clone()
        start = ctl.start_log_scale if rows is None else ctl.start_log_scale[rows]
        moved = log_scale - start
        common = moved.mean()
        return self.network.clamp_log_scale(start + common + (moved - common) * (1.0 - EVAL_POOL_RATE))

    def pool_rows(self, log_scale: Tensor, prev: RowState, sig: LearningSignal) -> Tensor:
        """``log_scale`` pooled towards the rows' common level as :data:`ROW_POOLING` says (dev switch)."""
        assert ROW_POOLING is not None
        mode, amount = ROW_POOLING
        if mode == "evidence":
            change = log_scale - prev.log_scale
            common = change.mean()
            weight = gate(torch.maximum(sig.tstat_fast.abs(), sig.tstat_slow.abs()), amount * self.snr_threshold)
            return prev.log_scale + common + (change - common) * weight
        if mode not in ("shrink", "shrink_down"):
            raise ValueError(f"ROW_POOLING mode {mode!r}: expected 'shrink', 'shrink_down' or 'evidence'")
        centre = log_scale.mean()
        offset = log_scale - centre
        shrunk = offset * (1.0 - amount)
        return centre + (torch.where(offset < 0, shrunk, offset) if mode == "shrink_down" else shrunk)

    def update_ceiling(self, log_scale: Tensor, prev: RowState, feats: TensorFeatures, rows: Tensor | None) -> Tensor:
        """``log_scale`` with rows over :data:`UPDATE_RATIO_MAX` cut to ``prev log s - log(ratio / max)``."""
        ctl = self.state
        assert ctl is not None and ctl.ceiling_rows is not None and UPDATE_RATIO_MAX is not None
        # feats.update_ratio is log10(rms u / rms theta) / UPDATE_RATIO_DECADES (-1 without a previous step)
        excess = (feats.update_ratio * UPDATE_RATIO_DECADES - math.log10(UPDATE_RATIO_MAX)) * math.log(10.0)
        under = ctl.ceiling_rows if rows is None else ctl.ceiling_rows[rows]
        over = (excess > 0) & under & prev.has_prev
        return self.network.clamp_log_scale(torch.where(over, torch.minimum(log_scale, prev.log_scale - excess),
                                                        log_scale))

    def knob_values(self, feats: TensorFeatures, prev: RowState, group_of_row: Tensor,
                    base_knobs: list[list[float]], group_table: Tensor) -> Tensor:
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
        ctl = self.state
        assert ctl is not None
        G, has_prev = feats.G, prev.has_prev
        n_groups = len(base_knobs)
        base = torch.tensor(base_knobs, device=G.device, dtype=torch.float64).reshape(n_groups, len(self.knobs))
        if not self.adapt_knobs or not self.knobs:
            return base
        counts = torch.zeros(n_groups, device=G.device).index_add_(0, group_of_row, has_prev.float())
        denom = counts.clamp_min(1.0)

        def group_mean(per_row: Tensor) -> Tensor:
            return torch.zeros(n_groups, device=G.device).index_add_(0, group_of_row, per_row) / denom

        zero = torch.zeros_like(feats.drift)
        cosines = feats.knob_cos
        knob_lr = group_table[:, GROUP_TUNABLES.index("knob_lr")].double().unsqueeze(1)
        drift_gain = group_table[:, GROUP_TUNABLES.index("drift_gain")].double()
        lo, hi = self.knob_log_bounds
        step = torch.stack([group_mean(torch.where(has_prev, cosines[k], zero)) if k in cosines
                            else torch.zeros(n_groups, device=G.device) for k in self.knobs], dim=1).double()
        active = (counts > 0).double().unsqueeze(1)
        ctl.knob_log_mult = bounded_log_update(ctl.knob_log_mult, knob_lr * step * active, log_min=lo, log_max=hi)
        ctl.drift_ema = torch.where(counts > 0, 0.9 * ctl.drift_ema + 0.1 * group_mean(feats.drift.abs()).double(),
                                    ctl.drift_ema)
        mult = ctl.knob_log_mult.exp()
        cols = []
        for j, name in enumerate(self.knobs):
            # the drift rule shortens the horizon: 1 - beta_eff = (1 - beta) (1 + drift_gain d)
            m = 1.0 / (1.0 + drift_gain * ctl.drift_ema) if name in self.drift_knobs else mult[:, j]
            col = beta_from_multiplier(base[:, j], m) if name in BETA_LIKE else base[:, j] * m
            lo_b, hi_b = self.knob_bounds[name]
            cols.append(torch.where(base[:, j] == 0, base[:, j], col.clamp(lo_b, hi_b)))
        return torch.stack(cols, dim=1)

    # ------------------------------------------------------------ logging
    def last_knobs(self) -> list[list[float]] | None:
        """The knob values the last step used, per group (host values; ``None`` before a step)."""
        return self.state.knob_values if self.state is not None else None

    def last_scales(self) -> list[float] | None:
        """The step scales the last step used when every tensor had a gradient (host values)."""
        return self.state.scales if self.state is not None else None

    def log_scales(self) -> Tensor | None:
        """The integrated log step scales (one per row, before the schedule); ``None`` before a step."""
        return self.state.rows.log_scale if self.state is not None else None

    def row_figures(self, rows: int, progress: float | None) -> dict[str, list[float]]:
        """Per row, for logging (syncs): ``scale`` (schedule included), ``signal``, ``hidden_norm``,
        ``gate``; rows the controller has not seen yet read 1, 0, 0, 0."""
        out = {"scale": [1.0] * rows, "signal": [0.0] * rows, "hidden_norm": [0.0] * rows, "gate": [0.0] * rows}
        ctl = self.state
        if ctl is None:
            return out
        known = ctl.num_rows
        out["scale"][:known] = ctl.scales if ctl.scales is not None and len(ctl.scales) == known else \
            (ctl.rows.log_scale + self.network.schedule(progress)).exp().tolist()
        out["signal"][:known] = ctl.rows.signal.tolist()
        out["hidden_norm"][:known] = torch.linalg.vector_norm(ctl.rows.hidden, dim=1).tolist()
        out["gate"][:known] = ctl.rows.gate_prev.tolist()
        return out

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Network weights, rows and knob state, the exploration generator, the reset count."""
        return {"controller": self.network.full_state_dict(),
                "ctl": None if self.state is None else self.state.to_dict(),
                "generator": self.generator.get_state(),
                "controller_resets": self.resets}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        self.network.load_full_state_dict(state["controller"])
        self.generator.set_state(state["generator"])
        self.resets = state.get("controller_resets", 0)
        ctl = state["ctl"]
        if ctl is not None:
            device = device if device is not None else torch.device("cpu")
            ctl = ControllerState.from_dict(ctl, device)
            self.network.to(device)
        self.state = ctl
        self._sampler = None
        self._tunables = {}

