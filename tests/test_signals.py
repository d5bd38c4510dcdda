import math
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
