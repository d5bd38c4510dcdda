"""Each front end in its seed's own usage example helps, or at least does not hurt, against its baseline.

The data: seed 003's toy regression (``X ~ N(0, I_10)``, ``y = X w + 0.1 eps``, 512 points,
minibatches of 64, shuffled by a seeded generator); the model: seed 003's ``10 -> 32 -> 1`` MLP
(seed 000's ``10 -> 50 -> 1`` for EnhancedSGD). Each example is driven exactly as its seed's usage
shows; the baseline is the same optimizer left alone on the same batches. Figures: full-data MSE
after the run (``python -m tests.test_seed_examples`` prints them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from adaptiverl.optim import (
    AdaptiveOptimizer,
    AdaptiveScheduler,
    EnhancedSGD,
    OptimizerWrapper,
    PlateauMetaOptimizer,
)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=gen)
    return x, x @ torch.randn(10, 1, generator=gen) + 0.1 * torch.randn(512, 1, generator=gen)


def _batches(x: torch.Tensor, y: torch.Tensor, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    done = 0
    while done < steps:
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            if done == steps:
                return
            index = order[start:start + 64]
            yield x[index], y[index]
            done += 1


def _model(hidden: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def _final(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return F.mse_loss(model(x), y).item()


def adaptive_optimizer(adapt: bool, steps: int = 200) -> float:
    """Seed 001's usage: AdamW(lr=1e-3, weight_decay=0.01) wrapped with the seed's rules."""
    x, y = _data()
    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    opt: Any = AdaptiveOptimizer(base, lr_rule="trend+variance", betas_rule=("relative", "variance"),
                                 wd_rule="trend", reward_rule="trend", cycle_length=500, cycle_mult=2) \
        if adapt else base
    for xb, yb in _batches(x, y, steps):
        loss = F.mse_loss(model(xb), yb)
        loss.backward()
        if adapt:
            opt.step_loss(loss)
            opt.step_reward(1.0 / (1.0 + loss.item()))
        opt.step()
        opt.zero_grad()
    return _final(model, x, y)


def adaptive_scheduler(adapt: bool, epochs: int = 5) -> float:
    """Seed 003's demo ``main()``: SGD(lr=0.05, momentum=0.9), five epochs, ``step_loss`` after each step."""
    x, y = _data()
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = AdaptiveScheduler(optimizer, up_factor=1.03, down_factor=0.8, patience=20, cooldown=40,
                                  use_cosine=True, T0=100, T_mult=2, lr_min=1e-5, lr_max=1.0) if adapt else None
    for xb, yb in _batches(x, y, epochs * 8):
        optimizer.zero_grad()
        loss = F.mse_loss(model(xb), yb)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step_loss(loss)
    return _final(model, x, y)


def plateau_meta(adapt: bool, steps: int = 200) -> tuple[float, float]:
    """Seed 004's usage: AdamW(lr=1e-3), PlateauMetaOptimizer(patience=3, lr_factor=0.5), per step.

    Returns the final loss and the final LR. The baseline clips the gradients exactly as the
    seed's metrics line does (``clip_grad_norm_(..., 1.0)``), so it differs only by the strategy.
    """
    x, y = _data()
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wrapped: Any = OptimizerWrapper(optimizer, PlateauMetaOptimizer(patience=3, lr_factor=0.5)) if adapt else optimizer
    for xb, yb in _batches(x, y, steps):
        loss = F.mse_loss(model(xb), yb)
        wrapped.zero_grad()
        loss.backward()
        metrics = {"loss": loss.item(), "lr": wrapped.param_groups[0]["lr"],
                   "grad_norm": torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)}
        if adapt:
            wrapped.update_hyperparameters(metrics)
        wrapped.step()
    return _final(model, x, y), wrapped.param_groups[0]["lr"]


def enhanced_sgd(adapt: bool, epochs: int = 100) -> float:
    """Seed 000's usage: EnhancedSGD(lr=0.01, momentum=0.9, ...) vs torch SGD(lr=0.01, momentum=0.9)."""
    x, y = _data()
    model = _model(hidden=50)
    optimizer: Any = (EnhancedSGD(params=model.parameters(), lr=0.01, momentum=0.9, smoothing_factor=0.1,
                                  entropy_weight=0.1, adaptive_momentum=True) if adapt
                      else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    for epoch in range(1, epochs + 1):
        for xb, yb in _batches(x, y, 1):
            optimizer.zero_grad()
            loss = F.mse_loss(model(xb), yb)
            loss.backward()
            if adapt:
                optimizer.step(closure=lambda loss=loss: loss, current_epoch=epoch)
            else:
                optimizer.step()
    return _final(model, x, y)


EXAMPLES: dict[str, Callable[[bool], Any]] = {
    "001 AdaptiveOptimizer": adaptive_optimizer, "003 AdaptiveScheduler": adaptive_scheduler,
    "004 PlateauMetaOptimizer": lambda adapt: plateau_meta(adapt)[0], "000 EnhancedSGD": enhanced_sgd,
}


def test_adaptive_optimizer_helps_in_seed_001s_example() -> None:
    assert adaptive_optimizer(True) <= adaptive_optimizer(False)


def test_adaptive_scheduler_does_not_hurt_in_seed_003s_demo() -> None:
    assert adaptive_scheduler(True) <= adaptive_scheduler(False)


def test_plateau_strategy_driven_per_step_does_not_halt_training() -> None:
    ours, lr = plateau_meta(True)
    alone, _ = plateau_meta(False)
    assert ours <= alone  # the seed's usage no longer halves the LR on minibatch noise
    assert lr > 1e-4  # (before: 1e-7 after 200 steps, the loss 20x AdamW's)


def test_plateau_strategy_still_cuts_a_real_plateau() -> None:
    opt = OptimizerWrapper(torch.optim.AdamW([nn.Parameter(torch.ones(2))], lr=1e-3),
                           PlateauMetaOptimizer(patience=3, lr_factor=0.5))
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):  # flat loss with 20% minibatch noise: no progress at all
        opt.update_hyperparameters({"loss": 1.0 + 0.2 * torch.randn((), generator=gen).item()})
        opt.step()
    assert opt.param_groups[0]["lr"] <= 0.5e-3  # the significance margin does not shelter pure noise


def test_plateau_strategy_counts_patience_in_calls_like_reduce_lr_on_plateau() -> None:
    """Seed 004 calls the strategy once per epoch: patience 3 means three epochs. On an exactly
    flat loss the LR follows torch's ReduceLROnPlateau call for call (before: untouched for 80)."""
    ours = OptimizerWrapper(torch.optim.AdamW([nn.Parameter(torch.ones(2))], lr=1e-3),
                            PlateauMetaOptimizer(patience=3, lr_factor=0.5))
    torch_opt = torch.optim.AdamW([nn.Parameter(torch.ones(2))], lr=1e-3)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_opt, patience=3, factor=0.5)
    ours_lrs, torch_lrs = [], []
    for _ in range(20):
        ours.update_hyperparameters({"loss": 0.7})
        ours.step()
        reference.step(0.7)
        ours_lrs.append(ours.param_groups[0]["lr"])
        torch_lrs.append(torch_opt.param_groups[0]["lr"])
    assert ours_lrs == pytest.approx(torch_lrs, rel=1e-12)
    assert ours_lrs[3] == 1e-3 and ours_lrs[4] == 0.5e-3  # the 5th call: 4 calls without progress


def test_enhanced_sgd_defaults_equal_sgd_in_seed_000s_example() -> None:
    assert abs(enhanced_sgd(True) - enhanced_sgd(False)) < 1e-6


if __name__ == "__main__":
    for name, run in EXAMPLES.items():
        print(f"{name}: ours {run(True):.4f} vs baseline {run(False):.4f}")
