"""AdaptiveOptimizer: wraps any torch optimizer, touches only its knobs, composes with LambdaLR."""

from __future__ import annotations

import copy
import random
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from adaptiverl.optim.adaptive_optimizer import AdaptiveOptimizer


def _regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Linear(8, 1)
    x = torch.randn(128, 8)
    y = x @ torch.randn(8, 1) + 0.01 * torch.randn(128, 1)
    return model, x, y


def _train(opt: AdaptiveOptimizer, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
           steps: int, reward: Callable[[int], float] | None = None) -> list[float]:
    losses = []
    for t in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step_loss(loss)
        if reward is not None:
            opt.step_reward(reward(t))
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _transformers_adafactor(params: object) -> torch.optim.Optimizer:
    from transformers.optimization import Adafactor
    return Adafactor(params, lr=1e-2, relative_step=False, scale_parameter=False, warmup_init=False)


OPTIMIZERS = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=1e-4), {"momentum", "weight_decay"}),
    "adamw": (lambda p: torch.optim.AdamW(p, lr=1e-2), {"beta1", "beta2", "weight_decay"}),
    "rmsprop": (lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, weight_decay=1e-4),
                {"alpha", "momentum", "weight_decay"}),
    "adagrad": (lambda p: torch.optim.Adagrad(p, lr=0.1, weight_decay=1e-4), {"weight_decay"}),
    "torch_adafactor": (lambda p: torch.optim.Adafactor(p, lr=0.1, weight_decay=1e-4), {"weight_decay"}),
    "hf_adafactor": (_transformers_adafactor, set()),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_wraps_each_optimizer_and_only_touches_its_knobs(kind: str) -> None:
    factory, knobs = OPTIMIZERS[kind]
    model, x, y = _regression()
    base = factory(model.parameters())
    before = [set(group) for group in base.param_groups]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = AdaptiveOptimizer(base, lr_rule="trend+variance", momentum_rule="relative",
                                betas_rule=("relative", "variance"), alpha_rule="stable", wd_rule="trend")
    ignored = {str(w.message).split("'")[1] for w in caught if "is ignored" in str(w.message)}
    wanted = {"momentum", "beta1", "beta2", "alpha", "weight_decay"}
    assert ignored == wanted - knobs  # told about every rule it cannot apply, and only those
    losses = _train(opt, model, x, y, 60)
    assert [set(group) for group in base.param_groups] == before  # no key added (Adagrad: no momentum)
    assert losses[-1] < 0.5 * losses[0]
    summary = opt.dynamics()["summary"]
    assert summary["lr"] == opt.lr and summary["mult_lr"] > 1.0  # steady improvement: LR up
    if "momentum" in knobs:
        assert base.defaults["momentum"] < opt.momentum < 1.0  # improving: longer momentum horizon
    if "beta1" in knobs:
        beta1, beta2 = opt.betas
        assert 0.9 < beta1 < 1.0 and 0.999 <= beta2 < 1.0  # improving: longer beta1 horizon


def test_adagrad_momentum_rule_adds_no_momentum_key() -> None:
    model, x, y = _regression()
    with pytest.warns(UserWarning, match="Adagrad has no .*'momentum'.*ignored"):
        opt = AdaptiveOptimizer(torch.optim.Adagrad(model.parameters(), lr=0.1), momentum_rule="inverse")
    _train(opt, model, x, y, 5)
    assert "momentum" not in opt.param_groups[0]
    with pytest.raises(AttributeError, match="momentum"):
        _ = opt.momentum


def test_lr_too_low_is_raised_and_diverging_loss_lowers_it() -> None:
    model, x, y = _regression()
    opt = AdaptiveOptimizer(torch.optim.SGD(model.parameters(), lr=1e-4), lr_rule="trend")
    _train(opt, model, x, y, 80)
    assert opt.lr > 1e-3  # steady improvement: the trend rule grows the LR
    opt2 = AdaptiveOptimizer(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), lr_rule="trend")
    for t in range(60):  # a cut at most every cooldown + 1 = 6 steps (the window's quarter)
        opt2.step_loss(1.0 * 1.05 ** t)
        opt2.step()
    assert opt2.lr < 0.01


def test_reward_trend_moves_lr_with_the_reward() -> None:
    lrs = {}
    for direction in (1.0, -1.0):
        model, x, y = _regression()
        opt = AdaptiveOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), lr_rule=None, reward_rule="trend")
        _train(opt, model, x, y, 40, reward=lambda t, d=direction: 1.0 + d * 0.05 * t)
        lrs[direction] = opt.lr
    assert lrs[1.0] > 1e-3 > lrs[-1.0]


def test_composes_with_lambda_lr_instead_of_being_undone() -> None:
    model, x, y = _regression()
    base = torch.optim.SGD(model.parameters(), lr=0.01)
    used: list[float] = []
    base.register_step_pre_hook(lambda o, args, kwargs: used.append(o.param_groups[0]["lr"]))
    opt = AdaptiveOptimizer(base, lr_rule="trend")
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + 0.1 * t))
    mults = []
    for _ in range(50):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step_loss(loss)
        opt.step()
        mults.append(opt.multipliers["lr"])
        opt.zero_grad()
        schedule.step()
    expected = [0.01 / (1.0 + 0.1 * t) * m for t, m in enumerate(mults)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert opt.lr == used[-1] != opt.param_groups[0]["lr"]  # the view reports what the step used
    assert max(mults) > 1.5  # the controller really acted, and the schedule did not erase it


def test_state_dict_round_trip_continues_identically() -> None:
    def make() -> tuple[AdaptiveOptimizer, nn.Module]:
        model, _, _ = _regression()
        opt = AdaptiveOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), lr_rule="trend+cosine_restart",
                                betas_rule=("relative", None), wd_rule="trend", reward_rule="scaling",
                                cycle_length=10)
        return opt, model

    _, x, y = _regression()
    first, model = make()
    _train(first, model, x, y, 25, reward=lambda t: 0.1 * t)
    second, model2 = make()
    model2.load_state_dict(model.state_dict())
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    a = _train(first, model, x, y, 15, reward=lambda t: random.Random(t).random())
    b = _train(second, model2, x, y, 15, reward=lambda t: random.Random(t).random())
    assert a == b and first.lr == second.lr and first.betas == second.betas and first.wd == second.wd


def test_bad_arguments_name_the_culprit() -> None:
    params = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="unknown lr rule 'tren'.*valid names"):
        AdaptiveOptimizer(torch.optim.SGD(params, lr=0.1), lr_rule="tren")
    with pytest.raises(ValueError, match="betas_rule must be a pair"):
        AdaptiveOptimizer(torch.optim.AdamW(params), betas_rule="relative")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a torch.optim.Optimizer"):
        AdaptiveOptimizer(object())  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes 8-bit optimizers need a CUDA device")
def test_bitsandbytes_8bit_adamw() -> None:
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    torch.manual_seed(0)
    model = nn.Linear(256, 256).cuda()
    x = torch.randn(64, 256, device="cuda")
    y = x @ torch.randn(256, 256, device="cuda") * 0.1
    opt = AdaptiveOptimizer(bnb.optim.AdamW8bit(model.parameters(), lr=1e-3), lr_rule="trend",
                            betas_rule=("relative", "variance"), wd_rule="trend")
    losses = _train(opt, model, x, y, 50)
    assert losses[-1] < losses[0] and opt.lr != 1e-3 and 0.0 < opt.betas[0] < 1.0


def test_other_attributes_pass_through_to_the_wrapped_optimizer() -> None:
    schedulefree = pytest.importorskip("schedulefree")
    model, x, y = _regression()
    base = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-2)
    opt = AdaptiveOptimizer(base, lr_rule="trend")
    opt.train()  # schedule-free's own mode switch, reached through the wrapper
    assert base.param_groups[0]["train_mode"] is True
    seen: list[int] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(1))
    losses = _train(opt, model, x, y, 20)
    opt.eval()
    assert base.param_groups[0]["train_mode"] is False and len(seen) == 20 and losses[-1] < losses[0]
    restored = copy.deepcopy(opt)
    assert restored.optimizer is not base and restored.lr == opt.lr


def test_huge_alternating_losses_do_not_overflow_the_variance_rule():
    w = torch.nn.Parameter(torch.ones(4))
    opt = AdaptiveOptimizer(torch.optim.AdamW([w], lr=1e-3), lr_rule="trend+variance")
    for i in range(30):
        w.grad = torch.ones(4)
        opt.observe(loss=1e200 if i % 2 else -1e200)
        opt.step()
    assert torch.isfinite(w).all()


def _nan_step(wrapper_kind: str, finite_check: str | None):
    from adaptiverl.optim import OptimizerWrapper, PlateauMetaOptimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    options = {} if finite_check is None else {"finite_check": finite_check}
    opt = (AdaptiveOptimizer(inner, **options) if wrapper_kind == "AdaptiveOptimizer"
           else OptimizerWrapper(inner, PlateauMetaOptimizer(), **options))
    x = torch.randn(4, 3)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.observe(loss=1.0)
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [inner.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    model.weight.grad[0, 1] = float("inf")
    return model, inner, opt, before, buffers


@pytest.mark.parametrize("wrapper_kind", ["AdaptiveOptimizer", "OptimizerWrapper"])
def test_wrappers_behave_as_the_wrapped_optimizer_on_non_finite_gradients_unless_asked(wrapper_kind):
    model, _, opt, _, _ = _nan_step(wrapper_kind, None)
    opt.step()  # default: what torch.optim.SGD does with an inf gradient
    assert not torch.isfinite(model.weight).all() and opt.skipped_steps == 0

    model, inner, opt, before, buffers = _nan_step(wrapper_kind, "full")
    with pytest.warns(RuntimeWarning, match=f"{wrapper_kind}: non-finite gradient, step skipped"):
        opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert all(torch.equal(inner.state[p]["momentum_buffer"], b)
               for p, b in zip(model.parameters(), buffers, strict=True))
    opt.zero_grad()
    model(torch.ones(3)).sum().backward()
    opt.step()  # a finite step goes through
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    with pytest.raises(ValueError, match="finite_check must be one of"):
        AdaptiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), finite_check="maybe")
