"""Drop-in behaviour: with adaptation off the Online optimizers are torch's optimizers.

Also: the readable single-tensor reference kernels equal the fast path, with the
controller on, and bad arguments raise errors that name the argument.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from adaptiverl.optim.online import OnlineAdamW, OnlineRMSProp, OnlineSGD


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(64, 8, generator=gen), torch.randn(64, 3, generator=gen)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, observe: bool = False) -> None:
    """Full-batch regression; with ``maximize`` the objective is the negated loss."""
    x, y = _data()
    sign = -1.0 if opt.param_groups[0]["maximize"] else 1.0
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        (sign * loss).backward()
        if observe:
            opt.observe(loss=loss, reward=-loss.detach())
        opt.step()


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


CASES = [
    (OnlineSGD, torch.optim.SGD, {"lr": 0.05}),
    (OnlineSGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    (OnlineSGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (OnlineSGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "dampening": 0.3}),
    (OnlineSGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "maximize": True}),
    (OnlineSGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1, "foreach": False}),
    (OnlineRMSProp, torch.optim.RMSprop, {"lr": 0.01}),
    (OnlineRMSProp, torch.optim.RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5}),
    (OnlineRMSProp, torch.optim.RMSprop, {"lr": 0.01, "weight_decay": 0.05, "alpha": 0.9}),
    (OnlineRMSProp, torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.9, "maximize": True}),
    (OnlineRMSProp, torch.optim.RMSprop, {"lr": 0.01, "centered": True, "foreach": False}),
    (OnlineAdamW, torch.optim.AdamW, {"lr": 0.01}),
    (OnlineAdamW, torch.optim.AdamW, {"lr": 0.01, "amsgrad": True, "fused": True}),
    (OnlineAdamW, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.3, "betas": (0.8, 0.99)}),
    (OnlineAdamW, torch.optim.AdamW, {"lr": 0.01, "maximize": True, "eps": 1e-6}),
    (OnlineAdamW, torch.optim.AdamW, {"lr": 0.01, "amsgrad": True, "foreach": False}),
]


@pytest.mark.parametrize(("online_cls", "torch_cls", "kwargs"), CASES,
                         ids=[f"{c[0].__name__}-{'-'.join(f'{k}={v}' for k, v in c[2].items())}" for c in CASES])
def test_adapt_off_equals_torch_over_100_steps(online_cls, torch_cls, kwargs):
    ours, theirs = _model(), _model()
    _train(ours, online_cls(ours.parameters(), adapt=False, **kwargs), 100)
    torch_kwargs = dict(kwargs)
    if torch_cls is torch.optim.AdamW and kwargs.get("foreach") is not False:
        torch_kwargs["fused"] = True  # our fast path calls the same fused kernel
    _train(theirs, torch_cls(theirs.parameters(), **torch_kwargs), 100)
    assert _max_diff(ours, theirs) < 1e-6


@pytest.mark.parametrize("online_cls", [OnlineSGD, OnlineRMSProp, OnlineAdamW])
def test_reference_kernels_equal_fast_path_with_controller_on(online_cls):
    kwargs = {"lr": 0.01, "weight_decay": 0.01}
    if online_cls is not OnlineAdamW:
        kwargs["momentum"] = 0.9
    fast, ref = _model(), _model()
    opt_fast = online_cls(fast.parameters(), **kwargs)
    opt_ref = online_cls(ref.parameters(), foreach=False, **kwargs)
    _train(fast, opt_fast, 40, observe=True)
    _train(ref, opt_ref, 40, observe=True)
    assert _max_diff(fast, ref) < 1e-4  # float rounding fed back through 40 controller steps
    s_fast = opt_fast.dynamics()["summary"]
    s_ref = opt_ref.dynamics()["summary"]
    assert s_fast["delta_scale_mean"] == pytest.approx(s_ref["delta_scale_mean"], rel=1e-4)
    assert s_fast["delta_scale_max"] != pytest.approx(1.0, abs=1e-3)  # the controller really acted


@torch.no_grad()
def _apply_kernel(opt, kernel: str, grads: list[torch.Tensor], lrs: list[float], knobs: dict[str, float]) -> None:
    group = opt.param_groups[0]
    params = group["params"]
    states = [opt.state[p] for p in params]
    for p, g, state in zip(params, grads, states, strict=True):
        p.grad = g.clone()
        if not state:
            state.update(opt._init_state(p, group))
    getattr(opt, kernel)(group, params, [p.grad for p in params], states, lrs,
                         {k: knobs[k] for k in opt.KNOBS})


KERNEL_CASES = [(OnlineSGD, {}), (OnlineSGD, {"maximize": True}), (OnlineSGD, {"nesterov": True}),
                (OnlineRMSProp, {}), (OnlineRMSProp, {"maximize": True}), (OnlineRMSProp, {"centered": True}),
                (OnlineAdamW, {}), (OnlineAdamW, {"maximize": True}), (OnlineAdamW, {"amsgrad": True})]


@pytest.mark.parametrize(("online_cls", "flags"), KERNEL_CASES,
                         ids=[f"{c.__name__}-{'-'.join(f) or 'plain'}" for c, f in KERNEL_CASES])
def test_reference_kernel_equals_fast_kernel_for_given_lrs_and_knobs(online_cls, flags):
    """Kernel level: per-tensor lrs and non-default knob values, both kernels, same result."""
    base = {"lr": 0.01, "weight_decay": 0.1, **flags}
    if online_cls is not OnlineAdamW:
        base["momentum"] = 0.9
    knobs = {"momentum": 0.7, "weight_decay": 0.05, "alpha": 0.95, "beta1": 0.8, "beta2": 0.99}
    models = [_model(), _model()]
    opts = [online_cls(m.parameters(), adapt=False, **base) for m in models]
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in models[0].parameters()]
        lrs = (torch.rand(len(grads), generator=gen) * 0.02).tolist()
        _apply_kernel(opts[0], "_kernel_fast", grads, lrs, knobs)
        _apply_kernel(opts[1], "_kernel_reference", grads, lrs, knobs)
    assert _max_diff(*models) < 1e-6


def test_adapt_on_first_step_is_torch_step():
    """An untrained controller outputs scale 1: the first step is exactly torch's."""
    ours, theirs = _model(), _model()
    _train(ours, OnlineAdamW(ours.parameters(), lr=0.01, fused=True), 1)
    _train(theirs, torch.optim.AdamW(theirs.parameters(), lr=0.01, fused=True), 1)
    assert _max_diff(ours, theirs) == 0.0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"capturable": True}, "capturable"),
    ({"differentiable": True}, "differentiable"),
    ({"foreach": True, "fused": True}, "foreach"),
    ({"scale_bounds": (2.0, 10.0)}, "scale_bounds"),
    ({"finite_check": "sometimes"}, "finite_check"),
    ({"feature_sample_size": 0}, "feature_sample_size"),
    ({"beta2_bounds": (0.99, 0.9)}, "beta2_bounds"),
    ({"knob_scale_bounds": (1.5, 2.0)}, "knob_scale_bounds"),
    ({"lr": -1.0}, "lr"),
    ({"explore_std": -0.1}, "explore_std"),
])
def test_bad_arguments_name_the_culprit(kwargs, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        OnlineAdamW(_model().parameters(), **kwargs)


def test_sgd_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        OnlineSGD(_model().parameters(), lr=0.1, nesterov=True)


def test_sparse_gradient_is_rejected():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = OnlineSGD(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_params_without_grad_are_left_alone_and_rows_stay_aligned():
    model = _model()
    frozen = copy.deepcopy(model[0].weight.detach())
    opt = OnlineAdamW(model.parameters(), lr=0.01)
    x, y = _data()
    for step in range(6):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        if step % 2:
            model[0].weight.grad = None
        opt.step()
    assert not torch.equal(model[0].weight, frozen)  # stepped on even steps
    tensors = opt.dynamics()["tensors"]
    assert len(tensors) == 4
    assert all(t["delta_scale"] > 0 for t in tensors)


def test_complex_parameters_are_rejected_before_anything_changes():
    w = torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))
    before = w.detach().clone()
    opt = OnlineAdamW([w], lr=0.1)
    w.grad = torch.randn(4, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step()
    assert torch.equal(w.detach(), before)
