"""EnhancedSGD: the SGD anchor, one behavioural test per feature, persistence and the seed's example."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from adaptiverl.optim import EnhancedSGD
from adaptiverl.optim import _gradient_processing as gp

OFF = {"q_learning": False}



def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=gen)
    return x, torch.sin(x.sum(dim=1, keepdim=True))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, losses: list[float] | None = None) -> None:
    x, y = _data()
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if isinstance(opt, EnhancedSGD):
            opt.step(closure=lambda loss=loss: loss)
        else:
            opt.step()
        if losses is not None:
            losses.append(loss.item())


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _set_grads(params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()


# ---- the anchor: every feature off == torch SGD -------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    {"momentum": 0.5, "dampening": 0.3},
    {"momentum": 0.0, "weight_decay": 1e-3},
])
def test_all_features_off_equals_torch_sgd(kwargs):
    a, b = _mlp(), _mlp()
    groups_a = [{"params": a[0].parameters()}, {"params": a[2].parameters(), "lr": 0.02}]
    groups_b = [{"params": b[0].parameters()}, {"params": b[2].parameters(), "lr": 0.02}]
    _train(a, EnhancedSGD(groups_a, lr=0.05, **kwargs, **OFF), 30)
    _train(b, torch.optim.SGD(groups_b, lr=0.05, foreach=True, **kwargs), 30)
    assert _max_diff(a, b) < 1e-6
    assert _max_diff(a, _mlp()) > 1e-2  # and training moved the weights


# ---- Q-learning and adaptive momentum --------------------------------------------------------------

def test_q_controller_multipliers_are_what_the_update_applies():
    model = _mlp()
    opt = EnhancedSGD(model.parameters(), lr=0.05, momentum=0.0, epsilon=1.0, seed=5, q_learning=True,
                      q_interval=1)
    x, y = _data()
    changed = 0
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        before = [p.detach().clone() for p in model.parameters()]
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step(closure=lambda loss=loss: loss)
        lr_eff = 0.05 * opt.q_controller.lr_multiplier
        for p, p0, g in zip(model.parameters(), before, grads, strict=True):
            torch.testing.assert_close(p.detach(), p0 - lr_eff * g, rtol=1e-5, atol=1e-7)
        changed += opt.q_controller.lr_multiplier != 1.0
    assert changed > 0
    assert opt.dynamics()["summary"]["lr"] == pytest.approx(lr_eff)
    assert opt.q_controller.q_table.abs().sum() > 0


def test_adaptive_momentum_switch():
    adaptive, fixed = _mlp(), _mlp()
    opt_a = EnhancedSGD(adaptive.parameters(), lr=0.02, epsilon=1.0, adaptive_momentum=True, q_learning=True)
    opt_f = EnhancedSGD(fixed.parameters(), lr=0.02, epsilon=1.0, adaptive_momentum=False, q_learning=True)
    _train(adaptive, opt_a, 40)
    _train(fixed, opt_f, 40)
    assert opt_f.q_controller.momentum_multiplier == 1.0
    assert opt_f.dynamics()["summary"]["momentum"] == pytest.approx(0.9)
    assert 0.5 <= opt_a.q_controller.momentum_multiplier < 1.0
    expected = 1.0 - 0.1 / opt_a.q_controller.momentum_multiplier  # the horizon mapping
    assert opt_a.dynamics()["summary"]["momentum"] == pytest.approx(expected)


def test_q_options_and_interval_reach_the_controller():
    opt = EnhancedSGD(_mlp().parameters(), q_interval=7, adaptive_momentum=False,
                      q_options={"lr_factors": (0.5, 2.0), "momentum_factors": (0.9, 1.1), "baseline_beta": 0.9})
    q = opt.q_controller
    assert (q.interval, q.lr_factors, q.momentum_factors, q.baseline_beta) == (7, (0.5, 2.0), (1.0,), 0.9)


def test_epoch_change_feeds_update_mix_prob():
    model = _mlp()
    opt = EnhancedSGD(model.parameters(), lr=0.02, initial_mix_prob=0.5, q_learning=True)
    x, y = _data()
    for epoch in (1, 1, 2, 2, 3):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step(closure=lambda loss=loss: loss, current_epoch=epoch)
    assert opt.q_controller.epoch == 2
    assert opt.q_controller.mix_prob == pytest.approx(0.52)  # two epochs, each a new best


# ---- entropy --------------------------------------------------------------------------------

def test_gradient_entropy_extremes():
    spread = [torch.linspace(-1, 1, 4096).reshape(64, 64), torch.linspace(0, 1, 100)]
    spiky = [torch.zeros(64, 64), torch.zeros(100)]
    spiky[0][3, 7] = 50.0
    assert gp.gradient_entropy(spread).item() > 0.95
    assert gp.gradient_entropy(spiky).item() < 0.05
    assert gp.gradient_entropy([torch.zeros(10)]).item() == 0.0


def test_gradient_entropy_matches_a_histc_reference():
    grads = [torch.randn(300, 70) ** 3, torch.rand(1000), torch.randn(5)]
    sample = gp.magnitude_sample(grads, 4096)
    hist = torch.histc(sample / sample.max(), bins=32, min=0.0, max=1.0)
    p = hist[hist > 0] / hist.sum()
    reference = -(p * p.log()).sum() / math.log(32)
    assert gp.gradient_entropy(grads, bins=32, sample_size=4096).item() == pytest.approx(reference.item(), abs=1e-5)
    assert 2048 < sample.numel() <= 4096 + 3 and 0.1 < reference.item() < 0.9


def test_entropy_adjustment_shortens_steps_when_gradient_entropy_collapses():
    p = nn.Parameter(torch.zeros(32, 32))
    opt = EnhancedSGD([p], lr=0.1, momentum=0.0, entropy_adjustment=True, smoothing_factor=0.5, **OFF)
    spread = torch.linspace(-1, 1, 1024).reshape(32, 32)
    spiky = torch.full((32, 32), 1e-3)
    spiky[0, 0] = 1.0
    for _ in range(5):
        _set_grads([p], [spread])
        opt.step()
    assert opt.entropy_multiplier == pytest.approx(1.0, abs=1e-6)
    before = p.detach().clone()
    for _ in range(3):
        _set_grads([p], [spiky])
        before = p.detach().clone()
        opt.step()
    assert opt.entropy_multiplier < 0.6
    torch.testing.assert_close(p.detach(), before - 0.1 * opt.entropy_multiplier * spiky)


# ---- gradient retention -----------------------------------------------------------------------

def test_gradient_buffer_keeps_the_largest_gradients_and_blends_their_mean():
    p = nn.Parameter(torch.zeros(4, 3))
    opt = EnhancedSGD([p], lr=1.0, momentum=0.0, gradient_buffer_size=2, retention_blend=0.25,
                      retention_decay=1.0, **OFF)
    g_big, g_mid, g_small = torch.full((4, 3), 3.0), torch.full((4, 3), -1.0), torch.full((4, 3), 0.5)
    for g in (g_big, g_mid):
        _set_grads([p], [g])
        opt.step()
    before = p.detach().clone()
    _set_grads([p], [g_small])
    opt.step()
    # g_small (smallest norm) is not retained: the buffer still holds g_big and g_mid
    expected = 0.75 * g_small + 0.25 * (g_big + g_mid) / 2
    torch.testing.assert_close(before - p.detach(), expected)
    assert p.grad.eq(0.5).all()  # the user's .grad is left alone
    assert sorted(opt.retention_scores) == pytest.approx([math.sqrt(12), math.sqrt(12 * 9)])


# ---- lookahead ------------------------------------------------------------------------------

def test_lookahead_interpolates_slow_and_fast_weights_every_k_steps():
    k, alpha = 5, 0.5
    model, fast_twin = _mlp(), _mlp()
    slow0 = [p.detach().clone() for p in model.parameters()]
    opt = EnhancedSGD(model.parameters(), lr=0.05, momentum=0.9, lookahead_k=k, lookahead_alpha=alpha, **OFF)
    twin = torch.optim.SGD(fast_twin.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, k - 1)
    _train(fast_twin, twin, k - 1)
    assert _max_diff(model, fast_twin) < 1e-6
    _train(model, opt, 1)
    _train(fast_twin, twin, 1)
    for p, s0, fast in zip(model.parameters(), slow0, fast_twin.parameters(), strict=True):
        expected = s0 + alpha * (fast.detach() - s0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["lookahead_slow"], expected, rtol=1e-5, atol=1e-6)


# ---- adaptive clipping ------------------------------------------------------------------------

def test_clip_threshold_follows_the_running_variance_of_the_norm():
    p = nn.Parameter(torch.zeros(10))
    opt = EnhancedSGD([p], lr=1.0, momentum=0.0, gradient_clipping=True, clip_std=2.0, clip_warmup=5,
                      signal_window=10, **OFF)
    norms = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.05, 0.95, 1.1, 0.9]
    for n in norms:
        _set_grads([p], [torch.full((10,), n / math.sqrt(10))])
        opt.step()
    assert opt.dynamics()["summary"]["clipped"] == 0.0
    mean = sum(norms) / len(norms)
    std = math.sqrt(sum((n - mean) ** 2 for n in norms) / (len(norms) - 1))
    before = p.detach().clone()
    _set_grads([p], [torch.full((10,), 100.0 / math.sqrt(10))])
    opt.step()
    threshold = opt.dynamics()["summary"]["clip_threshold"]
    assert threshold == pytest.approx(mean + 2.0 * std)
    assert (before - p.detach()).norm().item() == pytest.approx(threshold, rel=1e-5)
    # a noisier history widens the threshold
    wide = EnhancedSGD([nn.Parameter(torch.zeros(10))], lr=1.0, momentum=0.0, gradient_clipping=True,
                       clip_std=2.0, clip_warmup=5, signal_window=10, **OFF)
    for n in [0.2, 1.8, 0.5, 1.5, 0.3, 1.7, 0.6, 1.4, 0.4, 1.6]:
        _set_grads(wide.param_groups[0]["params"], [torch.full((10,), n / math.sqrt(10))])
        wide.step()
    _set_grads(wide.param_groups[0]["params"], [torch.full((10,), 100.0 / math.sqrt(10))])
    wide.step()
    assert wide.dynamics()["summary"]["clip_threshold"] > threshold + 0.5


# ---- loss spikes ----------------------------------------------------------------------------

def test_loss_spike_cuts_lr_and_momentum_and_they_recover():
    p = nn.Parameter(torch.zeros(3))
    opt = EnhancedSGD([p], lr=0.1, momentum=0.9, loss_correction_factor=0.5, spike_recovery_steps=5, **OFF)
    losses = [1.0 + 0.01 * math.sin(i) for i in range(20)] + [10.0] + [1.0 + 0.01 * math.sin(i) for i in range(40)]
    seen = []
    for loss in losses:
        _set_grads([p], [torch.ones(3)])
        opt.step(closure=lambda loss=loss: loss)
        summary = opt.dynamics()["summary"]
        seen.append((summary["lr"], summary["momentum"]))
    assert seen[19] == pytest.approx((0.1, 0.9))
    assert seen[20] == pytest.approx((0.05, 0.8))  # momentum horizon 10 -> 5: 1 - 0.1 / 0.5
    assert seen[22][0] > seen[21][0] > seen[20][0]
    assert seen[-1] == pytest.approx((0.1, 0.9), rel=1e-3)


# ---- centering --------------------------------------------------------------------------------

def test_centering_gives_updates_with_zero_mean_per_weight_tensor():
    model = _mlp()
    opt = EnhancedSGD(model.parameters(), lr=0.1, momentum=0.9, gradient_centering=True, **OFF)
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, 3)
    weights = [(p, b) for p, b in zip(model.parameters(), before, strict=True) if p.dim() >= 2]
    for p, b in weights:
        update = p.detach() - b
        assert update.abs().mean() > 1e-4
        assert abs(update.mean().item()) < 1e-7
    plain = _mlp()
    _train(plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9), 3)
    assert abs((plain[0].weight - before[0]).mean().item()) > 1e-5  # not zero-mean without it


# ---- noise ----------------------------------------------------------------------------------

def test_annealed_noise_has_the_scheduled_variance():
    p = nn.Parameter(torch.zeros(200_000))
    opt = EnhancedSGD([p], lr=1.0, momentum=0.0, noise_scale=0.04, noise_decay=0.55, **OFF)
    variances = {}
    for t in range(1, 31):
        before = p.detach().clone()
        p.grad = torch.zeros_like(p)
        opt.step()
        variances[t] = (p.detach() - before).var().item()
    for t in (1, 30):
        assert variances[t] == pytest.approx(0.04 / (1 + t) ** 0.55, rel=0.02)
    assert variances[30] < 0.3 * variances[1]  # (31 / 2) ** -0.55 = 0.22


# ---- Bayesian initialisation ------------------------------------------------------------------

def test_bayesian_init_samples_the_fan_in_scaled_prior():
    layer = nn.Linear(256, 512)
    bias = layer.bias.detach().clone()
    EnhancedSGD(layer.parameters(), bayesian_init=True, prior_std=2.0, seed=3, **OFF)
    assert layer.weight.std().item() == pytest.approx(2.0 / math.sqrt(256), rel=0.01)
    assert abs(layer.weight.mean().item()) < 0.01
    assert torch.equal(layer.bias, bias)
    again = nn.Linear(256, 512)
    EnhancedSGD(again.parameters(), bayesian_init=True, prior_std=2.0, seed=3, **OFF)
    assert torch.equal(again.weight, layer.weight)


# ---- persistence ----------------------------------------------------------------------------

ALL_ON = {"q_learning": True, "q_interval": 2, "gradient_clipping": True, "lookahead_k": 3, "loss_correction_factor": 0.5,
          "gradient_centering": True, "gradient_buffer_size": 2, "noise_scale": 1e-3,
          "entropy_adjustment": True, "epsilon": 0.5}


def test_state_dict_round_trip_continues_identically(tmp_path):
    model = _mlp()
    opt = EnhancedSGD(model.parameters(), lr=0.05, seed=1, **ALL_ON)
    _train(model, opt, 10)
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    clone = copy.deepcopy(model)
    restored = EnhancedSGD(clone.parameters(), lr=0.05, seed=123, **ALL_ON)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(restored.q_controller.q_table, opt.q_controller.q_table)
    slow = opt.state[next(model.parameters())]["lookahead_slow"]
    assert torch.equal(restored.state[next(clone.parameters())]["lookahead_slow"], slow)
    _train(model, opt, 10)
    _train(clone, restored, 10)
    assert _max_diff(model, clone) == 0.0
    assert restored.dynamics()["summary"] == pytest.approx(opt.dynamics()["summary"], nan_ok=True)


def test_all_features_together_train_and_observe_feeds_the_next_step():
    model = _mlp()
    opt = EnhancedSGD(model.parameters(), lr=0.05, **ALL_ON)
    losses: list[float] = []
    _train(model, opt, 100, losses)
    assert losses[-1] < 0.6 * losses[0]
    x, y = _data()
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.observe(loss=loss.detach(), reward=1.0)
    count = opt.signals.loss.count
    opt.step()
    assert opt.signals.loss.count == count + 1 and opt.signals.loss.last == pytest.approx(loss.item())
    assert opt.signals.reward.last == 1.0
    dyn = opt.dynamics()
    assert {"lr", "momentum", "grad_entropy", "q_epsilon"} <= set(dyn["summary"]) and len(dyn["groups"]) == 1


@pytest.mark.parametrize("kwargs, name", [
    ({"lr": 0.0}, "lr"), ({"momentum": 1.0}, "momentum"), ({"lookahead_k": -1}, "lookahead_k"),
    ({"loss_correction_factor": 1.5}, "loss_correction_factor"),
    ({"gradient_buffer_size": -2}, "gradient_buffer_size"), ({"retention_score": "age"}, "retention_score"),
    ({"smoothing_factor": 0.0}, "smoothing_factor"), ({"epsilon": 2.0}, "epsilon"),
])
def test_bad_arguments_name_the_culprit(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EnhancedSGD(_mlp().parameters(), **kwargs)


# ---- the seed's usage example, unchanged but for the import ---------------------------------

SEED_EXAMPLE = '''
from adaptiverl.optim import EnhancedSGD
import torch.nn as nn

# Example model
model = nn.Sequential(
    nn.Linear(10, 50),
    nn.ReLU(),
    nn.Linear(50, 1)
)

# Define optimizer
optimizer = EnhancedSGD(
    params=model.parameters(),
    lr=0.01,
    momentum=0.9,
    smoothing_factor=0.1,
    entropy_weight=0.1,
    adaptive_momentum=True
)

# Training loop
for epoch in range(1, 101):
    for batch in dataloader:
        optimizer.zero_grad()
        loss = criterion(model(batch), target)
        loss.backward()
        optimizer.step(closure=lambda: loss, current_epoch=epoch)
'''


def test_defaults_are_plain_sgd():
    a, b = _mlp(), _mlp()
    _train(a, EnhancedSGD(a.parameters(), lr=0.05), 10)
    _train(b, torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9), 10)
    assert _max_diff(a, b) < 1e-6


def test_seed_usage_example_runs_and_learns():
    """A real regression: ``target = sin(x w) + x v`` on 256 fixed points, one full batch per epoch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=gen)
    target = torch.sin(x @ torch.randn(10, 1, generator=gen)) + 0.3 * x @ torch.randn(10, 1, generator=gen)
    losses: list[float] = []

    def criterion(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.mse_loss(output, labels)
        losses.append(loss.item())
        return loss

    namespace = {"dataloader": [x], "criterion": criterion, "target": target}
    exec(compile(SEED_EXAMPLE, "seed_example", "exec"), namespace)
    optimizer = namespace["optimizer"]
    assert len(losses) == 100 and losses[-1] < 0.3 * losses[0]
    assert optimizer.q_controller.epoch == 99
    assert optimizer.signals.loss.last == pytest.approx(losses[-1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_anchor_and_all_features():
    a, b = _mlp().cuda(), _mlp().cuda()
    x, y = (t.cuda() for t in _data())
    opt_a = EnhancedSGD(a.parameters(), lr=0.05, **OFF)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, foreach=True)
    for model, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(10):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    assert _max_diff(a, b) < 1e-6
    model = _mlp().cuda()
    opt = EnhancedSGD(model.parameters(), lr=0.05, bayesian_init=True, **ALL_ON)
    for _ in range(10):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step(closure=lambda loss=loss: loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.state_dict()["enhanced_sgd"]["generators"].keys() == {"cuda:0"}


def test_param_groups_override_the_per_group_tunables():
    """Every per-group tunable lives in ``defaults``: a group's own momentum / maximize / weight decay
    give exactly torch SGD's update for that group, and its own noise or Lookahead stay in it."""
    a, b = _mlp(), _mlp()
    opt = EnhancedSGD([{"params": a[0].parameters(), "momentum": 0.5, "maximize": True},
                       {"params": a[2].parameters(), "weight_decay": 1e-2, "nesterov": True}], lr=0.05, **OFF)
    twin = torch.optim.SGD([{"params": b[0].parameters(), "momentum": 0.5, "maximize": True},
                            {"params": b[2].parameters(), "weight_decay": 1e-2, "nesterov": True}],
                           lr=0.05, momentum=0.9)
    _train(a, opt, 10)
    _train(b, twin, 10)
    assert _max_diff(a, b) < 1e-6
    assert opt.defaults["noise_scale"] == 0.0 and "lookahead_k" in opt.param_groups[1]
    p, q = nn.Parameter(torch.zeros(1000)), nn.Parameter(torch.zeros(1000))
    noisy = EnhancedSGD([{"params": [p], "noise_scale": 0.01}, {"params": [q]}], lr=1.0, momentum=0.0, **OFF)
    p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)
    noisy.step()
    assert p.detach().std() > 0.01 and torch.equal(q.detach(), torch.zeros(1000))  # noise only in its group
    with pytest.raises(ValueError, match="param group 1: lookahead_alpha"):
        EnhancedSGD([{"params": [p]}, {"params": [q], "lookahead_alpha": 0.0}])


ALL_FEATURES = {"q_learning": True, "q_interval": 2, "entropy_adjustment": True, "gradient_clipping": True,
                "clip_warmup": 2, "loss_correction_factor": 0.5, "gradient_centering": True, "noise_scale": 1e-3,
                "gradient_buffer_size": 2, "lookahead_k": 3}


@pytest.mark.parametrize("round_trip", ["deepcopy", "pickle"])
def test_a_copied_optimizer_continues_identically(round_trip):
    import pickle

    model = _mlp()
    opt = EnhancedSGD(model.parameters(), lr=0.05, **ALL_FEATURES)
    _train(model, opt, 7)
    if round_trip == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert all(p2 is not p for p, p2 in zip(model.parameters(), model2.parameters(), strict=True))
    assert opt2.param_groups[0]["params"][0] is next(model2.parameters())
    _train(model, opt, 6)
    _train(model2, opt2, 6)
    assert _max_diff(model, model2) == 0.0
    assert opt2.dynamics()["summary"] == pytest.approx(opt.dynamics()["summary"], nan_ok=True)


def test_a_lone_nan_gradient_element_skips_the_step():
    model, reference = _mlp(), _mlp()
    opt = EnhancedSGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, 3)
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    opt.zero_grad()
    x, y = _data()
    nn.functional.mse_loss(model(x), y).backward()
    next(model.parameters()).grad[0, 0] = math.nan
    with pytest.warns(RuntimeWarning, match="non-finite gradient, step skipped"):
        opt.step()
    assert opt.skipped_steps == 1 and opt.step_count == 3
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], b) for p, b in zip(model.parameters(), buffers, strict=True))
    _train(model, opt, 6)  # and it goes on as if the bad batch had not been there
    _train(reference, EnhancedSGD(reference.parameters(), lr=0.05, momentum=0.9), 9)
    assert _max_diff(model, reference) == 0.0
    unchecked = _mlp()
    plain = EnhancedSGD(unchecked.parameters(), lr=0.05, momentum=0.9, finite_check="off")
    nn.functional.mse_loss(unchecked(x), y).backward()
    next(unchecked.parameters()).grad[0, 0] = math.nan
    plain.step()  # "off": torch.optim.SGD's behaviour
    assert not torch.isfinite(next(unchecked.parameters())).all()


def test_a_huge_lr_never_makes_the_parameters_non_finite():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    opt = EnhancedSGD(model.parameters(), lr=1e3, momentum=0.9)
    x, y = torch.randn(32, 64), torch.randn(32, 1)
    with pytest.warns(RuntimeWarning, match="step skipped"):
        for _ in range(30):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    assert opt.skipped_steps > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(s["momentum_buffer"]).all() for s in opt.state.values())


def test_finite_check_is_validated():
    with pytest.raises(ValueError, match="finite_check must be one of"):
        EnhancedSGD(_mlp().parameters(), finite_check="sometimes")
