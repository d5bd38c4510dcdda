"""benchmarks/step_overhead.py plumbing (no timing asserted): shapes, state accounting, extras."""

from __future__ import annotations

import pytest
import torch

from benchmarks import step_overhead


def test_gpt2_small_shapes_are_148_tensors_and_124_4m_parameters():
    shapes = step_overhead.gpt2_shapes(**step_overhead.SHAPE_SETS["gpt2-small"])
    assert len(shapes) == 148
    assert sum(torch.Size(s).numel() for s in shapes) == 124_439_808
    small = step_overhead.gpt2_shapes(**step_overhead.SHAPE_SETS["gpt2-small/10"])
    assert len(small) == 148
    assert 11e6 < sum(torch.Size(s).numel() for s in small) < 13e6


def test_state_bytes_counts_optimizer_and_controller_tensors():
    params = [torch.nn.Parameter(torch.randn(100, 10)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p)
    adamw = torch.optim.AdamW(params, lr=1e-3)
    adamw.step()
    param_bytes = sum(p.numel() * 4 for p in params)
    assert param_bytes * 2 <= step_overhead.state_bytes(adamw) <= param_bytes * 2 + 3 * 64
    online = step_overhead.BUILTIN["OnlineAdamW"][0](params)
    online.step()
    controller = sum(t.numel() * 4 for t in online.controller.parameters())
    assert step_overhead.state_bytes(online) >= param_bytes * 2 + controller + 3 * 3 * 1000 * 4


def test_extra_optimizer_names_must_not_clash():
    with pytest.raises(ValueError, match="OnlineAdamW"):
        step_overhead.run(None, quick=True, extra={"OnlineAdamW": lambda p: torch.optim.SGD(p, lr=0.1)})
