"""Shared core of the Online optimizers: features, hypergradients, controller, knobs, state.

See :mod:`adaptiverl.optim.online` for the user-facing classes and the math. This
module holds everything the three algorithms share; each algorithm only supplies its
lazy state, its base knob values and two kernels with the same signature (a fast
one and a readable single-tensor reference).

Per step, for the T parameter tensors (rows):

1. Gradient check (``finite_check``): a non-finite gradient skips the whole step.
2. A fixed sample of at most ``k = feature_sample_size`` elements per tensor (evenly spaced blocks),
   gathered into ``(T, k)`` matrices: gradient ``G``, parameter ``P`` and the
   algorithm's memory ``M`` (momentum buffer / ``exp_avg``). One batched pass; the
   last update is ``U = P - P_prev``, the change realised by the previous step
   whatever the algorithm (and whatever a scheduler did to the lr).
3. Features (T, 7), hypergradient signals, one controller update and one batched
   GRU call; group knobs; one ``tolist()`` of the scales and knob values (the only
   host sync besides the finite check).
4. The algorithm's kernel with ``lr_i = group["lr"] * s_i`` and the effective knobs.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from adaptiverl.controllers.gru import GRUController
from adaptiverl.signals.stats import Signals

_EPS = 1e-12
FEATURE_NAMES = ("hypergrad_cos", "grad_memory_cos", "log_update_ratio", "grad_scale_drift",
                 "log_scale", "loss_trend", "reward_trend")
_FINITE_CHECKS = ("full", "sample", "off")




def _rowwise_cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of each row pair; 0 where either row is zero."""
    dot = (a * b).sum(1)
    norms = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    return torch.where(norms > 0, dot / norms.clamp_min(_EPS), torch.zeros_like(dot))


class OnlineOptimizer(Optimizer):
    """Base class: a torch optimizer whose per-tensor lr and per-group knobs adapt online.

    Subclasses define ``KNOBS`` (names of the group knobs, in the order of
    ``_base_knobs``), ``_init_state``, ``_memory`` and the two kernels.
    """

    KNOBS: tuple[str, ...] = ()
    #: knobs driven by the grad-scale drift rule instead of a one-step hypergradient
    DRIFT_KNOBS: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], *, adapt: bool,
                 adapt_knobs: bool, scale_bounds: tuple[float, float], hidden_size: int,
                 meta_lr: float, feature_sample_size: int, hypergrad_weight: float,
                 reward_weight: float, explore_std: float, knob_lr: float,
                 knob_scale_bounds: tuple[float, float], drift_gain: float,
                 knob_bounds: dict[str, tuple[float, float]], finite_check: str,
                 signal_beta: float, signal_window: int, seed: int) -> None:
        if feature_sample_size is None or int(feature_sample_size) < 1:
            raise ValueError(f"feature_sample_size must be an int >= 1, got {feature_sample_size}")
        if finite_check not in _FINITE_CHECKS:
            raise ValueError(f"finite_check must be one of {_FINITE_CHECKS}, got {finite_check!r}")
        for name, value in (("hypergrad_weight", hypergrad_weight), ("reward_weight", reward_weight),
                            ("explore_std", explore_std), ("knob_lr", knob_lr), ("drift_gain", drift_gain)):
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        kl, kh = (float(v) for v in knob_scale_bounds)
        if not 0.0 < kl <= 1.0 <= kh:
            raise ValueError(f"knob_scale_bounds must satisfy 0 < low <= 1 <= high, got {knob_scale_bounds}")
        super().__init__(params, defaults)
        self.adapt = bool(adapt)
        self.adapt_knobs = bool(adapt_knobs)
        self.feature_sample_size = int(feature_sample_size)
        self.hypergrad_weight = float(hypergrad_weight)
        self.reward_weight = float(reward_weight)
        self.explore_std = float(explore_std)
        self.knob_lr = float(knob_lr)
        self.knob_log_bounds = (math.log(kl), math.log(kh))
        self.drift_gain = float(drift_gain)
        self.knob_bounds = {k: knob_bounds[k] for k in self.KNOBS}
        self.finite_check = finite_check
        self.signals = Signals(beta=signal_beta, window=signal_window)
        self.controller = GRUController(len(FEATURE_NAMES), hidden_size=hidden_size,
                                        scale_bounds=scale_bounds, meta_lr=meta_lr, seed=seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.skipped_steps = 0
        self._ctl: dict[str, Any] | None = None
        self._sample_cache: dict[Any, Any] = {}

    # ------------------------------------------------------------------ API
    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> dict[str, bool]:
        """Feed scalar signals (floats or 0-d tensors); non-finite ones are ignored with one warning."""
        return self.signals.observe(loss=loss, reward=reward, **metrics)

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
        return group.get("foreach") is False or group.get("fused") is False

    # ------------------------------------------------------------ rows
    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _ensure_controller_state(self, device: torch.device) -> dict[str, Any]:
        params = self._all_params()
        rows = len(params)
        ctl = self._ctl
        if ctl is not None and ctl["rows"] == rows:
            return ctl
        layout = [self._row_layout(p.numel()) for p in params]
        counts = [b * length for b, length, _ in layout]
        width = max(counts)
        group_of_row = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]
        new = {
            "rows": rows, "width": width, "layout": layout,
            "counts": torch.tensor([max(c, 1) for c in counts], dtype=torch.float32, device=device),
            "group_of_row": torch.tensor(group_of_row, dtype=torch.long, device=device),
            "P_prev": torch.zeros(rows, width, device=device),
            "G_prev": torch.zeros(rows, width, device=device),
            "M_prev": torch.zeros(rows, width, device=device),
            "has_prev": torch.zeros(rows, dtype=torch.bool, device=device),
            "x_prev": torch.zeros(rows, len(FEATURE_NAMES), device=device),
            "h_in_prev": self.controller.initial_hidden(rows, device),
            "hidden": self.controller.initial_hidden(rows, device),
            "log_scale": torch.zeros(rows, device=device),
            "noise": torch.zeros(rows, device=device),
            "grad_signal": torch.zeros(rows, device=device),
            # float64: knob values must round-trip exactly (0.9 stays 0.9, not 0.8999999762)
            "knob_log_mult": torch.zeros(len(self.param_groups), len(self.KNOBS), device=device,
                                         dtype=torch.float64),
            "drift_ema": torch.zeros(len(self.param_groups), device=device, dtype=torch.float64),
            "seen": [False] * rows,  # host copy of has_prev
            "last_reward_count": 0,
            "steps": 0,
        }
        if ctl is not None:  # param groups were added: keep what the old rows learned
            old = ctl["rows"]
            for key in ("P_prev", "G_prev", "M_prev"):
                w = min(ctl[key].shape[1], width)
                new[key][:old, :w] = ctl[key][:, :w]
            for key in ("has_prev", "x_prev", "h_in_prev", "hidden", "log_scale", "noise", "grad_signal"):
                new[key][:old] = ctl[key]
            g_old = ctl["knob_log_mult"].shape[0]
            new["knob_log_mult"][:g_old] = ctl["knob_log_mult"]
            new["drift_ema"][:g_old] = ctl["drift_ema"]
            new["seen"][:old] = ctl["seen"]
            new["last_reward_count"] = ctl["last_reward_count"]
            new["steps"] = ctl["steps"]
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

    def _sample(self, kind: str, tensors: list[Tensor], rows: list[int], ctl: dict[str, Any],
                device: torch.device, persistent: bool) -> Tensor:
        """``(len(rows), width)`` float32 matrix of the tensors' fixed samples, zero-padded.

        One ``as_strided`` view per tensor and one ``_foreach_copy_`` for all of them.
        ``persistent`` tensors (parameters, optimizer buffers) keep their views between
        steps while their storages are unchanged. With every row present, the output is
        one of two preallocated buffers, never the one ``ctl[kind + "_prev"]`` holds.
        """
        layout, width = ctl["layout"], ctl["width"]
        cache = self._sample_cache
        if len(rows) == ctl["rows"]:
            prev = ctl[kind + "_prev"]
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
        if not batch["params"]:
            return loss
        if not self._gradients_finite(batch):
            self.skipped_steps += 1
            warnings.warn(
                f"{type(self).__name__}: non-finite gradient, step skipped (parameters, optimizer "
                f"and controller state unchanged; {self.skipped_steps} skipped so far)",
                RuntimeWarning, stacklevel=4)
            return loss
        for group, params, states in zip(self.param_groups, batch["by_group"], batch["states"], strict=True):
            for p, state in zip(params, states, strict=True):
                if not state:
                    if torch.is_complex(p):
                        raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
                    state.update(self._init_state(p, group))
        if self.adapt:
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
            lrs = [group["lr"] * s for s in scales[offset:offset + n]]
            offset += n
            knobs = dict(zip(self.KNOBS, knob_values[gi], strict=True))
            kernel = self._kernel_reference if self._use_reference(group) else self._kernel_fast
            kernel(group, params, grads, states, lrs, knobs)
        return loss

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
                "grads_by_group": grads_by_group, "states": states}

    def _gradients_finite(self, batch: dict[str, Any]) -> bool:
        if self.finite_check == "off":
            return True
        grads = batch["grads"]
        if self.finite_check == "full":
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
            return not bool(found.item())
        device = grads[0].device
        ctl = self._ensure_controller_state(device)
        sample = self._sample("G", grads, batch["rows"], ctl, device, persistent=False)
        batch["G_sample"] = sample
        return bool(torch.isfinite(sample).all().item())

    # ------------------------------------------------------- adaptation
    def _adapt(self, batch: dict[str, Any]) -> tuple[list[float], list[list[float]]]:
        device = batch["grads"][0].device
        ctl = self._ensure_controller_state(device)
        rows_list = batch["rows"]
        all_active = len(rows_list) == ctl["rows"]
        rows = None if all_active else torch.tensor(rows_list, dtype=torch.long, device=device)
        G = batch.get("G_sample")
        if G is None:
            G = self._sample("G", batch["grads"], rows_list, ctl, device, persistent=False)
        P = self._sample("P", batch["params"], rows_list, ctl, device, persistent=True)
        mems = [self._memory(s) for states in batch["states"] for s in states]
        M = self._sample("M", [m if m is not None else p for m, p in zip(mems, batch["params"], strict=True)],
                         rows_list, ctl, device, persistent=True)
        missing = [i for i, m in enumerate(mems) if m is None]
        if missing:
            M[missing] = 0.0
        # maximize: the quantity being minimised is -f, whose gradient is -grad.
        signs = torch.tensor([-1.0 if g["maximize"] else 1.0 for g in self.param_groups], device=device)
        group_of_row = ctl["group_of_row"] if all_active else ctl["group_of_row"][rows]
        G = G * signs[group_of_row].unsqueeze(1)

        def take(name: str) -> Tensor:
            return ctl[name] if all_active else ctl[name][rows]

        P_prev, G_prev, M_prev, has_prev = take("P_prev"), take("G_prev"), take("M_prev"), take("has_prev")
        counts = take("counts")
        U = P - P_prev
        hyper_cos = torch.where(has_prev, _rowwise_cos(G, U), torch.zeros_like(counts))
        rms_g = torch.linalg.vector_norm(G, dim=1) / counts.sqrt()
        rms_g_prev = torch.linalg.vector_norm(G_prev, dim=1) / counts.sqrt()
        rms_u = torch.linalg.vector_norm(U, dim=1) / counts.sqrt()
        rms_p = torch.linalg.vector_norm(P, dim=1) / counts.sqrt()
        drift = torch.where(has_prev & (rms_g_prev > 0) & (rms_g > 0),
                            torch.log((rms_g + _EPS) / (rms_g_prev + _EPS)), torch.zeros_like(rms_g))
        update_ratio = torch.where(has_prev, torch.log10(rms_u / (rms_p + _EPS) + _EPS).clamp(-12.0, 2.0) / 6.0,
                                   torch.full_like(rms_g, -1.0))
        log_scale_prev = take("log_scale")
        loss_trend = math.tanh(100.0 * self.signals.loss.trend)
        reward_trend = math.tanh(100.0 * self.signals.reward.trend)
        x = torch.stack([
            hyper_cos,
            _rowwise_cos(G, M),
            update_ratio,
            drift.clamp(-3.0, 3.0) / 3.0,
            log_scale_prev / self.controller.log_hi,
            torch.full_like(rms_g, loss_trend),
            torch.full_like(rms_g, reward_trend),
        ], dim=1)

        # dL/dlog s_i for the scale used at the previous step (Baydin et al. 2018), plus the
        # reward finite difference along the exploration noise of the previous step.
        signal = self.hypergrad_weight * hyper_cos
        reward = self.signals.reward
        if reward.count > ctl["last_reward_count"] and self.explore_std > 0 and self.reward_weight > 0:
            r = max(-3.0, min(3.0, reward.delta / (reward.std + 1e-8)))
            signal = signal - self.reward_weight * r * take("noise")
        ctl["last_reward_count"] = reward.count

        # Learn when some active row was stepped before (decided on the host: no sync).
        seen = ctl["seen"]
        if any(seen) if all_active else any(seen[r] for r in rows_list):
            learn_weight = has_prev.float()
            if all_active:
                full_signal, full_weight = signal, learn_weight
            else:
                full_signal = torch.zeros(ctl["rows"], device=device)
                full_weight = torch.zeros(ctl["rows"], device=device)
                full_signal[rows] = signal
                full_weight[rows] = learn_weight
            self.controller.learn(ctl["x_prev"], ctl["h_in_prev"], full_signal, full_weight)
        if all_active:
            if not all(seen):
                ctl["seen"] = [True] * ctl["rows"]
        else:
            for r in rows_list:
                seen[r] = True

        h_in = take("hidden")
        log_scale, h_new = self.controller(x, h_in)
        log_scale = log_scale.detach()
        h_new = h_new.detach()
        if reward.count > 0 and self.explore_std > 0:
            noise = torch.randn(len(rows_list), generator=self.generator).to(device)
        else:
            noise = torch.zeros(len(rows_list), device=device)
        log_lo, log_hi = self.controller.log_lo, self.controller.log_hi
        used = (log_scale + self.explore_std * noise).clamp(log_lo, log_hi)

        knob_values = self._knob_values(ctl, G, P, G_prev, M_prev, P_prev, has_prev, drift, group_of_row)

        def put(name: str, value: Tensor) -> None:
            if all_active:
                ctl[name] = value
            else:
                ctl[name][rows] = value

        put("P_prev", P)
        put("G_prev", G)
        put("M_prev", M)
        put("has_prev", torch.ones_like(has_prev))
        put("x_prev", x)
        put("h_in_prev", h_in)
        put("hidden", h_new)
        put("log_scale", log_scale)
        put("noise", noise)
        put("grad_signal", signal)
        ctl["steps"] += 1
        packed = torch.cat([used.exp().double(), knob_values.flatten()]).tolist()
        n = len(rows_list)
        scales, flat = packed[:n], packed[n:]
        nk = len(self.KNOBS)
        knobs = [flat[i * nk:(i + 1) * nk] for i in range(len(self.param_groups))]
        ctl["knob_values"] = knobs
        return scales, knobs

    def _knob_values(self, ctl: dict[str, Any], G: Tensor, P: Tensor, G_prev: Tensor, M_prev: Tensor,
                     P_prev: Tensor, has_prev: Tensor, drift: Tensor, group_of_row: Tensor) -> Tensor:
        """Effective knob values (groups, knobs), clamped to their absolute bounds.

        One-step hypergradients, normalised to cosines and averaged over a group's tensors,
        drive ``log m`` (the knob's multiplier) by ``knob_lr * cos`` per step, with
        ``m`` inside ``knob_scale_bounds``:

        * momentum (SGD, RMSprop): ``theta_{t+1} = theta_t - lr (mu b_{t-1} + ...)``, so
          ``dL/dmu = -lr g_{t+1} . b_{t-1}``: grow mu while the new gradient agrees with
          the old buffer.
        * beta1 (Adam): ``m_t = b1 m_{t-1} + (1 - b1) g_t`` gives ``dm_t/db1 = m_{t-1} - g_t``
          and ``dL/db1 ~ -g_{t+1} . (m_{t-1} - g_t)`` (bias correction ignored).
        * weight decay (decoupled or L2): ``dL/dlambda ~ -lr g_{t+1} . theta_t``.

        beta2 (Adam) and alpha (RMSprop) follow a rule instead: their averaging horizon
        ``1 / (1 - beta)`` shortens when the gradient scale drifts,
        ``1 - beta_eff = (1 - beta) * (1 + drift_gain * d)`` with ``d`` an EMA (0.9) of the
        group mean of ``|log(rms g_t / rms g_{t-1})|``.
        """
        n_groups = len(self.param_groups)
        base = torch.tensor([self._base_knobs(g) for g in self.param_groups], device=G.device,
                            dtype=torch.float64).reshape(n_groups, len(self.KNOBS))
        if not self.adapt_knobs or not self.KNOBS:
            return base
        counts = torch.zeros(n_groups, device=G.device).index_add_(0, group_of_row, has_prev.float())
        denom = counts.clamp_min(1.0)

        def group_mean(per_row: Tensor) -> Tensor:
            return torch.zeros(n_groups, device=G.device).index_add_(0, group_of_row, per_row) / denom

        zero = torch.zeros_like(drift)
        signals = {
            "momentum": _rowwise_cos(G, M_prev),
            "beta1": _rowwise_cos(G, M_prev - G_prev),
            "weight_decay": _rowwise_cos(G, P_prev),
        }
        mult = ctl["knob_log_mult"]
        lo, hi = self.knob_log_bounds
        step = torch.stack([group_mean(torch.where(has_prev, signals[k], zero)) if k in signals
                            else torch.zeros(n_groups, device=G.device) for k in self.KNOBS], dim=1).double()
        active = (counts > 0).float().unsqueeze(1)
        ctl["knob_log_mult"] = (mult + self.knob_lr * step * active).clamp(lo, hi)
        ctl["drift_ema"] = torch.where(counts > 0, 0.9 * ctl["drift_ema"] + 0.1 * group_mean(drift.abs()).double(),
                                       ctl["drift_ema"])
        values = base * ctl["knob_log_mult"].exp()
        cols = []
        for j, name in enumerate(self.KNOBS):
            col = values[:, j]
            if name in self.DRIFT_KNOBS:
                col = 1.0 - (1.0 - base[:, j]) * (1.0 + self.drift_gain * ctl["drift_ema"])
            lo_b, hi_b = self.knob_bounds[name]
            cols.append(torch.where(base[:, j] == 0, base[:, j], col.clamp(lo_b, hi_b)))
        return torch.stack(cols, dim=1)

    # ------------------------------------------------------------ logging
    def effective_knobs(self) -> list[dict[str, float]]:
        """The knob values the last step used, per group (the base values before any step)."""
        last = self._ctl.get("knob_values") if self._ctl is not None else None
        out = []
        for gi, group in enumerate(self.param_groups):
            values = last[gi] if last is not None and gi < len(last) else self._base_knobs(group)
            out.append(dict(zip(self.KNOBS, values, strict=True)))
        return out

    def dynamics(self) -> dict[str, Any]:
        """Summary, per-group and per-tensor figures for logging (not for the hot path)."""
        params = self._all_params()
        ctl = self._ctl
        rows = len(params)
        scales, grad_signal, hidden_norm = [1.0] * rows, [0.0] * rows, [0.0] * rows
        if ctl is not None:  # rows added by add_param_group since the last step keep the defaults
            known = ctl["rows"]
            scales[:known] = ctl["log_scale"].exp().tolist()
            grad_signal[:known] = ctl["grad_signal"].tolist()
            hidden_norm[:known] = torch.linalg.vector_norm(ctl["hidden"], dim=1).tolist()
        first, second = self._moment_stats(params)
        knobs = self.effective_knobs()
        tensors, groups = [], []
        row = 0
        for gi, group in enumerate(self.param_groups):
            lrs = []
            for _ in group["params"]:
                lr = group["lr"] * scales[row]
                lrs.append(lr)
                tensors.append({"group": gi, "lr": lr, "delta_scale": scales[row],
                                "grad_signal": grad_signal[row], "hidden_norm": hidden_norm[row],
                                "exp_avg_norm": first[row], "exp_avg_sq_mean": second[row]})
                row += 1
            groups.append({"lr": sum(lrs) / max(1, len(lrs)), "base_lr": group["lr"], **knobs[gi],
                           **self._group_extras(knobs[gi])})
        summary: dict[str, float] = {}
        if groups:
            for key in groups[0]:
                summary[key] = sum(g[key] for g in groups) / len(groups)
        summary.update({
            "delta_scale_mean": sum(scales) / max(1, rows),
            "delta_scale_min": min(scales, default=1.0),
            "delta_scale_max": max(scales, default=1.0),
            "grad_signal_mean": sum(grad_signal) / max(1, rows),
            "hidden_norm_mean": sum(hidden_norm) / max(1, rows),
            "loss_trend": self.signals.loss.trend,
            "reward_trend": self.signals.reward.trend,
            "skipped_steps": float(self.skipped_steps),
        })
        return {"summary": summary, "groups": groups, "tensors": tensors}

    def _group_extras(self, knobs: dict[str, float]) -> dict[str, float]:
        return {}

    def _moment_stats(self, params: list[Tensor]) -> tuple[list[float], list[float]]:
        """Per tensor: norm of the first-moment buffer and mean of the second (0 where absent)."""
        first = [0.0] * len(params)
        second = [0.0] * len(params)
        idx_m, ms, idx_v, vs = [], [], [], []
        for i, p in enumerate(params):
            state = self.state.get(p, {})
            m = self._memory(state) if state else None
            if m is not None:
                idx_m.append(i)
                ms.append(m)
            v = state.get("exp_avg_sq", state.get("square_avg")) if state else None
            if v is not None:
                idx_v.append(i)
                vs.append(v)
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
        step = self._ctl["steps"] if step is None and self._ctl is not None else (step or 0)
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
        ctl = None
        if self._ctl is not None:
            ctl = {k: (v.clone() if isinstance(v, Tensor) else copy.deepcopy(v)) for k, v in self._ctl.items()}
        out["online"] = {
            "controller": self.controller.full_state_dict(),
            "ctl": ctl,
            "signals": self.signals.state_dict(),
            "generator": self.generator.get_state(),
            "skipped_steps": self.skipped_steps,
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
        ctl = online["ctl"]
        if ctl is not None:
            device = next(iter(self._all_params())).device
            ctl = {k: (v.to(device, copy=True) if isinstance(v, Tensor) else copy.deepcopy(v))
                   for k, v in ctl.items()}
            self.controller.to(device)
        self._ctl = ctl
        self._sample_cache = {}
