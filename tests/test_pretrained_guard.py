"""The given lr as a hint for pretrained weights: tensors that look trained start small, fresh ones do not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaptiverl.controllers.policy_rules import PRETRAINED_START_RMS, pretrained_start_scales
from adaptiverl.optim import OnlineAdamW
from adaptiverl.signals.weights import TRAINED_EDGE_RATIO, edge_ratio, trained_tensors


def _trained_like(n: int, m: int, seed: int) -> torch.Tensor:
    """Noise plus a few strong directions (what training leaves in a weight matrix), rms ~0.05."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, m, generator=g) * 0.03
    for k in range(4):
        w += (3.0 / (k + 1)) * 0.03 * torch.outer(torch.randn(n, generator=g), torch.randn(m, generator=g)) \
            / (n * m) ** 0.25
    return w * (0.05 / w.pow(2).mean().sqrt())


def test_edge_ratio_tells_fresh_inits_from_trained_matrices() -> None:
    g = torch.Generator().manual_seed(0)
    fresh = [torch.randn(256, 128, generator=g) * 0.02, torch.rand(64, 300, generator=g) - 0.5,
             nn.Linear(384, 96).weight, nn.Conv2d(8, 16, 3).weight, torch.nn.init.orthogonal_(torch.empty(50, 50))]
    for w in fresh:
        assert edge_ratio(w) < 1.05 < TRAINED_EDGE_RATIO, tuple(w.shape)
    assert edge_ratio(_trained_like(256, 128, 1)) > 1.5
    assert edge_ratio(torch.zeros(4, 4)) == 0.0
    # above the full-SVD size the power iteration reads the same
    big_fresh, big_trained = torch.randn(1100, 1000, generator=g), _trained_like(1100, 1000, 2)
    assert edge_ratio(big_fresh) < 1.05 and edge_ratio(big_trained) > 1.5


def test_one_dimensional_tensors_follow_the_majority_of_matrices() -> None:
    trained, fresh, bias = _trained_like(64, 64, 3), torch.randn(64, 8) * 0.1, torch.zeros(64)
    assert trained_tensors([trained, fresh, bias]) == [True, False, True]
    assert trained_tensors([torch.randn(64, 64), fresh, bias]) == [False, False, False]
    scales = pretrained_start_scales([trained, fresh], [1e-3, 1e-3])
    assert abs(scales[0] - PRETRAINED_START_RMS * 0.05 / 1e-3) < 1e-3 and scales[1] == 1.0
    assert pretrained_start_scales([trained], [1e-5]) == [1.0]  # a small lr is already a fine-tune lr


def _first_step_moves(pretrained_start: float | None) -> tuple[float, float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    with torch.no_grad():
        model[0].weight.copy_(_trained_like(64, 64, 4))  # the "pretrained" body; model[2] is a new head
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {} if pretrained_start is None else {"pretrained_start": pretrained_start}
    opt = OnlineAdamW(model.parameters(), lr=1e-3, weight_decay=0.0, **kwargs)
    x, y = torch.randn(32, 64), torch.randint(0, 4, (32,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.observe(loss=loss)
        opt.step()
    after = model.state_dict()
    body = (after["0.weight"] - before["0.weight"]).abs().mean().item()
    head = (after["2.weight"] - before["2.weight"]).abs().mean().item()
    return body, head, after


def test_pretrained_tensors_start_small_and_fresh_ones_do_not() -> None:
    body, head, _ = _first_step_moves(None)
    body_off, head_off, _ = _first_step_moves(0.0)
    # off: an AdamW step moves every element by ~lr (3 steps ~3e-3); on: the trained body ~8x less
    assert body_off > 1.5e-3 and body < body_off / 4
    assert head > 1.5e-3 and abs(head - head_off) < 0.2 * head_off


def test_from_scratch_training_is_untouched() -> None:
    def run(pretrained_start: float) -> list[torch.Tensor]:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
        opt = OnlineAdamW(model.parameters(), lr=1e-3, pretrained_start=pretrained_start)
        x = torch.randn(64, 16)
        for _ in range(5):
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.observe(loss=loss)
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(PRETRAINED_START_RMS), run(0.0), strict=True):
        assert torch.equal(a, b)


def test_bad_pretrained_start_is_named() -> None:
    with pytest.raises(ValueError, match="pretrained_start"):
        OnlineAdamW(nn.Linear(2, 2).parameters(), pretrained_start=-1.0)
