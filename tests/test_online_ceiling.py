"""The update ceiling (``controllers.online.UPDATE_RATIO_MAX``): in supervised runs a matrix whose
last update moved its weights by more than 5% of their rms has its step scale cut back to about that
fraction; biases and gains, matrices that started at zero, and RL runs are left alone."""

from __future__ import annotations

import math

import pytest
import torch

from adaptiverl.controllers import online
from adaptiverl.optim.online import OnlineAdamW


def _run(*, lr: float = 0.05, steps: int = 6, zero_second: bool = False, feed: str = "loss",
         ceiling: float | None = online.UPDATE_RATIO_MAX) -> tuple[OnlineAdamW, torch.nn.Module, list[float]]:
    """A 2-layer net on a fixed regression; returns the optimizer, the model and, per step, the first
    matrix's realised update over its weight rms (``rms(delta theta) / rms(theta)``)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=gen)
    y = torch.tanh(x @ torch.randn(32, 1, generator=gen))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    if zero_second:
        torch.nn.init.zeros_(model[2].weight)
    saved = online.UPDATE_RATIO_MAX
    online.UPDATE_RATIO_MAX = ceiling
    try:
        opt = OnlineAdamW(model.parameters(), lr=lr, controller="fresh", meta_lr=0.0, weight_decay=0.0)
        ratios = []
        for i in range(steps):
            before = model[0].weight.detach().clone()
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            fed = {"loss": loss.item()}
            if feed == "reward":
                fed["reward"] = 0.1 * i
            elif feed == "policy_kl":
                fed["policy_kl"] = 0.005
            opt.observe(**fed)
            opt.step()
            weight = model[0].weight.detach()
            ratios.append(float((weight - before).pow(2).mean().sqrt() / weight.pow(2).mean().sqrt()))
    finally:
        online.UPDATE_RATIO_MAX = saved
    return opt, model, ratios


def _scales(opt: OnlineAdamW) -> list[float]:
    return opt.online_controller.last_scales()


def test_shipped_ceiling_is_five_percent() -> None:
    assert online.UPDATE_RATIO_MAX == 0.05


def test_a_matrix_moving_too_far_is_cut_back_to_the_ceiling() -> None:
    """lr 0.05 moves this matrix (weight rms ~0.1) by ~40% of its rms per step: cut at the second
    step, after which each update is about 5% of the weight's rms; the bias rows are not cut."""
    opt, _, ratios = _run()
    assert ratios[0] > 0.2  # the first step, before any measurement
    assert all(r < 0.08 for r in ratios[2:]), ratios
    weight, bias, weight2, bias2 = _scales(opt)
    assert weight < 0.3 and weight2 < 0.5, _scales(opt)
    assert bias > 0.8 and bias2 > 0.8, _scales(opt)


def test_without_the_ceiling_nothing_is_cut() -> None:
    opt, _, ratios = _run(ceiling=None)
    assert min(_scales(opt)) > 0.8, _scales(opt)
    assert min(ratios) > 0.1, ratios


def test_a_small_lr_is_untouched() -> None:
    """At lr 1e-4 every update is ~0.1% of the weights: the ceiling never acts, bit for bit."""
    with_ceiling, model_a, _ = _run(lr=1e-4, steps=10)
    without, model_b, _ = _run(lr=1e-4, steps=10, ceiling=None)
    assert _scales(with_ceiling) == _scales(without)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_matrix_that_started_at_zero_is_exempt() -> None:
    """LoRA's B starts at zero: its first updates are 100% of its rms by construction."""
    opt, _, _ = _run(zero_second=True)
    weight, _, weight2, _ = _scales(opt)
    assert weight < 0.3
    assert weight2 > 0.8, _scales(opt)
    assert opt.online_controller.state.ceiling_rows.tolist() == [True, False, False, False]


@pytest.mark.parametrize("feed", ["reward", "policy_kl"])
def test_rl_runs_are_untouched(feed: str) -> None:
    """Once a reward or a policy change is fed the run is RL, where the shared change rules."""
    with_ceiling, _, _ = _run(feed=feed)
    without, _, _ = _run(feed=feed, ceiling=None)
    assert _scales(with_ceiling) == _scales(without)


def test_ceiling_rows_round_trip_and_an_older_state_gets_them_from_the_weights() -> None:
    opt, model, _ = _run()
    state = opt.state_dict()
    assert state["online"]["ctl"]["ceiling_rows"].tolist() == [True, False, True, False]
    older = OnlineAdamW(model.parameters(), lr=0.05, controller="fresh", meta_lr=0.0, weight_decay=0.0)
    del state["online"]["ctl"]["ceiling_rows"]  # a checkpoint written before the ceiling
    older.load_state_dict(state)
    loss = model(torch.randn(8, 32)).pow(2).mean()
    loss.backward()
    older.observe(loss=loss.item())
    older.step()
    assert older.online_controller.state.ceiling_rows.tolist() == [True, False, True, False]
    assert all(math.isfinite(s) for s in _scales(older))
