"""The Online controller: noise immunity, wide non-absorbing range, horizon, pretrained weights,
start-point invariance, and robustness (non-finite state, half precision, Tensor lr)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from adaptiverl.controllers.gru import PRETRAINED_PATH, SCHEDULE_KNOTS, GRUController
from adaptiverl.optim.online import FEATURE_NAMES, OnlineAdamW, OnlineRMSProp, OnlineSGD

ALL = [OnlineAdamW, OnlineSGD, OnlineRMSProp]


def _noisy_regression_run(cls, lr, steps=150, seed=0, **kwargs):
    """2-layer net on a noisy linear regression, minibatches of 32 (not a benchmark task)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 16, generator=gen)
    y = x @ torch.randn(16, 1, generator=gen) + 0.5 * torch.randn(2048, 1, generator=gen)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 1))
    opt = cls(model.parameters(), lr=lr, **kwargs)
    batches = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        idx = torch.randint(2048, (32,), generator=batches)
        opt.zero_grad()
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        loss.backward()
        opt.observe(loss=loss.item())
        opt.step()
    return opt, model


@pytest.mark.parametrize("ceiling", [False, True], ids=["no_ceiling", "shipped"])
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_pure_noise_signal_keeps_scales_within_20_percent_for_1000_steps(cls, ceiling, monkeypatch):
    """Gradients of a fresh random objective every step: nothing to learn, nothing to adapt to.

    Without the update ceiling every scale stays within 20% of 1. With it, a one-off cut at the
    start is allowed (torch's RMSprop has no bias correction: its first step moves each element by
    10x the lr, 7-9% of these weights' rms, over the 5% ceiling), and after that nothing drifts."""
    from adaptiverl.controllers import online

    if not ceiling:
        monkeypatch.setattr(online, "UPDATE_RATIO_MAX", None)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = cls(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    early = None
    for step in range(1000):
        out = model(torch.randn(32, 16, generator=gen))
        loss = (out * torch.randn(32, 4, generator=gen)).mean()
        opt.zero_grad()
        loss.backward()
        opt.observe(loss=loss.item())
        opt.step()
        if step == 19:
            early = opt.online_controller.last_scales()
    late = opt.online_controller.last_scales()
    if ceiling:
        assert all(0.8 <= b / a <= 1.2 for a, b in zip(early, late, strict=True)), (early, late)
        assert min(early) >= 0.5, early
    else:
        summary = opt.dynamics()["summary"]
        assert summary["delta_scale_min"] >= 0.8 and summary["delta_scale_max"] <= 1.2, summary


def test_one_step_changes_a_scale_by_at_most_the_documented_factors():
    """Up: at most max_step_factor; down: at most max_step_factor * BRAKE_FACTOR (tested on a
    too-small lr, where the scale climbs as fast as allowed, then a far too large one)."""
    from adaptiverl.controllers.online import BRAKE_FACTOR

    w = torch.nn.Parameter(torch.ones(256))
    opt = OnlineSGD([w], lr=1e-4, max_step_factor=1.05, scale_bounds=(1e-3, 1e6))
    previous, ratios = None, []
    for _ in range(200):
        opt.zero_grad()
        (0.5 * (w ** 2).sum()).backward()
        opt.step()
        scale = opt.dynamics()["tensors"][0]["delta_scale"]
        if previous is not None:
            ratios.append(scale / previous)
        previous = scale
    assert max(ratios) <= 1.05 * (1 + 1e-6)
    assert min(ratios) >= 1 / (1.05 * BRAKE_FACTOR) * (1 - 1e-6)
    assert max(ratios) > 1.04 and min(ratios) < 1.0  # it climbed at the cap, and came back down


def test_bounds_are_not_absorbing():
    """Pinned at the upper bound with a too-large lr, the scale comes straight back down."""
    ctl = GRUController(len(FEATURE_NAMES), scale_bounds=(0.01, 100.0),
                        prior={FEATURE_NAMES.index("hypergrad_tstat"): -2.0})
    log_hi = torch.full((4,), math.log(100.0))
    x = torch.zeros(4, len(FEATURE_NAMES))
    x[:, FEATURE_NAMES.index("hypergrad_tstat")] = 1.0  # strong evidence that steps oscillate
    raw, _ = ctl(x, ctl.initial_hidden(4))
    new = ctl.integrate(log_hi, ctl.delta(raw, torch.ones(4)))
    assert torch.all(new < log_hi - 0.05)
    x[:, FEATURE_NAMES.index("hypergrad_tstat")] = -1.0
    raw, _ = ctl(x, ctl.initial_hidden(4))
    new = ctl.integrate(torch.full((4,), math.log(0.01)), ctl.delta(raw, torch.ones(4)))
    assert torch.all(new > math.log(0.01) + 0.05)
    # the learned head keeps its gradient at the bound: d delta / d head.bias is nonzero there
    with torch.enable_grad():
        raw, _ = ctl(x, ctl.initial_hidden(4))
        delta = ctl.delta(raw, torch.ones(4))
        (grad,) = torch.autograd.grad(delta.sum(), ctl.head.bias)
    assert grad.abs().item() > 1e-3


def test_optimizer_recovers_from_a_scale_pinned_at_the_upper_bound():
    w = torch.nn.Parameter(torch.ones(64))
    opt = OnlineSGD([w], lr=0.05, scale_bounds=(0.01, 100.0), adapt_knobs=False)
    opt.zero_grad()
    (0.5 * (w ** 2).sum()).backward()
    opt.step()
    opt.online_controller.log_scales().fill_(math.log(100.0))  # lr 5: w oscillates and grows on this quadratic
    for _ in range(60):
        opt.zero_grad()
        (0.5 * (w ** 2).sum()).backward()
        opt.step()
    assert opt.dynamics()["tensors"][0]["delta_scale"] < 40.0 * 1.0  # lr 2 is the stability limit
    assert torch.isfinite(w).all()


def test_wide_range_repairs_a_lr_30x_too_small():
    """SGD at 1/30 of a good lr on the noisy regression: the scale climbs past 10 (the old bound)."""
    opt, _ = _noisy_regression_run(OnlineSGD, 3e-4 / 30, momentum=0.9, adapt_knobs=False)
    assert opt.dynamics()["summary"]["delta_scale_mean"] > 10.0


def test_start_point_invariance_effective_lr_within_2x():
    """Base LRs 10x apart end with effective LRs within 2x of each other (unknown horizon)."""
    ends = []
    for lr in (1e-3, 1e-2):
        opt, _ = _noisy_regression_run(OnlineAdamW, lr, steps=300)
        ends.append(opt.effective_lr())
    assert max(ends) / min(ends) <= 2.0, ends


def test_total_steps_setter_progress_and_schedule():
    w = torch.nn.Parameter(torch.ones(8))
    opt = OnlineAdamW([w], lr=1e-3, adapt_knobs=False)
    assert opt.total_steps is None and opt.progress is None
    with pytest.raises(ValueError, match="total_steps"):
        opt.set_total_steps(0)
    with pytest.raises(ValueError, match="total_steps"):
        OnlineAdamW([w], total_steps=2.5)
    opt.set_total_steps(20)
    schedules = []
    for _ in range(20):
        opt.zero_grad()
        w.grad = torch.randn(8)
        opt.step()
        schedules.append(opt.dynamics()["summary"]["schedule"])
    assert opt.progress == 1.0
    assert schedules[-1] == pytest.approx(math.exp(opt.controller.schedule(1.0)))
    assert schedules[-1] < 0.5 * max(schedules)  # the horizon schedule anneals
    unknown = OnlineAdamW([torch.nn.Parameter(torch.ones(8))], lr=1e-3)
    assert unknown.controller.schedule(None) == 0.0


def test_schedule_interpolates_its_knots():
    ctl = GRUController(len(FEATURE_NAMES))
    knots = ctl.schedule_knots.detach()
    for i, p in enumerate(SCHEDULE_KNOTS):
        assert ctl.schedule(p) == pytest.approx(float(knots[i]), abs=1e-6)
    mid = 0.5 * (SCHEDULE_KNOTS[3] + SCHEDULE_KNOTS[4])
    assert ctl.schedule(mid) == pytest.approx(0.5 * float(knots[3] + knots[4]), abs=1e-6)


def test_pretrained_weights_ship_small_and_load_with_weights_only_on_any_device():
    assert PRETRAINED_PATH.is_file(), "run scripts/meta_train.py"
    assert PRETRAINED_PATH.stat().st_size < 100 * 1024
    blob = torch.load(PRETRAINED_PATH, map_location="meta", weights_only=True)
    assert blob["meta"]["feature_names"] == list(FEATURE_NAMES)
    pre = OnlineAdamW([torch.nn.Parameter(torch.ones(3))], controller="pretrained").controller
    fresh = OnlineAdamW([torch.nn.Parameter(torch.ones(3))], controller="fresh").controller
    assert torch.count_nonzero(fresh.head.weight) == 0
    assert not torch.equal(pre.head.weight, fresh.head.weight)
    with pytest.raises(ValueError, match="controller"):
        OnlineAdamW([torch.nn.Parameter(torch.ones(3))], controller="tuned")


def test_online_learning_continues_from_the_pretrained_weights():
    opt, _ = _noisy_regression_run(OnlineAdamW, 1e-5, steps=60, meta_lr=0.05)
    start = OnlineAdamW([torch.nn.Parameter(torch.ones(1))]).controller
    moved = sum((a - b).abs().sum() for a, b in zip(opt.controller.head.parameters(),
                                                      start.head.parameters(), strict=True))
    assert moved > 0
    frozen, _ = _noisy_regression_run(OnlineAdamW, 1e-5, steps=60, meta_lr=0.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen.controller.parameters(),
                                                 start.parameters(), strict=True))


def test_non_finite_controller_resets_itself_with_a_warning():
    w = torch.nn.Parameter(torch.ones(16))
    opt = OnlineAdamW([w], lr=1e-3)
    for _ in range(3):
        w.grad = torch.randn(16)
        opt.step()
    with torch.no_grad():
        opt.controller.head.weight.fill_(float("nan"))
    w.grad = torch.randn(16)
    with pytest.warns(RuntimeWarning, match="non-finite; it was reset"):
        opt.step()
    assert torch.isfinite(w).all()
    for _ in range(3):
        w.grad = torch.randn(16)
        opt.step()
    summary = opt.dynamics()["summary"]
    assert summary["controller_resets"] == 1.0 and math.isfinite(summary["delta_scale_mean"])
    assert all(torch.isfinite(p).all() for p in opt.controller.parameters())


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_lone_nan_anywhere_is_caught_by_the_default_check(cls):
    w = torch.nn.Parameter(torch.ones(100_000))
    opt = cls([w], lr=1e-3)
    grad = torch.full_like(w, 0.01)
    grad[77_777] = float("nan")  # outside the feature sample
    w.grad = grad
    with pytest.warns(RuntimeWarning, match="step skipped"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(100_000))


def test_observed_grad_norm_is_the_finite_check():
    w = torch.nn.Parameter(torch.ones(100))
    opt = OnlineAdamW([w], lr=1e-3)
    w.grad = torch.full_like(w, 0.1)
    opt.observe(grad_norm=float("inf"))  # the trainer's clip norm saw an Inf
    with pytest.warns(RuntimeWarning, match="step skipped"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(100))
    opt.observe(grad_norm=1.0)
    opt.step()
    assert not torch.equal(w.detach(), torch.ones(100))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_half_precision_on_cpu_is_finite_and_deterministic(cls, dtype):
    def run() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).to(dtype)
        kwargs = {"momentum": 0.9} if cls is OnlineSGD else {}
        opt = cls(model.parameters(), lr=1e-3, **kwargs)
        gen = torch.Generator().manual_seed(1)
        for _ in range(40):
            x = torch.randn(32, 16, generator=gen).to(dtype)
            opt.zero_grad()
            loss = model(x).float().pow(2).mean()
            loss.backward()
            opt.observe(loss=loss)
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    first, second = run(), run()
    assert all(torch.isfinite(p).all() for p in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_tensor_lr_is_accepted_like_torch(cls):
    w = torch.nn.Parameter(torch.ones(10))
    opt = cls([w], lr=torch.tensor(1e-2))
    for _ in range(3):
        w.grad = torch.ones(10)
        opt.step()
    assert torch.all(w < 1)


def _unfed_warnings(opt, steps: int, **feed) -> list[str]:
    """The "no loss or reward" warnings of ``steps`` steps, each fed ``feed`` (if any) before it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            for p in opt.param_groups[0]["params"]:
                p.grad = torch.ones_like(p)
            if feed:
                opt.observe(**feed)
            opt.step()
    return [str(c.message) for c in caught if "no loss or reward" in str(c.message)]


def test_unfed_optimizer_warns_once():
    assert len(_unfed_warnings(OnlineAdamW([torch.nn.Parameter(torch.ones(10))]), 5)) == 1
    assert not _unfed_warnings(OnlineAdamW([torch.nn.Parameter(torch.ones(10))]), 3, loss=1.0)


def test_unfed_warning_fed_only_grad_norms_points_at_logging_steps():
    """AdaptiveCallback on a stock trainer feeds the grad norm each step but the loss only at
    logging steps: the warning says that, instead of suggesting the callback that is attached."""
    opt = OnlineAdamW([torch.nn.Parameter(torch.ones(10))])
    (unfed,) = _unfed_warnings(opt, 3, grad_norm=3.0)
    assert "logging_steps" in unfed and "callbacks=[AdaptiveCallback()]" not in unfed
    with pytest.raises(TypeError, match="grad_norm must be a real scalar"):
        opt.observe(grad_norm="3.0")


def test_param_groups_override_the_adaptation_tunables():
    a, b = torch.nn.Parameter(torch.ones(32)), torch.nn.Parameter(torch.ones(32))
    opt = OnlineSGD([{"params": [a]}, {"params": [b], "knob_lr": 0.0}], lr=1e-3, momentum=0.5, knob_lr=0.05)
    assert opt.param_groups[0]["knob_lr"] == 0.05 and opt.param_groups[1]["knob_lr"] == 0.0
    for _ in range(20):
        opt.zero_grad()
        ((a ** 2).sum() + (b ** 2).sum()).backward()
        opt.step()
    knobs = opt.effective_knobs()
    assert knobs[0]["momentum"] != 0.5 and knobs[1]["momentum"] == 0.5
