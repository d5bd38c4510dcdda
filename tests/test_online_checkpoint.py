"""Checkpoints written by the code before the controller moved out of the optimizer still load.

``tests/data/online_checkpoint_v1.pt`` was written by that code (``tests/data/make_online_checkpoint.py``
at commit 1564c68): each Online optimizer's state dict after 12 steps with the pretrained
controller, and the parameters and dynamics the old code reached 5 steps later. Today's code
loads the state dict and must reach the same parameters and dynamics: bit for bit for
OnlineRMSProp and OnlineAdamW; OnlineSGD's update with per-tensor lrs now runs in place
(``p.add_(d, alpha=-lr)``, as torch's SGD and the reference kernel do) instead of through a scaled
copy, which rounds the last bit differently (differences ~1e-8 relative after 5 steps).

The run feeds rewards, and since 2026-12-07 every tensor takes the same change of its scale once
rewards are fed (``SHARE_CHANGE_IN_RL``): the exact continuation is checked under the rule the
checkpoint was written with (the switch off), and the shipped rules (the shared change, and one
shared level since later on 2026-12-07) are checked to load the same state and continue from it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from adaptiverl.optim.online import OnlineAdamW, OnlineRMSProp, OnlineSGD

DATA = Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_online_checkpoint", DATA / "make_online_checkpoint.py")
old = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(old)


@pytest.mark.parametrize("cls", [OnlineSGD, OnlineRMSProp, OnlineAdamW], ids=lambda c: c.__name__)
def test_old_checkpoint_loads_and_continues_exactly(cls, monkeypatch):
    from adaptiverl.controllers import online as online_controller

    monkeypatch.setattr(online_controller, "SHARE_CHANGE_IN_RL", False)  # the rule it was written under
    entry = torch.load(DATA / "online_checkpoint_v1.pt", weights_only=True)[cls.__name__]
    net = old.model()
    net.load_state_dict(entry["model"])
    opt = old.make(cls, net.parameters())
    opt.load_state_dict(entry["optimizer"])
    old.run(net, opt, old.SAVED_AT, old.SAVED_AT + old.CONTINUE)
    exact = cls is not OnlineSGD
    for p, expected in zip(net.parameters(), entry["expected_params"], strict=True):
        if exact:
            assert torch.equal(p.detach(), expected)
        else:
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-9)
    summary = opt.dynamics()["summary"]
    for key, value in entry["expected_summary"].items():
        assert summary[key] == (value if exact else pytest.approx(value, rel=1e-6, abs=1e-9)), key


@pytest.mark.parametrize("level", [True, False], ids=["one_level", "offsets_kept"])
@pytest.mark.parametrize("cls", [OnlineSGD, OnlineRMSProp, OnlineAdamW], ids=lambda c: c.__name__)
def test_old_checkpoint_continues_under_the_shared_change_in_rl(cls, level, monkeypatch):
    """The shipped rules load the same state; from there every tensor's scale takes the same change
    (``SHARE_CHANGE_IN_RL``) and, since the shared level (``SHARE_LEVEL_IN_RL``), every tensor sits at
    one level, the geometric mean of the loaded scales moved by the shared changes; with the level
    rule off the loaded offsets are kept."""
    from adaptiverl.controllers import online as online_controller

    monkeypatch.setattr(online_controller, "SHARE_LEVEL_IN_RL", level)
    entry = torch.load(DATA / "online_checkpoint_v1.pt", weights_only=True)[cls.__name__]
    net = old.model()
    net.load_state_dict(entry["model"])
    opt = old.make(cls, net.parameters())
    opt.load_state_dict(entry["optimizer"])
    before = [t["delta_scale"] for t in opt.dynamics()["tensors"]]
    old.run(net, opt, old.SAVED_AT, old.SAVED_AT + old.CONTINUE)
    after = [t["delta_scale"] for t in opt.dynamics()["tensors"]]
    assert all(torch.isfinite(p).all() for p in net.parameters())
    if level:
        assert max(after) / min(after) == pytest.approx(1.0, rel=1e-4)  # one level for every tensor
    else:
        ratios = [a / b for a, b in zip(after, before, strict=True)]
        assert max(ratios) / min(ratios) == pytest.approx(1.0, rel=1e-4)  # one change for every tensor
        assert ratios[0] != 1.0
