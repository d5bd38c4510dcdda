"""Persistence, non-finite input and the logging protocol of the Online optimizers."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch

from adaptiverl.optim.online import OnlineAdamW, OnlineRMSProp, OnlineSGD

CLASSES = [OnlineSGD, OnlineRMSProp, OnlineAdamW]



def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))


def _make(cls, params):
    kwargs = {"lr": 0.01, "weight_decay": 0.01}
    if cls is not OnlineAdamW:
        kwargs["momentum"] = 0.9
    # a second group so per-group knobs and row bookkeeping are exercised
    params = list(params)
    first, second = params[:2], params[2:]
    return cls([{"params": first}, {"params": second, "lr": 0.02}], **kwargs)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(32, 6, generator=gen), torch.randn(32, 2, generator=gen)


def _run(model, opt, start: int, stop: int) -> None:
    for step in range(start, stop):
        x, y = _batch(step)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.observe(loss=loss, reward=-loss.item(), grad_norm=1.0)
        opt.step()


def _snapshot(model, opt) -> dict:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what HF Trainer uses to resume


@pytest.mark.parametrize("cls", CLASSES)
def test_save_load_continue_equals_uninterrupted_run_exactly(cls):
    model = _model()
    opt = _make(cls, model.parameters())
    _run(model, opt, 0, 30)
    saved = _snapshot(model, opt)
    _run(model, opt, 30, 60)

    fresh = _model(seed=123)
    fresh.load_state_dict(saved["model"])
    opt2 = _make(cls, fresh.parameters())
    opt2.load_state_dict(saved["opt"])
    _run(fresh, opt2, 30, 60)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt.dynamics()["summary"] == opt2.dynamics()["summary"]
    assert torch.equal(opt.generator.get_state(), opt2.generator.get_state())


def test_state_dict_carries_controller_signals_and_generator():
    model = _model()
    opt = _make(OnlineAdamW, model.parameters())
    _run(model, opt, 0, 5)
    online = opt.state_dict()["online"]
    assert set(online) >= {"controller", "ctl", "signals", "generator"}
    assert "weights" in online["controller"]
    assert online["signals"]["signals"]["loss"]["count"] == 5
    assert online["ctl"]["rows"]["hidden"].shape[0] == 4


def _full_state(model, opt) -> dict:
    """Parameters and the whole optimizer state, minus the skipped-step counter."""
    state = copy.deepcopy({"params": [p.detach().clone() for p in model.parameters()],
                           "opt": opt.state_dict()})
    del state["opt"]["online"]["skipped_steps"]
    return state


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(("bad", "finite_check"), [("nan_everywhere", "sample"), ("one_inf", "full")])
def test_non_finite_gradient_skips_the_whole_step(cls, bad, finite_check):
    model = _model()
    opt = _make(cls, model.parameters())
    opt.finite_check = finite_check
    _run(model, opt, 0, 5)
    before = _full_state(model, opt)
    x, y = _batch(5)
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    grad = model[2].weight.grad
    if bad == "nan_everywhere":
        grad.fill_(float("nan"))
    else:
        grad[1, 7] = float("inf")
    with pytest.warns(RuntimeWarning, match="non-finite gradient"):
        opt.step()
    _assert_same(before, _full_state(model, opt))
    assert opt.skipped_steps == 1
    assert opt.dynamics()["summary"]["skipped_steps"] == 1.0
    _run(model, opt, 6, 8)  # and training goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sample_check_misses_a_lone_inf_outside_the_sample_but_full_catches_it():
    """The documented trade-off of finite_check='sample'."""
    w = torch.nn.Parameter(torch.zeros(4096))
    grad = torch.ones(4096)
    grad[100] = float("inf")  # 16 blocks of 64 every 256: index 100 is never sampled
    for mode, skipped in (("sample", 0), ("full", 1)):
        opt = OnlineSGD([w], lr=0.1, finite_check=mode)
        w.grad = grad.clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
        assert opt.skipped_steps == skipped


def test_non_finite_loss_and_reward_are_not_fed():
    model = _model()
    opt = _make(OnlineAdamW, model.parameters())
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        accepted = opt.observe(loss=float("nan"), reward=1.0)
    assert accepted == {"loss": False, "reward": True}
    with pytest.warns(RuntimeWarning, match="non-finite reward"):
        opt.observe(loss=torch.tensor(2.0), reward=float("inf"))
    assert opt.signals.loss.count == 1 and opt.signals.reward.count == 1
    _run(model, opt, 0, 3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("cls", CLASSES)
def test_dynamics_protocol_keys_and_seed_log_block(cls):
    model = _model()
    opt = _make(cls, model.parameters())
    _run(model, opt, 0, 3)
    dyn = opt.dynamics()
    summary = dyn["summary"]
    required = {"lr", "weight_decay", "delta_scale_mean", "delta_scale_min", "delta_scale_max",
                "grad_signal_mean", "hidden_norm_mean", "loss_trend", "reward_trend"}
    required |= {"beta1", "beta2"} if cls is OnlineAdamW else {"momentum"}
    if cls is OnlineRMSProp:
        required.add("alpha")
    assert required <= set(summary)
    assert all(isinstance(v, float) for v in summary.values())
    assert len(dyn["groups"]) == 2 and dyn["groups"][1]["base_lr"] == 0.02
    assert len(dyn["tensors"]) == 4
    for t in dyn["tensors"]:
        assert {"grad_signal", "hidden_norm", "delta_scale", "exp_avg_norm", "exp_avg_sq_mean"} <= set(t)
        assert t["hidden_norm"] > 0
    block = opt.format_dynamics()
    assert block.startswith(f"[{cls.__name__}] Step 3 dynamics:")
    assert "Tensor 0 | grad_signal=" in block and "exp_avg_norm=" in block
    has_second_moment = cls is not OnlineSGD
    assert all((t["exp_avg_sq_mean"] > 0) == has_second_moment for t in dyn["tensors"])
    assert all(t["exp_avg_norm"] > 0 for t in dyn["tensors"])  # momentum buffer / exp_avg


def test_add_param_group_after_steps_keeps_learned_rows():
    model = _model()
    params = list(model.parameters())
    opt = OnlineAdamW(params[:2], lr=0.01)
    x, y = _batch(0)
    for _ in range(5):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    scales = [t["delta_scale"] for t in opt.dynamics()["tensors"]]
    opt.add_param_group({"params": params[2:]})
    assert [t["delta_scale"] for t in opt.dynamics()["tensors"]][:2] == scales
    for _ in range(3):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    assert len(opt.dynamics()["tensors"]) == 4


def test_closure_is_called_and_its_loss_returned():
    model = _model()
    opt = OnlineSGD(model.parameters(), lr=0.1)
    x, y = _batch(0)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    first = opt.step(closure)
    second = opt.step(closure)
    assert second < first


@pytest.mark.parametrize("cls", CLASSES)
def test_host_syncs_per_step_do_not_grow_with_the_number_of_tensors(cls, monkeypatch):
    """The hot path: one finite-check sync and one tolist() per step, never one per tensor."""
    calls = {"n": 0}

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            calls["n"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    def syncs_per_step(n_tensors: int) -> int:
        params = [torch.nn.Parameter(torch.randn(5, 7)) for _ in range(n_tensors)]
        opt = cls(params, lr=0.01)
        for step in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.observe(loss=1.0 / (step + 1), reward=float(step))
            if step == 2:
                calls["n"] = 0
                with monkeypatch.context() as patch:
                    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
                        patch.setattr(torch.Tensor, name, counting(name))
                    opt.step()
            else:
                opt.step()
        return calls["n"]

    few, many = syncs_per_step(3), syncs_per_step(40)
    assert few == many
    assert 1 <= many <= 2  # the patches do see the two syncs


def test_online_adamw_resumes_from_a_torch_adamw_checkpoint():
    """Switching optimizers mid-run: torch AdamW's state dict loads and the run continues."""
    model = _model()
    torch_opt = torch.optim.AdamW(model.parameters(), lr=0.01, foreach=True)
    x, y = _batch(0)
    for _ in range(3):
        torch_opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        torch_opt.step()
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=0.01, fused=True)
    twin_opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))  # load aliases tensors
    opt = OnlineAdamW(model.parameters(), lr=0.01, adapt=False)
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    for m, o in ((model, opt), (twin, twin_opt)):
        for _ in range(3):
            o.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            o.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert opt.state[next(model.parameters())]["step"].item() == 6
