"""Held-out pooling (``controllers.online.EVAL_POOL_RATE``): in a supervised run fed a validation loss
(``observe(eval_loss=)``), two readings in a row above 1.01x the best so far make every step pull each
tensor's own move since its start back towards the tensors' common move; a reading back within the
margin stops it. Readings that keep improving change nothing, RL runs ignore it, and it is saved with the
optimizer's state."""

from __future__ import annotations

import copy
import math

import torch

from adaptiverl.controllers import online
from adaptiverl.optim.online import OnlineAdamW


def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    y = torch.tanh(x @ torch.randn(16, 1, generator=gen))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    return x, y, model


def _steps(opt: OnlineAdamW, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int,
           evals: dict[int, float] | None = None, reward: bool = False, start: int = 0) -> None:
    """``n`` steps; ``evals[i]`` is fed as ``eval_loss`` before step ``start + i``."""
    for i in range(start, start + n):
        if evals and i in evals:
            opt.observe(eval_loss=evals[i])
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.observe(loss=loss, reward=-loss.item() if reward else None)
        opt.step()


def _own_moves(opt: OnlineAdamW) -> torch.Tensor:
    """Each row's move since its start minus the rows' mean move."""
    ctl = opt.online_controller.state
    moved = ctl.rows.log_scale - ctl.start_log_scale
    return moved - moved.mean()


def _run(n: int, evals: dict[int, float] | None = None, reward: bool = False) -> tuple[OnlineAdamW, torch.nn.Module]:
    x, y, model = _problem()
    opt = OnlineAdamW(model.parameters(), lr=3e-3)
    _steps(opt, model, x, y, n, evals, reward)
    return opt, model


def test_shipped_rate_margin_and_patience() -> None:
    assert online.EVAL_POOL_RATE == 0.02 and online.EVAL_POOL_MARGIN == 0.01 and online.EVAL_POOL_PATIENCE == 2


def test_improving_eval_losses_change_nothing() -> None:
    plain, plain_model = _run(40)
    fed, fed_model = _run(40, evals={i: 1.0 - 0.01 * i for i in range(5, 40, 5)})
    assert torch.equal(plain.online_controller.log_scales(), fed.online_controller.log_scales())
    for a, b in zip(plain_model.parameters(), fed_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fed.online_controller.state.eval_count == 7 and not fed.online_controller.state.eval_pooling


def test_the_gate_opens_above_the_margin_and_closes_within_it() -> None:
    opt, _ = _run(2)
    ctl, gate = opt.online_controller.state, opt.online_controller.heldout_gate
    seen = []
    for value in (1.0, 1.02, 1.02, 1.03, 1.005, 0.9, 0.95, 0.96, 0.905):
        opt.observe(eval_loss=value)
        seen.append(gate(opt.signals))
        assert gate(opt.signals) == seen[-1]  # no new reading: the gate holds
    assert seen == [False, False, True, True, False, False, False, True, False]  # the second one in a row
    assert ctl.eval_best == 0.9 and ctl.eval_count == 9


def test_a_worse_eval_loss_pools_the_rows_own_moves() -> None:
    evals = {5: 1.0, 30: 1.2, 31: 1.2}
    open_, _ = _run(70, evals=evals)
    within, _ = _run(70, evals={5: 1.0, 30: 1.005, 31: 1.2})  # one reading over the margin: as if never fed
    plain, _ = _run(70)
    assert torch.equal(within.online_controller.log_scales(), plain.online_controller.log_scales())
    assert open_.online_controller.state.eval_pooling
    spread_open = float(_own_moves(open_).abs().max())
    spread_plain = float(_own_moves(plain).abs().max())
    assert spread_plain > 0.1 and spread_open < 0.7 * spread_plain


def test_pooling_keeps_the_start_pattern_and_the_common_move() -> None:
    opt, _ = _run(10)
    controller = opt.online_controller
    ctl = controller.state
    start = torch.linspace(-2.0, 0.0, ctl.num_rows)  # a pretrained guard's per-tensor start
    ctl.start_log_scale = start.clone()
    own = torch.linspace(0.5, -0.5, ctl.num_rows)
    log_scale = start + 0.3 + own  # a common move of 0.3 and each row's own move
    once = controller.pool_to_start(log_scale, None)
    assert torch.allclose(once, start + 0.3 + own * (1.0 - online.EVAL_POOL_RATE), atol=1e-6)
    for _ in range(1000):
        log_scale = controller.pool_to_start(log_scale, None)
    assert torch.allclose(log_scale, start + 0.3, atol=1e-5)  # the pattern kept, the own moves gone


def test_rl_runs_ignore_the_eval_loss() -> None:
    plain, _ = _run(30, reward=True)
    fed, _ = _run(30, evals={5: 1.0, 10: 2.0, 11: 2.0}, reward=True)
    assert torch.equal(plain.online_controller.log_scales(), fed.online_controller.log_scales())


def test_pooling_state_resumes_exactly() -> None:
    evals = {5: 1.0, 20: 1.2, 21: 1.2}
    x, y, model = _problem()
    opt = OnlineAdamW(model.parameters(), lr=3e-3)
    _steps(opt, model, x, y, 25, evals)
    assert opt.online_controller.state.eval_pooling
    model_copy = copy.deepcopy(model)
    saved = copy.deepcopy(opt.state_dict())
    _steps(opt, model, x, y, 15, start=25)
    resumed = OnlineAdamW(model_copy.parameters(), lr=3e-3)
    resumed.load_state_dict(saved)
    _steps(resumed, model_copy, x, y, 15, start=25)
    assert torch.equal(opt.online_controller.log_scales(), resumed.online_controller.log_scales())
    ctl = resumed.online_controller.state
    assert ctl.eval_pooling and ctl.eval_best == 1.0 and ctl.start_log_scale is not None


def test_a_state_saved_before_heldout_pooling_takes_its_pattern_as_it_is() -> None:
    x, y, model = _problem()
    opt = OnlineAdamW(model.parameters(), lr=3e-3)
    _steps(opt, model, x, y, 20)
    saved = copy.deepcopy(opt.state_dict())
    for key in ("start_log_scale", "eval_count", "eval_best", "eval_pooling", "eval_worse"):
        del saved["online"]["ctl"][key]
    old = OnlineAdamW(model.parameters(), lr=3e-3)
    old.load_state_dict(saved)
    ctl = old.online_controller.state
    assert ctl.start_log_scale is None and ctl.eval_best == math.inf and not ctl.eval_pooling
    _steps(old, model, x, y, 2, evals={20: 1.0, 21: 1.5}, start=20)
    assert ctl.start_log_scale is None  # not needed until pooling acts
    before = ctl.rows.log_scale.clone()  # the pattern when it first acts
    _steps(old, model, x, y, 2, evals={22: 1.5}, start=22)
    assert ctl.eval_pooling
    assert torch.equal(ctl.start_log_scale, before)


def test_switched_off_nothing_pools(monkeypatch) -> None:
    monkeypatch.setattr(online, "EVAL_POOL_RATE", None)
    off, _ = _run(70, evals={5: 1.0, 30: 1.2, 31: 1.2})
    monkeypatch.undo()
    plain, _ = _run(70)
    assert torch.equal(off.online_controller.log_scales(), plain.online_controller.log_scales())
