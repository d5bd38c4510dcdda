"""CompositeReward: many reward components combined into one TRL reward function.

For a batch of ``n`` completions and components ``k = 1..K`` with raw values ``r_kj`` (``None``
allowed), the composite reward of sample ``j`` is::

    z_kj   = clip(normalize_k(r_kj))                       # per-component normalisation
    w_k    = weight_k * schedule_k(step) * m_k             # effective weight this step
    R_j    = (sum_{k in A_j} w_k z_kj) * (sum_k |w_k|) / (sum_{k in A_j} |w_k|)

where ``A_j`` is the set of components that answered for sample ``j`` (renormalising over them, so
a component's "no opinion" neither rewards nor punishes); ``R_j = None`` if none answered.

* ``normalize="zscore"``: ``(r - mu_k) / sqrt(var_k + eps)`` with the running mean and variance of
  every value component ``k`` produced so far (batches merged with Chan et al.'s parallel update,
  "Updating formulae and a pairwise algorithm for computing sample variances", 1979; the same
  running statistics as Stable-Baselines3's ``VecNormalize``). ``"minmax"``: ``(r - min_k) /
  (max_k - min_k)`` over the values seen so far. ``"none"``: raw values.
* ``schedule_k(step)``: a multiplier read from ``trainer_state.global_step`` (or the number of
  calls when there is no trainer): piecewise-linear points ``[[step, mult], ...]``, a linear ramp
  ``{"start": a, "end": b, "steps": N, "begin": 0}``, or any callable ``step -> mult``.
* ``m_k`` (``trend_temperature=T``): trend-driven weights in the style of Dynamic Weight Average
  (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019):
  ``m = K * softmax(-trend / T)`` where ``trend_k`` is the least-squares slope per step of
  component ``k``'s batch-mean reward over the last ``trend_window`` steps (from
  :attr:`adaptiverl.signals.ScalarSignal.trend`) divided by the running standard deviation of the
  component's values: improvement per step in units of the component's own spread, which stays
  finite for rewards whose mean is near zero (such as +1/-1 feedback). Components that stopped
  improving get more weight, fast-improving ones less; ``sum_k m_k = K``.

The z-score statistics are kept here rather than in :class:`~adaptiverl.signals.ScalarSignal`
because they are over samples (thousands per step), while a ``ScalarSignal`` is one scalar per step
with an O(window) update; the per-step trend does use ``ScalarSignal``.

A component that raises is re-run sample by sample to find the culprit: the error names the
component (index and name) and the sample index; with ``on_error="none"`` the failing samples get
``None`` and a warning is issued once per component. Wrong output length and non-finite values are
caught the same way.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adaptiverl.rewards.base import (
    TRL_CONTROL_KWARGS,
    MissingColumnError,
    checked_rewards,
    default_name,
)
from adaptiverl.signals import ScalarSignal
from adaptiverl.signals.stats import _pow2_scale

_EPS = 1e-8


class RewardComponentError(RuntimeError):
    """A component of a composite reward failed; the message names it and the sample."""


def is_async(fn: Any) -> bool:
    import functools
    import inspect

    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


class WeightSchedule:
    """A weight multiplier as a function of the training step (see the module docstring)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self._fn: Callable[[int], float] | None = None
        self._points: list[tuple[float, float]] = []
        if callable(spec):
            self._fn = spec
        elif isinstance(spec, dict):
            unknown = set(spec) - {"start", "end", "steps", "begin"}
            if unknown or not {"start", "end", "steps"} <= set(spec):
                raise ValueError(f"schedule dict needs keys start, end, steps (and optional begin); got "
                                 f"{sorted(spec)}")
            if not spec["steps"] > 0:
                raise ValueError(f"schedule: steps must be > 0, got {spec['steps']}")
            begin = float(spec.get("begin", 0))
            self._points = _finite_points(
                [(begin, float(spec["start"])), (begin + float(spec["steps"]), float(spec["end"]))], spec)
        elif isinstance(spec, (list, tuple)) and spec:
            try:
                points = [(float(s), float(m)) for s, m in spec]
            except (TypeError, ValueError):
                raise ValueError(f"schedule must be a list of [step, multiplier] pairs, got {spec!r}") from None
            if any(b[0] <= a[0] for a, b in zip(points, points[1:], strict=False)):
                raise ValueError(f"schedule steps must increase strictly, got {[p[0] for p in points]}")
            self._points = _finite_points(points, spec)
        else:
            raise ValueError(f"schedule must be [[step, mult], ...], {{start, end, steps}} or a callable, "
                             f"got {spec!r}")

    def __call__(self, step: int) -> float:
        if self._fn is not None:
            return float(self._fn(step))
        pts = self._points
        steps = [p[0] for p in pts]
        i = bisect.bisect_right(steps, step)
        if i == 0:
            return pts[0][1]
        if i == len(pts):
            return pts[-1][1]
        (s0, m0), (s1, m1) = pts[i - 1], pts[i]
        return m0 + (m1 - m0) * (step - s0) / (s1 - s0)


def _finite_points(points: list[tuple[float, float]], spec: Any) -> list[tuple[float, float]]:
    """``points`` if every step and multiplier is finite; a ValueError naming the bad one otherwise."""
    for step, mult in points:
        if not (math.isfinite(step) and math.isfinite(mult)):
            raise ValueError(f"schedule: steps and multipliers must be finite numbers, got step {step} "
                             f"with multiplier {mult} in {spec!r}")
    return points


@dataclass
class Component:
    """One reward function in a composite, with its base weight and optional schedule."""

    fn: Callable[..., Any]
    weight: float = 1.0
    schedule: Any = None
    name: str | None = None
    _schedule: WeightSchedule | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ValueError(f"component {self.name or self.fn!r} is not callable")
        if not math.isfinite(float(self.weight)):
            raise ValueError(f"weight must be finite, got {self.weight}")
        self.weight = float(self.weight)
        if self.name is None:
            self.name = default_name(self.fn)
        if self.schedule is not None:
            self._schedule = WeightSchedule(self.schedule)

    def weight_at(self, step: int) -> float:
        return self.weight * (self._schedule(step) if self._schedule is not None else 1.0)


class RunningStats:
    """Running count, mean, M2 (sum of squared deviations), min and max of a stream of floats."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = math.inf, -math.inf

    def update(self, values: Sequence[float]) -> None:
        n = len(values)
        if n == 0:
            return
        b_mean = sum(values) / n
        b_m2 = sum((v - b_mean) ** 2 for v in values)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.m2 += b_m2 + delta * delta * self.count * n / total
        self.count = total
        self.min, self.max = min(self.min, *values), max(self.max, *values)

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else 0.0

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "min": self.min, "max": self.max}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), state["mean"], state["m2"]
        self.min, self.max = state["min"], state["max"]


class CompositeReward:
    """Weighted, normalised combination of reward components; itself a TRL reward function.

    Args:
        components: reward functions, ``(fn, weight)`` pairs, or :class:`Component` objects.
        normalize: ``"none"``, ``"zscore"`` or ``"minmax"`` (per component, running).
        clip: clip each normalised component value to ``[-clip, clip]`` (a float) or ``[lo, hi]``.
        on_error: ``"raise"`` (default) or ``"none"`` (failing samples get ``None``, warn once).
        trend_temperature: enable trend-driven weights with this softmax temperature ``T``.
        trend_window: steps of batch means the trend is fitted on.
        name: ``__name__``, i.e. TRL's metric ``rewards/<name>/mean``.

    After each call, ``last_components`` maps component name -> batch mean of its raw values
    (answered samples only; NaN if none answered) and ``last_weights`` the effective weights;
    both are logged through TRL's ``log_metric`` as ``<name>/<component>/mean`` and ``/weight``.

    A ``CompositeReward`` is a plain callable. Async components (the HTTP judge) are gathered
    concurrently on an event loop of its own (in a worker thread when the caller's thread already
    runs one). :class:`AsyncCompositeReward` takes the same arguments and is itself a coroutine
    function, for TRL to gather with its other async rewards.
    """

    def __init__(self, components: Sequence[Any], normalize: str = "none",
                 clip: float | Sequence[float] | None = None, on_error: str = "raise",
                 trend_temperature: float | None = None, trend_window: int = 20,
                 name: str = "composite") -> None:
        comps = [_as_component(c, i) for i, c in enumerate(components)]
        if not comps:
            raise ValueError("CompositeReward needs at least one component")
        seen: dict[str, int] = {}
        for c in comps:
            base = c.name
            seen[base] = seen.get(base, 0) + 1
            if seen[base] > 1:
                c.name = f"{base}_{seen[base]}"
        if normalize not in ("none", "zscore", "minmax"):
            raise ValueError(f"normalize must be 'none', 'zscore' or 'minmax', got {normalize!r}")
        if on_error not in ("raise", "none"):
            raise ValueError(f"on_error must be 'raise' or 'none', got {on_error!r}")
        if clip is None:
            self.clip = None
        elif isinstance(clip, (int, float)):
            if not clip > 0:
                raise ValueError(f"clip must be > 0, got {clip}")
            self.clip = (-float(clip), float(clip))
        else:
            lo, hi = (float(v) for v in clip)
            if not lo < hi:
                raise ValueError(f"clip must be [lo, hi] with lo < hi, got {clip}")
            self.clip = (lo, hi)
        if trend_temperature is not None and not trend_temperature > 0:
            raise ValueError(f"trend_temperature must be > 0, got {trend_temperature}")
        self.__name__ = name
        self.components = comps
        self.normalize, self.on_error = normalize, on_error
        self.trend_temperature = trend_temperature
        self.stats = [RunningStats() for _ in comps]
        self.trends = [ScalarSignal(f"reward/{c.name}", window=trend_window) for c in comps]
        self.calls = 0
        self.last_components: dict[str, float] = {}
        self.last_weights: dict[str, float] = {}
        self._warned: set[int] = set()

    def __repr__(self) -> str:
        parts = ", ".join(f"{c.name}*{c.weight:g}" for c in self.components)
        return f"{type(self).__name__}(name={self.__name__!r}, [{parts}], normalize={self.normalize!r})"

    # ---- weights ---------------------------------------------------------------
    def weights(self, step: int) -> list[float]:
        """Effective weights ``w_k`` at ``step`` (schedule times trend multiplier)."""
        w = [c.weight_at(step) for c in self.components]
        if self.trend_temperature is not None and all(t.count >= 2 for t in self.trends):
            logits = [-self.scaled_trend(k) / self.trend_temperature for k in range(len(w))]
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            total = sum(exps)
            w = [wk * (len(w) * e / total) for wk, e in zip(w, exps, strict=True)]
        return w

    def scaled_trend(self, k: int) -> float:
        """Slope per step of component ``k``'s batch means over its sample standard deviation."""
        sig = self.trends[k]
        slope = sig.trend * (abs(sig.mean) + 1e-8)  # ScalarSignal.trend is slope / (|mean| + 1e-8)
        return slope / math.sqrt(self.stats[k].variance + _EPS)

    # ---- calling ---------------------------------------------------------------
    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] | None = None,
                 completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float | None]:
        call_kwargs, n = self._call_kwargs(prompts, completions, completion_ids, kwargs)
        if any(is_async(c.fn) for c in self.components):
            raw = _run_to_completion(self._raw(call_kwargs, n))
        else:
            raw = [self._run_sync(k, call_kwargs, n) for k in range(len(self.components))]
        return self._combine(raw, n, kwargs)

    async def _raw(self, call_kwargs: dict[str, Any], n: int) -> list[list[float | None]]:
        """Every component's checked values: sync ones in turn, async ones gathered concurrently."""
        raw: list[list[float | None]] = [[] for _ in self.components]
        pending = []
        for k, comp in enumerate(self.components):
            if is_async(comp.fn):
                pending.append(k)
            else:
                raw[k] = self._run_sync(k, call_kwargs, n)
        results = await asyncio.gather(*(self._run(k, call_kwargs, n) for k in pending))
        for k, values in zip(pending, results, strict=True):
            raw[k] = values
        return raw

    def _call_kwargs(self, prompts: Any, completions: Any, completion_ids: Any,
                     kwargs: dict[str, Any]) -> tuple[dict[str, Any], int]:
        if completions is None:
            raise TypeError(f"reward {self.__name__!r} needs completions=")
        return {"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                **kwargs}, len(completions)

    def _where(self, k: int) -> str:
        return f"reward component {k} ({self.components[k].name!r}) of {self.__name__!r}"

    def _warn_once(self, k: int, message: str) -> None:
        if k not in self._warned:
            self._warned.add(k)
            warnings.warn(f"{message}; those samples get None (on_error='none'), further failures of "
                          "this component are not warned about", RuntimeWarning, stacklevel=4)

    def _check(self, k: int, values: Any, n: int) -> list[float | None]:
        try:
            out = checked_rewards(self.components[k].name, values, n, allow_nonfinite=True)
        except (TypeError, ValueError) as exc:
            if self.on_error == "raise":
                raise RewardComponentError(f"{self._where(k)}: {exc}") from None
            self._warn_once(k, f"{self._where(k)}: {exc}")
            return [None] * n
        for j, v in enumerate(out):
            if v is not None and not math.isfinite(v):
                if self.on_error == "raise":
                    raise RewardComponentError(f"{self._where(k)} returned non-finite {v} for sample {j}")
                self._warn_once(k, f"{self._where(k)} returned non-finite {v} for sample {j}")
                out[j] = None
        return out

    async def _run(self, k: int, call_kwargs: dict[str, Any], n: int) -> list[float | None]:
        """Component ``k`` on the batch; on an error, sample by sample to find the culprit.

        The one runner for sync and async components: a sync component's call never suspends, so
        :meth:`_run_sync` drives this coroutine to its end without an event loop.
        """
        fn = self.components[k].fn
        fn_is_async = is_async(fn)

        async def call(kwargs: dict[str, Any]) -> Any:
            return await fn(**kwargs) if fn_is_async else fn(**kwargs)

        try:
            values = await call(call_kwargs)
        except MissingColumnError as exc:
            raise self._config_error(k, exc) from exc
        except Exception as batch_exc:
            out: list[float | None] = []
            failed = 0
            for j in range(n):
                try:
                    value = await call(_sample(call_kwargs, j, n))
                except Exception as exc:
                    failed += 1
                    out.append(self._sample_failed(k, j, exc))
                    continue
                out.extend(self._check(k, value, 1))
            return self._batch_only_failure(k, out, failed, batch_exc)
        return self._check(k, values, n)

    def _run_sync(self, k: int, call_kwargs: dict[str, Any], n: int) -> list[float | None]:
        """:meth:`_run` for a sync component, driven without an event loop (it never suspends)."""
        coroutine = self._run(k, call_kwargs, n)
        try:
            coroutine.send(None)
        except StopIteration as done:
            return done.value
        coroutine.close()
        raise RuntimeError(f"{self._where(k)} suspended although it is not async")

    def _config_error(self, k: int, exc: Exception) -> RewardComponentError:
        """A configuration problem (e.g. a missing dataset column): never per-sample, never silenced."""
        return RewardComponentError(f"{self._where(k)}: {exc}")

    def _sample_failed(self, k: int, j: int, exc: Exception) -> None:
        message = f"{self._where(k)} failed on sample {j}: {type(exc).__name__}: {exc}"
        if self.on_error == "raise":
            raise RewardComponentError(message) from exc
        self._warn_once(k, message)
        return None

    def _batch_only_failure(self, k: int, out: list[float | None], failed: int,
                            batch_exc: Exception) -> list[float | None]:
        """``out`` unless no single sample failed: then the batch as a whole is the culprit."""
        if failed:
            return out
        message = (f"{self._where(k)} failed on the batch of {len(out)} "
                   f"({type(batch_exc).__name__}: {batch_exc}) but on no single sample")
        if self.on_error == "raise":
            raise RewardComponentError(message) from batch_exc
        self._warn_once(k, message)
        return [None] * len(out)

    # ---- combining ---------------------------------------------------------------
    def _normalise(self, k: int, values: list[float | None]) -> list[float | None]:
        answered = [v for v in values if v is not None]
        stats = self.stats[k]
        stats.update(answered)
        if answered:
            self.trends[k].update(sum(answered) / len(answered))
        if self.normalize == "zscore":
            scale = 1.0 / math.sqrt(stats.variance + _EPS)
            out = [None if v is None else (v - stats.mean) * scale for v in values]
        elif self.normalize == "minmax":
            span = stats.max - stats.min
            out = [None if v is None else ((v - stats.min) / span if span > 0 else 0.0) for v in values]
        else:
            out = list(values)
        if self.clip is not None:
            lo, hi = self.clip
            out = [None if v is None else min(max(v, lo), hi) for v in out]
        return out

    def _step(self, kwargs: dict[str, Any]) -> int:
        state = kwargs.get("trainer_state")
        step = getattr(state, "global_step", None)
        return int(step) if step is not None else self.calls

    def _combine(self, raw: list[list[float | None]], n: int, kwargs: dict[str, Any]) -> list[float | None]:
        """``R_j`` of the module docstring, summed over the weights divided by a power of two ``s``
        near the largest (exact, so sums of weights up to the float range cannot overflow) and
        multiplied back; a non-finite effective weight, or an ``R_j`` beyond the float range, is
        a :class:`RewardComponentError` naming the component."""
        step = self._step(kwargs)
        self.calls += 1
        weights = self.weights(step)
        for k, w in enumerate(weights):
            if not math.isfinite(w):
                raise RewardComponentError(
                    f"{self._where(k)}: effective weight {w} at step {step} (weight "
                    f"{self.components[k].weight:g} times its schedule and trend multipliers); weights "
                    "must stay finite")
        normed = [self._normalise(k, vals) for k, vals in enumerate(raw)]
        s = _pow2_scale(*(abs(w) for w in weights))
        scaled = [w / s for w in weights]
        total_abs = sum(abs(w) for w in scaled)
        out: list[float | None] = []
        for j in range(n):
            num = den = 0.0
            answered = False
            for k, w in enumerate(scaled):
                z = normed[k][j]
                if z is not None:
                    answered = True
                    num += w * z
                    den += abs(w)
            value = None if not answered else (num * total_abs / den * s if den > 0 else 0.0)
            if value is not None and not math.isfinite(value):
                k = max(range(len(scaled)), key=lambda i: abs(scaled[i] * (normed[i][j] or 0.0)))
                raise RewardComponentError(
                    f"{self._where(k)}: weight {weights[k]:g} times its value {normed[k][j]:g} puts the "
                    f"composite reward of sample {j} beyond the float range; use smaller weights (only "
                    "their ratios matter after normalize) or normalize='zscore'")
            out.append(value)
        self.last_components, self.last_weights = {}, {}
        log_metric = kwargs.get("log_metric")
        for k, comp in enumerate(self.components):
            answered_vals = [v for v in raw[k] if v is not None]
            mean = sum(answered_vals) / len(answered_vals) if answered_vals else math.nan
            self.last_components[comp.name] = mean
            self.last_weights[comp.name] = weights[k]
            if log_metric is not None:
                if answered_vals:
                    log_metric(f"{self.__name__}/{comp.name}/mean", mean)
                log_metric(f"{self.__name__}/{comp.name}/weight", weights[k])
        return out

    # ---- persistence -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "stats": [s.state_dict() for s in self.stats],
                "trends": [t.state_dict() for t in self.trends]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["stats"]) != len(self.components):
            raise ValueError(f"state has {len(state['stats'])} components, this composite "
                             f"{len(self.components)}")
        self.calls = state["calls"]
        for s, st in zip(self.stats, state["stats"], strict=True):
            s.load_state_dict(st)
        for t, st in zip(self.trends, state["trends"], strict=True):
            t.load_state_dict(st)


class AsyncCompositeReward(CompositeReward):
    """A composite whose ``__call__`` is a coroutine function (TRL gathers it with its other async
    rewards); its async components are gathered concurrently on the caller's event loop. Built
    with the arguments of :class:`CompositeReward`, from sync and async components alike."""

    async def __call__(self, prompts: Sequence[Any] | None = None,  # type: ignore[override]
                       completions: Sequence[Any] | None = None,
                       completion_ids: Sequence[Sequence[int]] | None = None,
                       **kwargs: Any) -> list[float | None]:
        call_kwargs, n = self._call_kwargs(prompts, completions, completion_ids, kwargs)
        return self._combine(await self._raw(call_kwargs, n), n, kwargs)


def _run_to_completion(coroutine: Any) -> Any:
    """Run ``coroutine`` on a fresh event loop: in this thread, or in a worker thread when this
    thread already runs a loop (which a blocking call must not re-enter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _as_component(c: Any, index: int) -> Component:
    if isinstance(c, Component):
        return c
    if isinstance(c, tuple) and len(c) == 2:
        return Component(c[0], weight=c[1])
    if callable(c):
        return Component(c)
    raise ValueError(f"component {index}: expected a reward function, (fn, weight) or Component, "
                     f"got {type(c).__name__}")


def _sample(call_kwargs: dict[str, Any], j: int, n: int) -> dict[str, Any]:
    """The keyword arguments of a one-sample call: every per-sample list sliced to ``[j:j+1]``."""
    out = {}
    for key, val in call_kwargs.items():
        if key not in TRL_CONTROL_KWARGS and isinstance(val, (list, tuple)) and len(val) == n:
            out[key] = val[j:j + 1]
        else:
            out[key] = val
    return out
