"""The Online optimizers as objects trusted code handles: copies, pickles, foreign state dicts,
absurd learning rates (issue 18 items 10, 12, 13 for OnlineSGD / OnlineRMSProp / OnlineAdamW)."""

from __future__ import annotations

import copy
import dataclasses
import io
import pickle
import warnings

import pytest
import torch

from adaptiverl.optim.online import OnlineAdamW, OnlineRMSProp, OnlineSGD

CLASSES = [OnlineSGD, OnlineRMSProp, OnlineAdamW]


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))


def _run(model, opt, start: int, stop: int, **feed) -> None:
    for step in range(start, stop):
        gen = torch.Generator().manual_seed(100 + step)
        x, y = torch.randn(32, 6, generator=gen), torch.randn(32, 2, generator=gen)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.observe(loss=loss.item(), reward=-loss.item(), **feed)
        opt.step()


def _make(cls, params, **kwargs):
    extra = {"momentum": 0.9} if cls is not OnlineAdamW else {}
    return cls(params, lr=0.01, total_steps=40, **extra, **kwargs)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_copied_or_pickled_optimizer_continues_identically(cls, how):
    model = _model()
    opt = _make(cls, model.parameters())
    _run(model, opt, 0, 6)
    pair = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    model2, opt2 = pair
    assert all(p2 is q for p2, q in zip(opt2.param_groups[0]["params"], list(model2.parameters())[:2], strict=False))
    _run(model, opt, 6, 16)
    _run(model2, opt2, 6, 16)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt.dynamics()["summary"] == opt2.dynamics()["summary"]


def test_torch_adamw_state_loads_into_online_adamw_and_the_controller_runs():
    model = _model()
    torch_opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    _run_torch(model, torch_opt, 3)
    opt = OnlineAdamW(model.parameters(), lr=0.01)  # adaptation on: reads the tunables every step
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    assert opt.param_groups[0]["hypergrad_weight"] == 1.0
    _run(model, opt, 0, 5)
    state = opt.state[next(model.parameters())]
    assert state["step"].item() == 8 and all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.dynamics()["summary"]["delta_scale_mean"] > 0


def _run_torch(model, opt, steps: int) -> None:
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize(("source", "target", "named"), [
    (OnlineSGD, OnlineAdamW, "OnlineSGD"),
    (OnlineAdamW, OnlineSGD, "OnlineAdamW"),
    (OnlineAdamW, OnlineRMSProp, "OnlineAdamW"),
    (torch.optim.SGD, OnlineAdamW, "torch.optim.SGD"),
    (torch.optim.AdamW, OnlineSGD, "torch.optim.AdamW"),
], ids=lambda c: getattr(c, "__name__", c))
def test_another_algorithms_state_is_refused_at_load_naming_both_classes(source, target, named):
    model = _model()
    if source.__module__.startswith("torch"):
        src = source(model.parameters(), lr=0.01, **({"momentum": 0.9} if source is torch.optim.SGD else {}))
        _run_torch(model, src, 2)
    else:
        src = _make(source, model.parameters())
        _run(model, src, 0, 2)
    saved = _roundtrip(src.state_dict())
    opt = _make(target, model.parameters())
    _run(model, opt, 0, 1)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=rf"{target.__name__}\.load_state_dict.*{named}"):
        opt.load_state_dict(saved)
    after = opt.state_dict()
    assert before["online"]["ctl"]["steps"] == after["online"]["ctl"]["steps"] == 1
    assert all(torch.equal(before["state"][k]["step" if target is not OnlineSGD else "momentum_buffer"],
                           after["state"][k]["step" if target is not OnlineSGD else "momentum_buffer"])
               for k in before["state"])


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_online_sgd_at_lr_1e3_keeps_momentum_and_controller_state_finite(momentum):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = OnlineSGD(model.parameters(), lr=1e3, momentum=momentum)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(60):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.observe(loss=loss)
            opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for state in opt.state.values():
        assert state.get("momentum_buffer") is None or torch.isfinite(state["momentum_buffer"]).all()
    ctl = opt.online_controller.state
    for f in dataclasses.fields(ctl.rows):
        assert torch.isfinite(getattr(ctl.rows, f.name).float()).all(), f.name
    assert torch.isfinite(ctl.knob_log_mult).all() and torch.isfinite(ctl.drift_ema).all()
    assert all(torch.isfinite(p).all() for p in opt.controller.parameters())
    assert opt.skipped_steps > 0  # the overflowing steps were skipped, not taken
