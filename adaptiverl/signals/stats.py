"""Running statistics of scalar training signals (loss, reward, grad norm, ...).

Computed once per step and read by every controller. Pure Python floats: a
signal is one scalar per step, so there is nothing to vectorise, and keeping the
statistics on the host makes them identical on every distributed rank that is
fed the same (all-reduced) values.

Definitions, for a stream x_1..x_t:

* EMA: ``m_t = beta * m_{t-1} + (1 - beta) * x_t`` with ``m_1 = x_1`` (no bias
  correction is needed because the first value seeds the average).
* Windowed mean and unbiased variance over the last ``window`` values.
* Trend: the least-squares slope of the window against the step index,
  divided by ``|mean| + eps`` so that it reads as "relative change per step"
  whatever the scale of the loss. Negative trend of a loss = improving.
* Relative improvement: ``(prev_ema - ema) / (|prev_ema| + eps)`` (positive =
  the EMA went down), the quantity the seed schedulers compare with a
  threshold.
* z-score of the newest value against the window before it, used for spike
  detection (``z > spike_threshold``).

Huge finite values (a loss of 1e200, a reward of 1e308) are statistics like any
other. Sums are formed on the values divided by a power of two ``s`` near the
largest magnitude involved (exact, so the squares of the scaled values cannot
overflow) and the results multiplied back; the sums are ``math.fsum`` (correctly
rounded), so ``[2, 1e200, 3, -1e200]`` has mean 1.25, not 0. A statistic whose
true value lies beyond the float range (the variance of ``[1e200, -1e200]``)
reads as ``inf``; one that is representable (its std, the mean, the trend) is
finite and right. A Python int too large for a float counts as non-finite.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from typing import Any

import torch

_EPS = 1e-12


def to_float(value: Any, name: str = "value") -> float:
    """A Python float from a float, int, numpy scalar or 0-d (or 1-element) real tensor; a
    TypeError or ValueError naming ``name`` for anything else (a complex number, a list, a string)."""
    what = f"{name} must be a real scalar (a float, an int or a one-element tensor)"
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{what}, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        return float(value.detach().cpu().item())
    if isinstance(value, (str, bytes, complex)):
        raise TypeError(f"{what}, got {type(value).__name__} {value!r:.40}")
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range: infinite as a float
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        raise TypeError(f"{what}, got {type(value).__name__}") from None


def _pow2_scale(*magnitudes: float) -> float:
    """A power of two ``s`` with ``max(magnitudes) / s`` in [1, 2) (1 if all are 0).

    Values divided by ``s`` are exact and at most 2 in magnitude, so their sums of squares cannot
    overflow, and results multiplied back by ``s`` are exact up to the float range.
    """
    top = max(magnitudes)
    return math.ldexp(1.0, math.frexp(top)[1] - 1) if top > 0.0 else 1.0


def _scaled(values: deque[float] | list[float], *extra: float) -> tuple[float, list[float]]:
    """``(s, [v / s for v in values])`` for the power of two ``s`` of :func:`_pow2_scale` over
    ``values`` and ``extra``."""
    s = _pow2_scale(*(abs(v) for v in values), *(abs(v) for v in extra))
    return s, [v / s for v in values]


def _scaled_moments(values: deque[float] | list[float], *extra: float) -> tuple[float, float, float]:
    """``(s, mean / s, variance / s**2)`` of non-empty ``values`` (unbiased variance, 0 for one
    value), for the ``s`` of :func:`_scaled`."""
    s, scaled = _scaled(values, *extra)
    n = len(scaled)
    mean = math.fsum(scaled) / n
    if n < 2:
        return s, mean, 0.0
    return s, mean, math.fsum((v - mean) ** 2 for v in scaled) / (n - 1)


class ScalarSignal:
    """EMA, windowed variance, trend and spike statistics of one scalar stream.

    Non-finite values (NaN, +-Inf) are never folded into the statistics: they
    are counted in ``rejected`` and warned about once per signal.
    """

    def __init__(self, name: str, beta: float = 0.9, window: int = 20,
                 spike_threshold: float = 3.0) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name}: beta must be in [0, 1), got {beta}")
        if window < 2:
            raise ValueError(f"{name}: window must be >= 2, got {window}")
        self.name = name
        self.beta = beta
        self.window = window
        self.spike_threshold = spike_threshold
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.rejected = 0
        self.last: float | None = None
        self.ema: float | None = None
        self.prev_ema: float | None = None
        self.z_score = 0.0
        self._values: deque[float] = deque(maxlen=self.window)
        self._warned = False

    # ---- updating -------------------------------------------------------
    def update(self, value: Any) -> bool:
        """Fold one value in. Returns False (and changes nothing) if it is not finite."""
        x = to_float(value, self.name)
        if not math.isfinite(x):
            self.rejected += 1
            if not self._warned:
                warnings.warn(
                    f"adaptiverl: non-finite {self.name} ({x}) ignored by the signal statistics; "
                    "further ones are counted in `rejected` without warning",
                    RuntimeWarning, stacklevel=3)
                self._warned = True
            return False
        if len(self._values) >= 2:
            s, mean, var = _scaled_moments(self._values, x)
            self.z_score = (x / s - mean) / math.sqrt(var + _EPS / s / s) if var > 0 else 0.0
        else:
            self.z_score = 0.0
        self.count += 1
        self.last = x
        self.prev_ema = self.ema
        self.ema = x if self.ema is None else self._ema_step(self.ema, x)
        self._values.append(x)
        return True

    def _ema_step(self, ema: float, x: float) -> float:
        """``beta * ema + (1 - beta) * x``; a convex combination of two finite values, so when
        rounding at the edge of the float range overflows it is clamped back between them."""
        new = self.beta * ema + (1.0 - self.beta) * x
        return new if math.isfinite(new) else min(max(new, min(ema, x)), max(ema, x))

    # ---- derived statistics --------------------------------------------
    @property
    def ready(self) -> bool:
        return self.count > 0

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(self._values)

    def _moments(self) -> tuple[float, float, float]:
        """``(s, mean / s, variance / s**2)`` of the window (all 0 but ``s`` when it is empty)."""
        return _scaled_moments(self._values) if self._values else (1.0, 0.0, 0.0)

    @property
    def mean(self) -> float:
        s, mean, _ = self._moments()
        return mean * s

    @property
    def variance(self) -> float:
        """Unbiased variance of the window (0 with fewer than two values; inf beyond the float range)."""
        s, _, var = self._moments()
        return var * s * s

    @property
    def std(self) -> float:
        s, _, var = self._moments()
        return math.sqrt(var) * s

    @property
    def rel_std(self) -> float:
        """Coefficient of variation of the window: std / (|mean| + eps)."""
        s, mean, var = self._moments()
        return math.sqrt(var) / (abs(mean) + 1e-8 / s)

    def _line_fit(self) -> tuple[float, float, float, float, float]:
        """Least-squares sums of the window against the step index, on the window divided by the
        power of two ``s``: (s, y mean / s, Sxx, Sxy / s, Syy / s**2)."""
        n = len(self._values)
        s, ys = _scaled(self._values)
        x_mean = (n - 1) / 2.0
        y_mean = math.fsum(ys) / n
        sxx = sum((i - x_mean) ** 2 for i in range(n))
        sxy = math.fsum((i - x_mean) * (y - y_mean) for i, y in enumerate(ys))
        syy = math.fsum((y - y_mean) ** 2 for y in ys)
        return s, y_mean, sxx, sxy, syy

    @property
    def trend(self) -> float:
        """Least-squares slope of the window per step, relative to |window mean|."""
        if len(self._values) < 2:
            return 0.0
        s, y_mean, sxx, sxy, _ = self._line_fit()
        return (sxy / sxx) / (abs(y_mean) + 1e-8 / s)

    @property
    def trend_tstat(self) -> float:
        """t-statistic of the window's least-squares slope: slope / standard error.

        The standard error uses the residual variance ``(Syy - Sxy^2 / Sxx) / (n - 2)``
        of the fit, so a clean ramp is highly significant whatever its steepness;
        0 with fewer than three values or a flat window, +-inf for an exact line.
        """
        n = len(self._values)
        if n < 3:
            return 0.0
        _, _, sxx, sxy, syy = self._line_fit()  # the ratio is the same for the scaled window
        if sxy == 0.0:
            return 0.0
        residual = max(syy - sxy * sxy / sxx, 0.0) / (n - 2)
        if residual == 0.0:
            return math.copysign(math.inf, sxy)
        return (sxy / sxx) / math.sqrt(residual / sxx)

    @property
    def rel_improvement(self) -> float:
        """(prev_ema - ema) / |prev_ema|: positive when the EMA went down this step."""
        if self.ema is None or self.prev_ema is None:
            return 0.0
        s = _pow2_scale(abs(self.prev_ema), abs(self.ema))
        return (self.prev_ema / s - self.ema / s) / (abs(self.prev_ema) / s + _EPS / s)

    @property
    def delta(self) -> float:
        """ema - prev_ema (0 before two values): positive when the EMA went up."""
        if self.ema is None or self.prev_ema is None:
            return 0.0
        return self.ema - self.prev_ema

    @property
    def is_spike(self) -> bool:
        return self.z_score > self.spike_threshold

    def summary(self) -> dict[str, float]:
        return {
            "last": self.last if self.last is not None else float("nan"),
            "ema": self.ema if self.ema is not None else float("nan"),
            "variance": self.variance,
            "trend": self.trend,
            "z_score": self.z_score,
        }

    # ---- persistence ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "beta": self.beta, "window": self.window,
            "spike_threshold": self.spike_threshold, "count": self.count,
            "rejected": self.rejected, "last": self.last, "ema": self.ema,
            "prev_ema": self.prev_ema, "z_score": self.z_score,
            "values": list(self._values), "warned": self._warned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = state["beta"]
        self.window = state["window"]
        self.spike_threshold = state["spike_threshold"]
        self.count = state["count"]
        self.rejected = state["rejected"]
        self.last = state["last"]
        self.ema = state["ema"]
        self.prev_ema = state["prev_ema"]
        self.z_score = state["z_score"]
        self._values = deque(state["values"], maxlen=self.window)
        self._warned = state["warned"]


class Signals:
    """The shared signal hub: ``observe(loss=..., reward=..., **metrics)``.

    ``loss`` and ``reward`` always exist (possibly empty); any other keyword
    creates a :class:`ScalarSignal` of that name on first use (``grad_norm``,
    ``accuracy``, ...). ``step`` counts calls to :meth:`observe` that carried at
    least one finite value.
    """

    def __init__(self, beta: float = 0.9, window: int = 20,
                 spike_threshold: float = 3.0, reward_beta: float | None = None) -> None:
        self.beta = beta
        self.window = window
        self.spike_threshold = spike_threshold
        self.reward_beta = beta if reward_beta is None else reward_beta
        self.step = 0
        self.signals: dict[str, ScalarSignal] = {}
        self.loss = self._get("loss")
        self.reward = self._get("reward")

    def _get(self, name: str) -> ScalarSignal:
        sig = self.signals.get(name)
        if sig is None:
            beta = self.reward_beta if name == "reward" else self.beta
            sig = ScalarSignal(name, beta=beta, window=self.window,
                               spike_threshold=self.spike_threshold)
            self.signals[name] = sig
        return sig

    def __getitem__(self, name: str) -> ScalarSignal:
        return self.signals[name]

    def __contains__(self, name: str) -> bool:
        return name in self.signals

    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> dict[str, bool]:
        """Feed any subset of scalars; ``None`` values are skipped.

        Returns ``{name: accepted}`` for every value given.
        """
        given = {"loss": loss, "reward": reward, **metrics}
        accepted = {name: self._get(name).update(v) for name, v in given.items() if v is not None}
        if any(accepted.values()):
            self.step += 1
        return accepted

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, sig in self.signals.items():
            if sig.ready:
                for key, val in sig.summary().items():
                    out[f"{name}_{key}"] = val
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "beta": self.beta, "window": self.window,
                "spike_threshold": self.spike_threshold, "reward_beta": self.reward_beta,
                "signals": {n: s.state_dict() for n, s in self.signals.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        for name, sig_state in state["signals"].items():
            self._get(name).load_state_dict(sig_state)
