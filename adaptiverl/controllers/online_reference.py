"""A slow, obviously-correct twin of the Online controller's features and learning signal.

:class:`~adaptiverl.controllers.online.OnlineController` computes every row's statistics at once
on the device (batched ``(T, k)`` matrices, float64 row sums, masks instead of branches). This
module computes the same numbers one tensor at a time with Python floats, straight from the
definitions in the controller's docstrings, so that ``tests/test_online_reference.py`` can check
the fast path against it (as schedule_free keeps a reference twin of its algorithm). It is not
used in training.

:func:`reference_features` takes the step's tensors, the controller's state before the step and
the scalar signals, and returns, per row, the feature row (``FEATURE_NAMES`` order), the
learning signal, the gate, the brake and the reward path's change of log scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from adaptiverl.controllers.online import (
    ANNEAL_FREEZE_FROM,
    BRAKE_COS,
    BRAKE_NOISE,
    BRAKE_SPIKE_RATIO,
    BRAKE_SPIKE_Z,
    DRIFT_RANGE,
    FAST_BETA,
    FEATURE_NAMES,
    REWARD_CLIP,
    SLOW_BETA,
    TSTAT_SCALE,
    ControllerState,
    OnlineController,
)
from adaptiverl.signals.stats import Signals
from adaptiverl.signals.tensor_stats import EPS, UPDATE_RATIO_DECADES


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _unit(x: float, scale: float) -> float:
    return 0.0 if math.isnan(x) else _clip(x / scale, -1.0, 1.0)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def _cos(a: Sequence[float], b: Sequence[float]) -> float:
    """``a . b / (|a| |b|)`` in [-1, 1]; 0 when either vector is zero."""
    norms = _dot(a, a) * _dot(b, b)
    return _clip(_dot(a, b) / math.sqrt(norms), -1.0, 1.0) if norms > 0 else 0.0


def sample(t: Tensor, layout: tuple[int, int, int]) -> list[float]:
    """The fixed sample of one tensor: ``blocks`` runs of ``length`` elements, ``stride`` apart."""
    blocks, length, stride = layout
    flat = t.detach().reshape(-1).double().tolist()
    return [flat[b * stride + j] for b in range(blocks) for j in range(length)]


def _tstat(mean: float, sq: float, value: float, count: float, active: bool, beta: float) -> tuple[float, float, float]:
    """EMAs of x and x^2 (updated where ``active``) and the t-statistic of the bias-corrected mean."""
    if active:
        mean, sq = beta * mean + (1 - beta) * value, beta * sq + (1 - beta) * value * value
    correction = max(1.0 - beta ** count, EPS)
    m_hat, sq_hat = mean / correction, sq / correction
    var = max(sq_hat - m_hat * m_hat, 0.0)
    n_eff = _clip(count, 1.0, (1 + beta) / (1 - beta))
    t = m_hat / math.sqrt(var / n_eff + 1e-8) if count >= 3 else 0.0
    return mean, sq, _clip(t, -30.0, 30.0)


def _gate(t: float, tau: float) -> float:
    tau = max(tau, EPS)
    return _clip((abs(t) - tau) / tau, 0.0, 1.0)


def _loss_spike(signals: Signals) -> bool:
    loss = signals.loss
    return (loss.count >= 5 and loss.z_score > BRAKE_SPIKE_Z and loss.last is not None
            and loss.prev_ema is not None and min(loss.values) > 0
            and loss.last > BRAKE_SPIKE_RATIO * loss.prev_ema)


def reference_features(controller: OnlineController, signals: Signals, grads: list[Tensor],
                       params: list[Tensor], memories: list[Tensor | None], maximize: list[bool],
                       tunables: list[dict[str, float]], progress: float | None) -> list[dict[str, Any]]:
    """Per row (every tensor has a gradient): ``features``, ``signal``, ``gate``, ``brake``, ``reward_step``
    and ``knob_cos`` (the knob rules' cosines: ``momentum`` ``cos(g_t, m_{t-1})``, ``beta1``
    ``cos(g_t, m_{t-1} - g_{t-1})``, ``weight_decay`` ``cos(g_t, theta_{t-1})``).

    ``controller`` is read, never changed: its state before the step (previous samples, EMAs,
    log scales, exploration noise) and its network's bounds and schedule. ``tunables[i]`` holds
    row i's ``hypergrad_weight`` and ``reward_weight``.
    """
    ctl: ControllerState | None = controller.state
    assert ctl is not None and len(grads) == ctl.num_rows
    net = controller.network
    rows = ctl.rows
    reward = signals.reward
    new_reward = reward.count > ctl.last_reward_count
    r = _clip(reward.delta / (reward.std + 1e-8), -REWARD_CLIP, REWARD_CLIP) if new_reward else 0.0
    spike = _loss_spike(signals)
    tau = controller.snr_threshold
    globals_ = [_unit(signals.loss.trend_tstat, TSTAT_SCALE), _unit(signals.reward.trend_tstat, TSTAT_SCALE),
                0.0 if progress is None else progress, 0.0 if progress is None else 1.0]
    out = []
    for i, layout in enumerate(ctl.layout):
        sign = -1.0 if maximize[int(ctl.group_of_row[i])] else 1.0
        g = [sign * _finite(x) for x in sample(grads[i], layout)]
        p = sample(params[i], layout)
        memory = memories[i]
        m = [_finite(x) for x in sample(memory, layout)] if memory is not None else [0.0] * len(g)
        n = len(g)
        p_prev, m_prev, g_prev = (rows.P_prev[i, :n].double().tolist(), rows.M_prev[i, :n].double().tolist(),
                                  rows.G_prev[i, :n].double().tolist())
        has_prev = bool(rows.has_prev[i])
        u = [_finite(a - b) for a, b in zip(p, p_prev, strict=True)]
        p = [_finite(x) for x in p]

        hyper_cos = _cos(g, u) if has_prev else 0.0
        rms_g = math.sqrt(_dot(g, g) / n)
        rms_g_prev = math.sqrt(float(rows.grad_sq[i]))
        drift = math.log((rms_g + EPS) / (rms_g_prev + EPS)) if has_prev and rms_g > 0 and rms_g_prev > 0 else 0.0
        if has_prev:
            rms_u, rms_p = math.sqrt(_dot(u, u) / n), math.sqrt(_dot(p, p) / n)
            ratio = _clip(math.log10(rms_u / (rms_p + EPS) + EPS), -12.0, 2.0) / UPDATE_RATIO_DECADES
        else:
            ratio = -1.0

        count = float(rows.cos_count[i]) + has_prev
        _, _, t_fast = _tstat(float(rows.cos_fast[i]), float(rows.cos_sq_fast[i]), hyper_cos, count, has_prev,
                              FAST_BETA)
        _, _, t_slow = _tstat(float(rows.cos_slow[i]), float(rows.cos_sq_slow[i]), hyper_cos, count, has_prev,
                              SLOW_BETA)
        weight, reward_weight = tunables[i]["hypergrad_weight"], tunables[i]["reward_weight"]
        gate = min(weight * _gate(max(abs(t_fast), abs(t_slow)), tau), 1.0)
        if progress is not None and progress >= ANNEAL_FREEZE_FROM:
            gate *= net.anneal(progress)
        noise = float(rows.noise[i])
        fd = r * noise if new_reward else 0.0
        signal = weight * _unit(t_fast, TSTAT_SCALE) * gate - (reward_weight * fd if new_reward else 0.0)
        active = new_reward and noise != 0
        _, _, t_reward = _tstat(float(rows.reward_fd[i]), float(rows.reward_fd_sq[i]), fd,
                                float(rows.reward_count[i]) + active, active, FAST_BETA)
        reward_step = net.max_log_step * reward_weight * math.tanh(t_reward / TSTAT_SCALE) * _gate(t_reward, tau)

        threshold = max(BRAKE_NOISE / math.sqrt(n), BRAKE_COS)
        brake = _clip((hyper_cos - threshold) / (1.0 - threshold), 0.0, 1.0) if has_prev and threshold < 1 else 0.0
        brake = (1.0 if spike else brake) * min(weight, 1.0)

        per_row = [hyper_cos, _unit(t_fast, TSTAT_SCALE), _unit(t_slow, TSTAT_SCALE), _cos(g, m),
                   _unit(ratio, 1.0), _unit(drift, DRIFT_RANGE), float(rows.log_scale[i]) / net.log_hi]
        features = per_row + globals_
        assert len(features) == len(FEATURE_NAMES)
        knob_cos = {"momentum": _cos(g, m_prev), "beta1": _cos(g, [a - b for a, b in zip(m_prev, g_prev, strict=True)]),
                    "weight_decay": _cos(g, p_prev)}
        out.append({"features": features, "signal": signal, "gate": gate, "brake": brake,
                    "reward_step": reward_step, "knob_cos": knob_cos})
    return out
