"""The one SGD kernel: fast path == reference twin, == torch.optim.SGD, finite and deterministic in half precision."""

from __future__ import annotations

import itertools

import pytest
import torch

from adaptiverl.optim._kernels import sgd, sgd_multi_tensor, sgd_single_tensor

SETTINGS = [
    {"momentum": m, "dampening": d, "weight_decay": wd, "nesterov": n, "maximize": mx}
    for m, d, wd, n, mx in itertools.product((0.0, 0.9), (0.0, 0.3), (0.0, 1e-2), (False, True), (False, True))
    if not (n and (m == 0.0 or d != 0.0))
]


def _tensors(dtype: torch.dtype, seed: int = 0) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 2, 4)]
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(4)]
    return params, grads


def _run(kernel, dtype: torch.dtype, lrs: list[float], settings: dict, steps: int = 4) -> list[torch.Tensor]:
    params, grads = _tensors(dtype)
    bufs: list[torch.Tensor | None] = [None] * len(params)
    for t in range(steps):
        kernel(params, grads[t], bufs, lrs=lrs, **settings)
    return params + ([b for b in bufs if b is not None])


def _assert_within_ulps(a: torch.Tensor, b: torch.Tensor, ulps: int = 4) -> None:
    eps = torch.finfo(a.dtype).eps
    torch.testing.assert_close(a.float(), b.float(), rtol=ulps * eps, atol=ulps * eps)


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(i) for i in range(len(SETTINGS))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_foreach_equals_the_reference_with_one_lr_per_bucket(settings: dict, dtype: torch.dtype) -> None:
    fast = _run(sgd_multi_tensor, dtype, [0.05] * 3, settings)
    slow = _run(sgd_single_tensor, dtype, [0.05] * 3, settings)
    assert all(torch.isfinite(a).all() for a in fast)
    if dtype == torch.float32 or settings["momentum"] == 0.0:
        assert all(torch.equal(a, b) for a, b in zip(fast, slow, strict=True))  # bit for bit
    else:  # half on CPU: _foreach_mul_ and Tensor.mul_ round the momentum product differently
        for a, b in zip(fast, slow, strict=True):  # (torch.optim.SGD's own two paths differ alike)
            _assert_within_ulps(a, b)


@pytest.mark.parametrize("settings", SETTINGS[::3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_per_tensor_lrs_match_the_reference(settings: dict, dtype: torch.dtype) -> None:
    lrs = [0.05, 0.2, 1e-3]
    fast = _run(sgd_multi_tensor, dtype, lrs, settings)
    slow = _run(sgd_single_tensor, dtype, lrs, settings)
    for a, b in zip(fast, slow, strict=True):
        if dtype == torch.float32:  # in place, add_(alpha=-lr) per tensor as the reference: bit for bit
            assert torch.equal(a, b)
        else:
            _assert_within_ulps(a, b)
    # and each tensor really moved by its own rate: a zero rate leaves its tensor alone
    params, grads = _tensors(dtype)
    before = [p.clone() for p in params]
    sgd(params, grads[0], [None] * 3, lrs=[0.0, 0.1, 0.0], **settings)
    assert torch.equal(params[0], before[0]) and torch.equal(params[2], before[2])
    assert not torch.equal(params[1], before[1])


@pytest.mark.parametrize("settings", SETTINGS)
def test_equals_torch_sgd(settings: dict) -> None:
    params, grads = _tensors(torch.float32)
    twins = [p.clone().requires_grad_(True) for p in params]
    opt = torch.optim.SGD(twins, lr=0.05, foreach=False, **settings)
    bufs: list[torch.Tensor | None] = [None] * 3
    for t in range(4):
        for p, g in zip(twins, grads[t], strict=True):
            p.grad = g.clone()
        opt.step()
        sgd(params, grads[t], bufs, lrs=[0.05] * 3, **settings)
    if settings["momentum"] == 0.0 or settings["dampening"] != 0.0:
        assert all(torch.equal(a, b.detach()) for a, b in zip(params, twins, strict=True))
    else:  # the CPU's one-pass momentum (fused multiply-add) rounds once where torch rounds twice
        for a, b in zip(params, twins, strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)


def test_cpu_momentum_is_one_pass_and_close_to_torch() -> None:
    """With dampening 0 the buffer is written once per step (``torch.add(..., out=buf)``), and
    stays within float32 rounding of torch's two-step ``mul_().add_()`` over many steps."""
    params, grads = _tensors(torch.float32)
    ours = [p.clone() for p in params]
    bufs: list[torch.Tensor | None] = [None] * 3
    calls: list[str] = []
    real_add = torch.add

    def counting_add(*args, **kwargs):
        calls.append("out" if "out" in kwargs else "plain")
        return real_add(*args, **kwargs)

    torch.add = counting_add
    try:
        for t in range(4):
            sgd(ours, grads[t], bufs, lrs=[0.05, 0.1, 0.2], momentum=0.9)
    finally:
        torch.add = real_add
    assert calls.count("out") == 3 * 3  # every step after the first, one pass per tensor
    twins = [p.clone().requires_grad_(True) for p in params]
    opt = torch.optim.SGD(twins, lr=0.05, momentum=0.9, foreach=False)
    ours = [p.clone() for p in params]
    bufs = [None] * 3
    for t in range(4):
        for p, g in zip(twins, grads[t], strict=True):
            p.grad = g.clone()
        opt.step()
        sgd(ours, grads[t], bufs, lrs=[0.05] * 3, momentum=0.9)
    for a, b in zip(ours, twins, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_deterministic_and_tracks_float32(dtype: torch.dtype) -> None:
    settings = {"momentum": 0.9, "dampening": 0.0, "weight_decay": 1e-2, "nesterov": True, "maximize": False}
    first = _run(sgd, dtype, [0.01, 0.02, 0.03], settings, steps=4)
    second = _run(sgd, dtype, [0.01, 0.02, 0.03], settings, steps=4)
    assert all(torch.isfinite(t).all() and torch.equal(t, u) for t, u in zip(first, second, strict=True))
    full = _run(sgd, torch.float32, [0.01, 0.02, 0.03], settings, steps=4)
    for half, ref in zip(first, full, strict=True):
        torch.testing.assert_close(half.float(), ref, rtol=0.05, atol=0.05)


def test_mixed_dtypes_are_bucketed_and_buffers_written_back() -> None:
    params = [torch.ones(3), torch.ones(2, dtype=torch.float16), torch.ones(4)]
    grads = [torch.full_like(p, 0.5) for p in params]
    bufs: list[torch.Tensor | None] = [None, None, None]
    sgd(params, grads, bufs, lrs=[0.1, 0.2, 0.3], momentum=0.9)
    assert [b.dtype for b in bufs] == [torch.float32, torch.float16, torch.float32]  # type: ignore[union-attr]
    assert [p[0].item() for p in params] == pytest.approx([0.95, 0.9, 0.85], abs=1e-3)


def test_bad_arguments_name_the_culprit() -> None:
    p = [torch.zeros(2)]
    with pytest.raises(ValueError, match="one entry per tensor"):
        sgd(p, p, [None], lrs=[0.1, 0.2])
    with pytest.raises(ValueError, match="nesterov"):
        sgd(p, p, [None], lrs=[0.1], momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="weight_decay"):
        sgd(p, p, [None], lrs=[0.1], weight_decay=-1.0)


# ---- every algorithm's implementations through the one dispatcher ---------------------------------

DISPATCH_CASES = [
    ("sgd", "multi_tensor", {"momentum": 0.9, "weight_decay": 0.01}, {"dampening": 0.0, "nesterov": True}),
    ("rmsprop", "multi_tensor", {"alpha": 0.95, "momentum": 0.5, "weight_decay": 0.01}, {"eps": 1e-8, "centered": True}),
    ("rmsprop", "multi_tensor", {"alpha": 0.99, "momentum": 0.0, "weight_decay": 0.0}, {"eps": 1e-8, "centered": False}),
    ("adamw", "multi_tensor", {"beta1": 0.8, "beta2": 0.99, "weight_decay": 0.1}, {"eps": 1e-8, "amsgrad": False}),
    ("adamw", "multi_tensor", {"beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0}, {"eps": 1e-6, "amsgrad": True}),
    ("adamw", "fused", {"beta1": 0.8, "beta2": 0.99, "weight_decay": 0.1}, {"eps": 1e-8, "amsgrad": True}),
]


def _states(algorithm: str, params: list[torch.Tensor], group: dict) -> list[dict]:
    out = []
    for p in params:
        if algorithm == "sgd":
            out.append({"momentum_buffer": None})
        elif algorithm == "rmsprop":
            out.append({"step": torch.tensor(0.0), "square_avg": torch.zeros_like(p),
                        "momentum_buffer": torch.zeros_like(p), "grad_avg": torch.zeros_like(p)})
        else:
            out.append({"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p),
                        "max_exp_avg_sq": torch.zeros_like(p)})
    return out


@pytest.mark.parametrize(("algorithm", "impl", "knobs", "options"), DISPATCH_CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(DISPATCH_CASES)])
@pytest.mark.parametrize("maximize", [False, True])
def test_every_implementation_equals_the_single_tensor_one_with_per_tensor_lrs(algorithm, impl, knobs, options,
                                                                                maximize) -> None:
    from adaptiverl.optim._kernels import apply_update

    group = {**options, "maximize": maximize}
    lrs = [0.05, 0.2, 1e-3]
    results = []
    for kind in (impl, "single_tensor"):
        params, grads = _tensors(torch.float32)
        states = _states(algorithm, params, group)
        for t in range(4):
            apply_update(algorithm, kind, params, grads[t], states, lrs=lrs, knobs=knobs, group=group)
        results.append(params)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(results[0][0], _tensors(torch.float32)[0][0])  # the kernels did step


def test_dispatcher_names_a_missing_kernel() -> None:
    from adaptiverl.optim._kernels import apply_update

    with pytest.raises(ValueError, match="'fused' kernel for 'sgd'"):
        apply_update("sgd", "fused", [], [], [], lrs=[], knobs={}, group={})
