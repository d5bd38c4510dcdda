"""The ablation's plumbing: its anchor row reproduces torch SGD and every row builds and steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks import enhanced_sgd_ablation as ablation
from benchmarks.tasks import get_tasks, train


def test_all_off_row_reproduces_torch_sgd_on_a_real_task():
    task = get_tasks(quick=True)["digits_mlp"]
    reference = train(task, ablation.method("torch_sgd"), lr=0.1, seed=0)
    anchor = train(task, ablation.method("all_off"), lr=0.1, seed=0)
    assert anchor.losses == pytest.approx(reference.losses, rel=1e-5)
    assert anchor.final_eval_loss == pytest.approx(reference.final_eval_loss, rel=1e-5)
    assert reference.losses[-1] < reference.losses[0]


def test_every_row_builds_a_driver_that_changes_the_weights():
    assert set(ablation.ALL_ON) >= {"q_learning", "lookahead_k", "gradient_clipping", "bayesian_init"}
    for config in ablation.CONFIGS:
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        before = [p.detach().clone() for p in model.parameters()]
        driver = ablation.method(config).build(list(model.parameters()), 0.1, 10)
        loss = model(torch.randn(8, 4)).pow(2).mean()
        driver.zero_grad()
        loss.backward()
        driver.step(loss.detach())
        moved = max((p - b).abs().max().item() for p, b in zip(model.parameters(), before, strict=True))
        assert moved > 0, config
