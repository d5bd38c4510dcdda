"""What every front end shares: step_loss records only, one control step per optimizer step,
multipliers that compose with a warmup, the one accumulator and the one beta mapping."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from adaptiverl.controllers import (
    ALL_GROUPS,
    BoundedAccumulator,
    Controller,
    Multipliers,
    beta_from_multiplier,
    bounded_log_update,
)
from adaptiverl.optim import (
    AdaptiveOptimizer,
    AdaptiveScheduler,
    ControlledOptimizer,
    EnhancedSGD,
    OptimizerWrapper,
    PlateauMetaOptimizer,
)
from adaptiverl.signals import Signals


class CountingController(Controller):
    """A worked example of the protocol: LR x0.5 on groups with role "head", a weight-decay offset."""

    _state_keys = ("calls",)

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, signals: Signals) -> Multipliers:
        self.calls += 1
        return {ALL_GROUPS: {"weight_decay_offset": 0.01}, "head": {"lr": 0.5}}


def _params() -> list[dict[str, Any]]:
    return [{"params": [nn.Parameter(torch.ones(2))]}, {"params": [nn.Parameter(torch.ones(2))], "role": "head"}]


def _fronts() -> dict[str, tuple[Any, torch.optim.Optimizer]]:
    sgd = torch.optim.SGD(_params(), lr=0.1, momentum=0.9)
    fronts: dict[str, tuple[Any, torch.optim.Optimizer]] = {"scheduler": (AdaptiveScheduler(sgd, patience=0), sgd)}
    for name, build in (("adaptive", lambda o: AdaptiveOptimizer(o, lr_rule="variance")),
                        ("wrapper", lambda o: OptimizerWrapper(o, PlateauMetaOptimizer(patience=0, min_count=0, judge_every=1)))):
        opt = build(torch.optim.SGD(_params(), lr=0.1, momentum=0.9))
        fronts[name] = (opt, opt)
    enhanced = EnhancedSGD(_params(), lr=0.1, loss_correction_factor=0.5)
    fronts["enhanced_sgd"] = (enhanced, enhanced)
    return fronts


def _loss_count(front: Any) -> int:
    if isinstance(front, EnhancedSGD):
        return front.signals.loss.count + (front._pending_loss is not None)
    return front.signals.loss.count


@pytest.mark.parametrize("name", ["scheduler", "adaptive", "wrapper", "enhanced_sgd"])
def test_step_loss_only_records_and_the_next_step_reads_it(name: str) -> None:
    front, optimizer = _fronts()[name]
    for loss in (1.0, 1.01, 0.99, 1.0, 50.0):  # a spike at the end: every controller moves its LR
        for p in (p for g in optimizer.param_groups for p in g["params"]):
            p.grad = torch.ones_like(p)
        lrs = [g["lr"] for g in optimizer.param_groups]
        count = _loss_count(front)
        front.step_loss(loss)
        assert _loss_count(front) == count + 1  # recorded ...
        assert [g["lr"] for g in optimizer.param_groups] == lrs  # ... and nothing else changed
        optimizer.step()
    used = front.dynamics()["groups"][0]["lr"]
    assert used != 0.1  # the recorded losses reached the controller at the steps


def test_the_controller_runs_once_per_step_through_either_entry() -> None:
    controller = CountingController()
    opt = ControlledOptimizer(torch.optim.SGD(_params(), lr=0.1, weight_decay=0.0), controller)
    opt.step_loss(1.0)
    opt.step()
    assert controller.calls == 1
    opt.update_hyperparameters()  # explicit (seed 004's call) ...
    opt.step()  # ... so the step only re-applies
    assert controller.calls == 2
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]  # role "head" only
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.01]  # offset on every group
    restored = ControlledOptimizer(torch.optim.SGD(_params(), lr=0.1), CountingController())
    restored.load_state_dict(opt.state_dict())
    assert restored.controller.calls == 2 and restored.control_steps == 2


@pytest.mark.parametrize("warmup_first", [True, False])
def test_scheduler_sits_on_top_of_a_warmup(warmup_first: bool) -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / 10))
    adaptive = AdaptiveScheduler(optimizer, patience=None, up_factor=1.5, down_factor=0.5)
    used: list[float] = []
    optimizer.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))
    for t in range(30):
        param.grad = torch.ones_like(param)
        optimizer.step()
        schedulers = (warmup, adaptive) if warmup_first else (adaptive, warmup)
        for scheduler in schedulers:
            if scheduler is adaptive:
                adaptive.step_loss(1.0 * 0.9 ** t)  # steadily falling: the trend raises the LR
            else:
                scheduler.step()
    factors = [u / (0.1 * min(1.0, (t + 1) / 10)) for t, u in enumerate(used)]
    assert factors[0] == pytest.approx(1.0)
    assert max(factors) > 2.0  # the controller acted ...
    assert used[-1] == pytest.approx(0.1 * factors[-1])  # ... on top of the warmup, never replacing it
    assert used[:10] == sorted(used[:10])  # the warmup's ramp survives


def test_scheduler_keeps_a_reward_given_without_a_loss() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    scheduler = AdaptiveScheduler(optimizer, use_reward=True, patience=None)
    for t in range(40):
        param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.observe(reward=0.1 * t)  # rewards only, no loss
    assert scheduler.signals.reward.count == 40
    assert optimizer.param_groups[0]["lr"] > 0.1 and optimizer.param_groups[0]["momentum"] > 0.9
    plain = AdaptiveScheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    with pytest.warns(UserWarning, match="use_reward=False"):
        plain.observe(reward=1.0)
    assert plain.signals.reward.count == 1  # recorded, not dropped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.observe(reward=2.0)  # warned once


def test_beta_mapping_is_the_horizon_and_agrees_on_floats_and_tensors() -> None:
    assert beta_from_multiplier(0.9, 2.0) == pytest.approx(0.95)  # horizon 10 -> 20
    assert beta_from_multiplier(0.9, 0.5) == pytest.approx(0.8)  # horizon 10 -> 5
    assert beta_from_multiplier(0.9, 1e9) == 0.9999 and beta_from_multiplier(0.9, 1e-9) == 0.0
    assert beta_from_multiplier(0.0, 5.0) == 0.0  # a switched-off average stays off
    bases, mults = torch.tensor([0.0, 0.5, 0.9, 0.999]), torch.tensor([3.0, 0.25, 2.0, 10.0])
    tensor = beta_from_multiplier(bases, mults)
    floats = [beta_from_multiplier(b, m) for b, m in zip(bases.tolist(), mults.tolist(), strict=True)]
    assert tensor.tolist() == pytest.approx(floats)
    with pytest.raises(ValueError, match="mult must be > 0"):
        beta_from_multiplier(0.9, 0.0)


def test_bounded_accumulator_compounds_leaks_and_clips() -> None:
    acc = BoundedAccumulator(0.25, 4.0, leak=0.5)
    assert acc.update(2.0) == pytest.approx(2.0)
    assert acc.update(2.0) == pytest.approx(2.0 ** 1.5)  # (1 - 0.5) * log 2 + log 2
    for _ in range(10):
        acc.update(2.0, leak=0.0)
    assert acc.value == pytest.approx(4.0)  # clipped
    for _ in range(60):
        acc.update()  # factor 1: geometric recovery toward 1
    assert acc.value == pytest.approx(1.0, abs=1e-6)
    logs = torch.tensor([0.0, 1.0, -3.0])
    tensor = bounded_log_update(logs, torch.tensor([0.5, 1.0, -1.0]), leak=0.1, log_min=-2.0, log_max=1.5)
    floats = [bounded_log_update(v, f, leak=0.1, log_min=-2.0, log_max=1.5)
              for v, f in zip(logs.tolist(), [0.5, 1.0, -1.0], strict=True)]
    assert tensor.tolist() == pytest.approx(floats) and floats[2] == -2.0 and floats[1] == 1.5
    with pytest.raises(ValueError, match="min_mult"):
        BoundedAccumulator(2.0, 4.0)
    state = acc.state_dict()
    fresh = BoundedAccumulator(0.25, 4.0)
    fresh.load_state_dict(state)
    assert fresh.value == acc.value and not math.isnan(fresh.value)
