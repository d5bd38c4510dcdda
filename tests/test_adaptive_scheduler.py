"""AdaptiveScheduler: the two compounding bugs of seed 003 are fixed, and the policies act as documented."""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import pytest
import torch

from adaptiverl.optim.adaptive_scheduler import AdaptiveScheduler


def _make(lr: float = 0.05, momentum: float = 0.9, **kwargs: Any) -> tuple[torch.optim.SGD, AdaptiveScheduler]:
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([param], lr=lr, momentum=momentum)
    return optimizer, AdaptiveScheduler(optimizer, **kwargs)


def _run(scheduler: AdaptiveScheduler, losses: list[float], rewards: list[float] | None = None) -> list[float]:
    out = []
    for t, loss in enumerate(losses):
        scheduler.optimizer.step()
        out.append(scheduler.step_loss(loss, None if rewards is None else rewards[t])[0])
    return out


def _noisy_flat(steps: int, rel_noise: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [2.0 * (1.0 + rel_noise * rng.gauss(0.0, 1.0)) for _ in range(steps)]


def test_constant_loss_keeps_lr_exactly_constant() -> None:
    optimizer, scheduler = _make(patience=None)
    lrs = _run(scheduler, [1.3] * 400)
    assert set(lrs) == {0.05}
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_constant_loss_with_patience_only_drops_by_big_drop() -> None:
    _, scheduler = _make(patience=20, cooldown=30, big_drop=0.5)
    lrs = _run(scheduler, [1.3] * 200)
    assert sorted(set(lrs), reverse=True) == pytest.approx([0.05 * 0.5 ** k for k in range(len(set(lrs)))])
    first_drop = lrs.index(0.025)
    # a step uses the losses recorded before it; judged once the 20-loss window is full (step 20
    # sets the best), then patience=20 bad steps, dropped on the 21st judged step
    assert first_drop == 41
    assert lrs[first_drop:first_drop + 51] == [0.025] * 51  # cooldown 30 + patience 20 of rest


@pytest.mark.parametrize("use_cosine", [False, True])
def test_noisy_flat_loss_settles_to_a_bounded_lr(use_cosine: bool) -> None:
    _, scheduler = _make(patience=None, use_cosine=use_cosine, T0=50, T_mult=1, lr_min=1e-7)
    lrs = _run(scheduler, _noisy_flat(3000, 0.2))
    late = lrs[1500:]
    assert min(late) > 1e-4 and max(late) <= 10.0  # lr_min is 1e-7
    # settled: the second half of the tail is on the same scale as the first (no geometric decay)
    first, second = late[: len(late) // 2], late[len(late) // 2:]
    ratio = (sum(second) / len(second)) / (sum(first) / len(first))
    assert 0.25 < ratio < 4.0


def test_variance_damping_is_a_stateless_factor_of_the_relative_variance() -> None:
    _, small = _make(patience=None, up_factor=1.0, down_factor=1.0)
    _, large = _make(patience=None, up_factor=1.0, down_factor=1.0)
    losses = _noisy_flat(200, 0.3, seed=3)
    a = _run(small, losses)
    b = _run(large, [1000.0 * x for x in losses])
    assert a == pytest.approx(b, rel=1e-6)  # scale-free (up to rounding)
    rel_var = small.signals.loss.rel_std ** 2
    small.optimizer.step()  # the step after the last loss reads it
    assert small.get_last_lr()[0] == pytest.approx(0.05 / (1.0 + rel_var), rel=1e-12)  # one division


def test_steadily_falling_loss_never_exceeds_lr_max() -> None:
    _, scheduler = _make(lr=0.05, lr_max=0.2, patience=None, use_cosine=True, T0=40)
    lrs = _run(scheduler, [10.0 * 0.98 ** t for t in range(400)])
    assert all(lr <= 0.2 for lr in lrs) and max(lrs) > 0.19  # at most the clamp (x damping < 1)
    assert scheduler.adaptive_base_lrs() == [0.2]


def test_cosine_overlay_restarts_at_the_adaptive_base_without_compounding() -> None:
    _, scheduler = _make(patience=None, use_cosine=True, T0=10, T_mult=2, eta_min_scale=0.1)
    lrs = _run(scheduler, [1.0] * 70)[1:]  # the cosine clock starts with the first recorded loss
    assert [t for t, lr in enumerate(lrs) if lr == pytest.approx(0.05)] == [0, 10, 30]
    assert min(lrs) >= 0.005 - 1e-12
    assert lrs[5] == pytest.approx(0.05 * (0.1 + 0.9 * 0.5))  # half-way through the first cycle
    assert lrs[50] == pytest.approx(0.05 * (0.1 + 0.9 * 0.5))  # half-way through the 20-step cycle


def test_reward_trend_moves_lr_and_momentum() -> None:
    optimizer_up, up = _make(patience=None, use_reward=True)
    optimizer_down, down = _make(patience=None, use_reward=True)
    flat = [1.0] * 60
    lr_up = _run(up, flat, [0.1 * t for t in range(60)])[-1]
    lr_down = _run(down, flat, [-0.1 * t for t in range(60)])[-1]
    assert lr_up > 0.05 > lr_down
    assert optimizer_up.param_groups[0]["momentum"] == pytest.approx(0.999)  # clipped at momentum_max
    assert 0.0 <= optimizer_down.param_groups[0]["momentum"] < 0.1


def test_set_metrics_then_step_equals_step_loss_and_bare_step_keeps_lr() -> None:
    _, a = _make()
    _, b = _make()
    losses = _noisy_flat(60, 0.1, seed=5)
    lr_a = _run(a, losses)
    lr_b = []
    for loss in losses:
        b.optimizer.step()
        b.set_metrics(torch.tensor(loss))
        b.step()
        lr_b.append(b.get_last_lr()[0])
    assert lr_a == pytest.approx(lr_b, rel=1e-5)  # the tensor loss is float32
    b.optimizer.step()  # reads the last recorded loss
    before = b.get_last_lr()
    b.optimizer.step()
    b.step()  # nothing new recorded: adaptive base and damping unchanged, no cosine here
    assert b.get_last_lr() == before


def test_state_dict_round_trip() -> None:
    kwargs = {"use_cosine": True, "T0": 20, "use_reward": True, "patience": 5, "cooldown": 3}
    _, first = _make(**kwargs)
    losses = _noisy_flat(120, 0.2, seed=7)
    rewards = [math.sin(t / 7) for t in range(120)]
    _run(first, losses[:60], rewards[:60])
    optimizer, second = _make(**kwargs)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    optimizer.param_groups[0]["momentum"] = first.optimizer.param_groups[0]["momentum"]
    assert _run(first, losses[60:], rewards[60:]) == _run(second, losses[60:], rewards[60:])
    assert first.optimizer.param_groups[0]["momentum"] == optimizer.param_groups[0]["momentum"]
    _, no_reward = _make(use_cosine=True, T0=20)
    with pytest.raises(ValueError, match="'reward_trend' is disabled here"):
        no_reward.load_state_dict(first.state_dict())


def test_bad_arguments_name_the_culprit() -> None:
    with pytest.raises(ValueError, match=r"initial lr of param groups \[0\].*outside \[lr_min, lr_max\]"):
        _make(lr=20.0)
    with pytest.raises(ValueError, match="up_factor"):
        _make(up_factor=0.9)
    with pytest.raises(ValueError, match="big_drop"):
        _make(big_drop=1.5)


def test_the_seed_pseudo_code_would_fail_the_noisy_flat_check() -> None:
    """Seed 003's step 3 (``lr /= 1 + Var`` on the already-damped LR) on the same noisy flat loss."""
    losses, window, lr = _noisy_flat(400, 0.2), [], 0.05
    for loss in losses:
        window = [*window[-19:], loss]
        mean = sum(window) / len(window)
        variance = sum((x - mean) ** 2 for x in window) / max(len(window) - 1, 1)
        lr = max(lr / (1.0 + variance), 1e-7)
    assert lr == 1e-7  # the compounding damping drives it to lr_min
    _, scheduler = _make(patience=None)
    assert min(_run(scheduler, losses)) > 1e-3  # the fixed scheduler on the same losses


def test_a_discarded_scheduler_stops_controlling() -> None:
    import gc

    optimizer, scheduler = _make(patience=None)
    scheduler.step_loss(1.0)
    optimizer.step()
    assert scheduler.controller.loss_seen == 1
    del scheduler
    gc.collect()
    optimizer.param_groups[0]["lr"] = 0.3
    optimizer.step()  # the hook finds no scheduler: nothing rewrites the LR
    assert optimizer.param_groups[0]["lr"] == 0.3


@pytest.mark.parametrize("key", ["up_factor", "min_rel_improve", "var_damp_base", "var_damp_scale", "reward_up",
                                 "reward_down", "momentum_up", "patience", "cooldown", "T0", "T_mult", "lr_max"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_argument_is_refused_naming_it(key, bad):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=rf"AdaptiveScheduler: {key} must be a finite number, got {bad}"):
        AdaptiveScheduler(opt, use_reward=True, use_cosine=True, **{key: bad})
