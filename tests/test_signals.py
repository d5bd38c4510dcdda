import math
import sys
import warnings

import pytest
import torch

from adaptiverl.signals import ScalarSignal, Signals


def test_ema_variance_trend_match_definitions():
    sig = ScalarSignal("loss", beta=0.5, window=4)
    for x in [4.0, 3.0, 2.0, 1.0]:
        sig.update(x)
    assert sig.ema == pytest.approx(((4 * 0.5 + 3 * 0.5) * 0.5 + 2 * 0.5) * 0.5 + 0.5)
    assert sig.variance == pytest.approx(torch.tensor([4.0, 3, 2, 1]).var().item())
    assert sig.trend == pytest.approx(-1.0 / 2.5)  # slope -1 per step over |mean| 2.5
    assert sig.rel_improvement > 0


def test_window_drops_old_values_and_constant_stream_has_no_trend():
    sig = ScalarSignal("loss", window=3)
    for x in [100.0, 1.0, 1.0, 1.0]:
        sig.update(x)
    assert sig.values == (1.0, 1.0, 1.0)
    assert sig.variance == 0.0 and sig.trend == 0.0


def test_non_finite_values_are_rejected_and_warned_once():
    sig = ScalarSignal("reward")
    sig.update(1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sig.update(float("nan")) is False
        assert sig.update(torch.tensor(float("inf"))) is False
    assert len(caught) == 1 and "reward" in str(caught[0].message)
    assert sig.rejected == 2 and sig.count == 1 and sig.ema == 1.0


def test_spike_detection():
    sig = ScalarSignal("loss", window=10, spike_threshold=3.0)
    for i in range(10):
        sig.update(1.0 + 0.01 * (i % 2))
    sig.update(5.0)
    assert sig.is_spike and sig.z_score > 3


@pytest.mark.parametrize("feed", [dict(loss=1.0), dict(reward=0.5), dict(loss=1.0, reward=0.5)])
def test_signals_accept_loss_only_reward_only_and_both(feed):
    s = Signals()
    accepted = s.observe(**feed, grad_norm=torch.tensor(2.0))
    assert all(accepted.values()) and s.step == 1
    assert s["grad_norm"].last == 2.0
    assert s.loss.ready == ("loss" in feed) and s.reward.ready == ("reward" in feed)


def test_signals_state_dict_round_trip_continues_identically():
    a, b = Signals(window=5), Signals(window=5)
    for i in range(7):
        a.observe(loss=math.sin(i), reward=i * 0.1)
    b.load_state_dict(a.state_dict())
    for i in range(7, 12):
        a.observe(loss=math.sin(i), reward=i * 0.1)
        b.observe(loss=math.sin(i), reward=i * 0.1)
    assert a.summary() == b.summary() and a.step == b.step


def test_trend_tstat_uses_the_residual_of_the_fit():
    ramp = ScalarSignal("loss", window=10)
    for t in range(10):
        ramp.update(5.0 - 0.01 * t)
    assert ramp.trend_tstat < -1e6  # an exact line, however shallow, is significant
    noisy = ScalarSignal("loss", window=5)
    for value in (1.0, 2.0, 1.0, 2.0, 1.0):
        noisy.update(value)
    assert noisy.trend_tstat == 0.0  # zero slope
    rising = ScalarSignal("loss", window=5)
    for value in (1.0, 1.3, 1.1, 1.6, 1.5):
        rising.update(value)
    x = [0, 1, 2, 3, 4]
    slope = sum((i - 2) * (y - 1.3) for i, y in zip(x, rising.values, strict=True)) / 10.0
    residual = sum((y - 1.3 - slope * (i - 2)) ** 2 for i, y in zip(x, rising.values, strict=True)) / 3.0
    assert rising.trend_tstat == pytest.approx(slope / math.sqrt(residual / 10.0))


def _float(q):
    """A Fraction as the nearest float, +-inf beyond the float range."""
    try:
        return float(q)
    except OverflowError:
        return math.inf if q > 0 else -math.inf


def _sqrt(q):
    """The square root of a non-negative Fraction as a float, inf beyond the float range."""
    from fractions import Fraction

    half_exp = (q.numerator.bit_length() - q.denominator.bit_length()) // 2 if q else 0
    return _float(Fraction(math.sqrt(float(q / Fraction(4) ** half_exp))) * Fraction(2) ** half_exp)


def _exact_stats(values):
    """Mean, unbiased variance and least-squares slope of ``values`` in exact rationals (0 and 0 for
    one value, like the signal)."""
    from fractions import Fraction

    ys = [Fraction(v) for v in values]
    n = len(ys)
    mean = sum(ys) / n
    if n < 2:
        return mean, Fraction(0), Fraction(0)
    var = sum((y - mean) ** 2 for y in ys) / (n - 1)
    x_mean = Fraction(n - 1, 2)
    slope = sum((i - x_mean) * (y - mean) for i, y in enumerate(ys)) / sum((i - x_mean) ** 2 for i in range(n))
    return mean, var, slope


HUGE_STREAMS = {
    "loss 1e200": ("loss", [1.0, 2.0, 1.5, 1e200, 3.0, -1e200, 2.5, 1e200]),
    "reward 1e308": ("reward", [0.5, 1e308, 1e308, 0.25, 1e308, -1e308]),
    "largest float": ("reward", [sys.float_info.max, -sys.float_info.max, sys.float_info.max, 0.0]),
}


@pytest.mark.parametrize("name, stream", HUGE_STREAMS.values(), ids=list(HUGE_STREAMS))
def test_huge_finite_values_are_statistics_like_any_other(name, stream):
    """1e200 or 1e308 are finite: folded in (no OverflowError), every statistic that is finite in
    exact arithmetic comes out finite and right, and only a true overflow (a variance beyond the
    float range) reads as inf."""
    from fractions import Fraction

    s = Signals(window=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-finite ... ignored": these values are finite
        for value in stream:
            assert s.observe(**{name: value}) == {name: True}
            sig = s[name]
            mean, var, slope = _exact_stats(sig.values)
            scale = abs(mean) + Fraction(1, 10**8)
            assert sig.mean == pytest.approx(float(mean), rel=1e-12)
            assert sig.variance == pytest.approx(_float(var), rel=1e-12)
            assert sig.std == pytest.approx(_sqrt(var), rel=1e-12)
            assert sig.rel_std == pytest.approx(_sqrt(var / scale**2), rel=1e-12)
            assert sig.trend == pytest.approx(_float(slope / scale), rel=1e-12)
            assert math.isfinite(sig.ema) and min(sig.values) <= sig.ema <= max(sig.values)
            assert math.isfinite(sig.rel_improvement) and math.isfinite(sig.z_score)
            assert not math.isnan(sig.trend_tstat) and not math.isnan(sig.delta)
            assert not any(math.isnan(v) for v in s.summary().values())
    assert s.step == len(stream) and sig.rejected == 0


def test_huge_python_int_counts_as_non_finite():
    s = Signals()
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        assert s.observe(loss=10**400) == {"loss": False}
    assert s.loss.rejected == 1 and not s.loss.ready


@pytest.mark.parametrize("front_end", ["OnlineAdamW", "AdaptiveOptimizer"])
def test_optimizers_observe_huge_finite_losses_and_rewards(front_end):
    from adaptiverl.optim import AdaptiveOptimizer, OnlineAdamW

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    if front_end == "OnlineAdamW":
        opt = OnlineAdamW(model.parameters(), lr=1e-2)
    else:
        opt = AdaptiveOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), reward_rule="trend")
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    feeds = [dict(loss=1.0, reward=0.1), dict(loss=1e200), dict(reward=1e308), dict(loss=1e200, reward=1e308),
             dict(loss=0.9, reward=-1e308), dict(loss=1e200, reward=0.2)] * 4
    for feed in feeds:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.observe(**feed)
        opt.step()
    assert opt.signals.loss.count == sum("loss" in f for f in feeds)
    assert opt.signals.reward.count == sum("reward" in f for f in feeds)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(g["lr"]) for g in opt.param_groups)


FRONT_ENDS = ["Signals", "EnhancedSGD", "AdaptiveOptimizer", "OptimizerWrapper", "OnlineAdamW"]


def _front_end(name: str, model: torch.nn.Module):
    from adaptiverl.optim import (
        AdaptiveOptimizer,
        EnhancedSGD,
        OnlineAdamW,
        OptimizerWrapper,
        PlateauMetaOptimizer,
    )

    sgd = lambda: torch.optim.SGD(model.parameters(), lr=0.1)  # noqa: E731
    return {"Signals": Signals, "EnhancedSGD": lambda: EnhancedSGD(model.parameters()),
            "AdaptiveOptimizer": lambda: AdaptiveOptimizer(sgd()),
            "OptimizerWrapper": lambda: OptimizerWrapper(sgd(), PlateauMetaOptimizer()),
            "OnlineAdamW": lambda: OnlineAdamW(model.parameters())}[name]()


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("bad", [1 + 2j, [1.0, 2.0], torch.ones(2), torch.tensor(1 + 1j), "1.0"],
                         ids=["complex", "list", "vector", "complex_tensor", "str"])
def test_observe_refuses_a_loss_that_is_no_real_scalar_naming_loss(front_end, bad):
    model = torch.nn.Linear(2, 1)
    opt = _front_end(front_end, model)
    with pytest.raises((TypeError, ValueError), match=r"loss'? must be a real scalar"):
        opt.observe(loss=bad)
        if front_end != "Signals":  # a front end may read the loss at its step: the error comes there
            model(torch.ones(2)).sum().backward()
            opt.step()
