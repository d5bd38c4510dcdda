"""The cost structure of an Online step: one host sync per step, whatever is fed."""

from __future__ import annotations

import pytest
import torch

from adaptiverl.optim.online import OnlineAdamW, OnlineRMSProp, OnlineSGD

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__")


def _syncs_in_one_step(cls, monkeypatch, feed: dict, finite_check: str = "auto") -> int:
    params = [torch.nn.Parameter(torch.randn(5, 7)) for _ in range(6)]
    opt = cls(params, lr=0.01, finite_check=finite_check)
    calls = {"n": 0}
    for step in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.observe(loss=1.0 / (step + 1), **feed)
        if step < 2:
            opt.step()
            continue
        with monkeypatch.context() as patch:
            for name in SYNCS:
                original = getattr(torch.Tensor, name)

                def counting(self, *args, _original=original, **kwargs):
                    calls["n"] += 1
                    return _original(self, *args, **kwargs)

                patch.setattr(torch.Tensor, name, counting)
            opt.step()
    return calls["n"]


@pytest.mark.parametrize("cls", [OnlineSGD, OnlineRMSProp, OnlineAdamW], ids=lambda c: c.__name__)
@pytest.mark.parametrize(("feed", "finite_check"), [({"grad_norm": 1.0}, "auto"), ({}, "auto"), ({}, "full"),
                                                    ({}, "sample")], ids=["grad_norm_fed", "plain_loop", "full",
                                                                          "sample"])
def test_one_host_sync_per_step(cls, monkeypatch, feed, finite_check):
    """The finite check's verdict travels in the controller's one ``tolist()``."""
    assert _syncs_in_one_step(cls, monkeypatch, feed, finite_check) == 1


@pytest.mark.parametrize("cls", [OnlineSGD, OnlineAdamW], ids=lambda c: c.__name__)
def test_plain_loop_with_adaptation_off_syncs_once_for_the_check(cls, monkeypatch):
    params = [torch.nn.Parameter(torch.randn(5, 7))]
    opt = cls(params, lr=0.01, adapt=False)
    params[0].grad = torch.randn(5, 7)
    calls = {"n": 0}
    original = torch.Tensor.item

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "item", counting)
    opt.step()
    assert calls["n"] == 1


def test_full_finite_check_reads_cpu_gradients_with_blas_dots(monkeypatch):
    """On the CPU the plain loop's check is one multi-threaded ``dot`` per float tensor, not
    ``_foreach_norm`` (one thread per tensor there); its verdict is the old one: the float32 sum
    of squares is finite."""
    from adaptiverl.signals.tensor_stats import squared_norm

    grads = [torch.randn(64, 33), torch.randn(17, dtype=torch.float64), torch.randn(9).bfloat16()]
    dots, norms = {"n": 0}, {"n": 0}
    real_dot, real_norm = torch.dot, torch._foreach_norm

    def dot(*args, **kwargs):
        dots["n"] += 1
        return real_dot(*args, **kwargs)

    def foreach_norm(tensors, *args, **kwargs):
        norms["n"] += len(tensors)
        return real_norm(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "dot", dot)
    monkeypatch.setattr(torch, "_foreach_norm", foreach_norm)
    value = squared_norm(grads, torch.device("cpu"))
    assert dots["n"] == 2 and norms["n"] == 1  # bfloat16 keeps _foreach_norm (a float32 accumulator)
    expected = sum(float(g.double().square().sum()) for g in grads)
    assert value.dtype == torch.float32 and value.item() == pytest.approx(expected, rel=1e-4)  # bf16 norm rounding
    for bad in (float("nan"), float("inf"), 2e19):  # 2e19 ** 2 overflows float32: skipped as before
        broken = [g.clone() for g in grads]
        broken[0][3, 5] = bad
        assert not torch.isfinite(squared_norm(broken, torch.device("cpu")))
    assert torch.isfinite(squared_norm([torch.full((4,), 1e18)], torch.device("cpu")))
