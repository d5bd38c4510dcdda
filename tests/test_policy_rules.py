"""The RL rules of adaptiverl.controllers.policy_rules: the KL-adaptive factor and the anneal gate."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest

from adaptiverl.controllers.policy_rules import (
    ANNEAL_ENTROPY_HOLD,
    KL_ENTROPY_POWER,
    KL_FACTOR,
    KL_MEDIAN_OF,
    KL_SEARCH_FACTOR,
    KL_TARGET,
    anneal_advances,
    kl_adaptive_factor,
    kl_raise,
    kl_target,
    recent_kl,
)
from adaptiverl.signals import ScalarSignal


def test_kl_adaptive_factor_is_rsl_rls_rule():
    assert kl_adaptive_factor(0.001, 0.01) == KL_FACTOR == 1.5
    assert kl_adaptive_factor(0.01, 0.01) == 1.0
    assert kl_adaptive_factor(0.0199, 0.01) == 1.0
    assert kl_adaptive_factor(0.03, 0.01) == pytest.approx(1 / 1.5)
    assert kl_adaptive_factor(math.nan, 0.01) == 1.0 and kl_adaptive_factor(0.5, 0.0) == 1.0


def _gate_progress(rewards: list[float], total: int) -> list[float]:
    signal, done, out = ScalarSignal("reward"), 0, []
    for r in rewards:
        signal.update(r)
        done += anneal_advances(done / total, signal.trend_tstat, rewarded=True)
        out.append(done / total)
    return out


def test_anneal_gate_holds_while_reward_climbs_and_releases_when_flat():
    rng = random.Random(0)
    total = 200
    climbing = [0.2 + 0.004 * t + rng.gauss(0, 0.03) for t in range(100)]
    flat = [climbing[-1] + rng.gauss(0, 0.03) for _ in range(100)]
    progress = _gate_progress(climbing + flat, total)
    # the warm-up (5%) always advances; then it waits while the reward climbs ...
    assert progress[9] == pytest.approx(10 / total)
    assert progress[99] < 0.15
    # ... and catches up once the reward is flat: most of the flat steps count
    assert progress[-1] - progress[99] > 0.35
    # a supervised run (no reward) and an unknown horizon always advance
    assert anneal_advances(0.5, 5.0, rewarded=False) and anneal_advances(None, 5.0, rewarded=True)


def test_anneal_entropy_hold_is_a_development_switch_off_by_default():
    assert ANNEAL_ENTROPY_HOLD is None  # shipped: the reward trend alone gates the anneal
    # a flat reward: advances whatever the entropy, unless the switch holds an unsharpened policy
    assert anneal_advances(0.5, 0.0, True, entropy_fraction=0.95)
    assert not anneal_advances(0.5, 0.0, True, entropy_fraction=0.95, hold=0.8)
    assert anneal_advances(0.5, 0.0, True, entropy_fraction=0.5, hold=0.8)
    assert anneal_advances(0.5, 0.0, True, entropy_fraction=None, hold=0.8)  # no entropy fed
    assert anneal_advances(0.01, 0.0, True, entropy_fraction=0.95, hold=0.8)  # the warm-up always advances
    assert not anneal_advances(0.5, 5.0, True, entropy_fraction=0.5, hold=0.8)  # a climbing reward waits


def _online_progress(rewards: list[float], total: int = 200) -> list[float]:
    import torch

    from adaptiverl.optim import OnlineAdamW

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = OnlineAdamW(model.parameters(), lr=1e-3, total_steps=total)
    out = []
    for r in rewards:
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.observe(loss=loss, reward=r)
        opt.step()
        out.append(opt.progress)
    return out


def test_online_optimizer_anneals_only_when_the_reward_stops_climbing():
    """The default path (horizon known): the schedule's progress waits while the reward climbs."""
    rng = random.Random(0)
    climbing = [0.2 + 0.004 * t + rng.gauss(0, 0.03) for t in range(100)]
    flat = [climbing[-1] + rng.gauss(0, 0.03) for _ in range(100)]
    progress = _online_progress(climbing + flat)
    assert progress[99] < 0.15  # not 0.5: the anneal held while the reward climbed
    assert progress[-1] - progress[99] > 0.35  # and released once it was flat


def _toy_optimizer(total_steps: int | None = None) -> tuple[Any, Any]:
    """A fresh, non-learning OnlineAdamW on a toy layer, and a function that takes one step of it
    on a random batch and returns that step's loss."""
    import torch

    from adaptiverl.optim import OnlineAdamW

    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4)
    opt = OnlineAdamW(model.parameters(), lr=1e-3, total_steps=total_steps, controller="fresh", meta_lr=0.0,
                      explore_std=0.0)

    def step() -> Any:
        loss = (model(torch.randn(8, 16)) * torch.randn(8, 4)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return opt, step


def _fed_run(kls: list[float | None], rewards: list[float] | None = None,
             total_steps: int | None = None) -> tuple[Any, list[float]]:
    """A fresh, non-learning OnlineAdamW on a toy layer fed ``kls`` (and ``rewards``) after each
    step but the first; returns the optimizer and the effective lr of every step."""
    opt, step = _toy_optimizer(total_steps)
    lrs = []
    for i, kl in enumerate([None, *kls]):  # the first step has no measurement yet (it comes after a step)
        loss = step()
        lrs.append(opt.effective_lr())
        fed = ({} if kl is None else {"policy_kl": kl}) | ({} if rewards is None else {"reward": rewards[i]})
        opt.observe(loss=loss, **fed)
    return opt, lrs


def _noise_scales(kls: list[float | None], rewards: list[float] | None = None) -> list[float]:
    opt, _ = _fed_run(kls, rewards)
    return [t["delta_scale"] for t in opt.dynamics()["tensors"]]


# a measurement after step k moves step k + 1's scale: the last one is not in the reported scales
@pytest.mark.parametrize("kls, expected", [([1e-4] * 5 + [0.01] + [1e-4] * 4, 2.0 ** 5 * 1.5 ** 3),
                                           ([0.01] * 10, 1.0), ([0.5] * 10, 1.5 ** -9),
                                           ([0.01] + [1e-4] * 9, 1.5 ** 8),
                                           ([0.01] + [1e-4, 0.5] * 4 + [1e-4], 1.0)])
def test_online_optimizer_follows_the_kl_prior(kls, expected):
    """A measured policy change far below / at / far above the target moves every scale up / not
    at all / 1.5x down per step, against the same run without the measurement. Up is 2x per step
    while the controller searches (no KL has reached half the target yet), then 1.5x, as large as
    the cut: readings alternating below and above the band leave the scale where it was."""
    ratios = [a / b for a, b in zip(_noise_scales(kls), _noise_scales([None] * len(kls)), strict=True)]
    assert ratios == pytest.approx([expected] * 2, rel=0.1)  # the bias row also moves on its own


def _closed_loop_kls(steps: int = 300, sigma: float = 1.5) -> list[float]:
    """OnlineAdamW (fresh, non-learning) fed a heavy-tailed KL that grows as lr^2: median 0.005 at
    lr 1e-2, log-normal noise of ``sigma`` (mean / median ~3 at 1.5, as the GRPO dev tasks read)."""
    opt, step = _toy_optimizer()
    rng = random.Random(0)
    kls = []
    for _ in range(steps):
        loss = step()
        kls.append(0.005 * (opt.effective_lr() / 1e-2) ** 2 * math.exp(sigma * rng.gauss(0.0, 1.0)))
        opt.observe(loss=loss, policy_kl=kls[-1])
    return kls


def test_a_heavy_tailed_kl_settles_with_its_median_on_the_target_not_below_it(monkeypatch):
    """Equal steps up and down (1.5x / 1.5x after the search) hold the median reading on the target;
    the earlier 1.1x raise against the 1.5x cut let the lone high readings walk the lr down until
    the median sat far below its target (more than one high reading per ~4.3 low ones drifts down)."""
    from adaptiverl.controllers import online, policy_rules

    settled = statistics.median(_closed_loop_kls()[100:])
    assert KL_TARGET == 0.005 and 0.7 * KL_TARGET < settled < 1.4 * KL_TARGET
    monkeypatch.setattr(online, "kl_raise", lambda kl, target, searching: KL_SEARCH_FACTOR if searching else 1.0)
    monkeypatch.setattr(online, "KL_TARGET", 0.01)  # the rule shipped until 2026-12-06
    old = statistics.median(_closed_loop_kls()[100:])
    assert old < 0.5 * 0.01
    assert policy_rules.kl_raise(1e-4, 0.01, searching=False) == KL_FACTOR  # the module's rule is untouched


def test_kl_target_follows_the_entropy_relative_to_its_largest_reading():
    assert kl_target(None, 0.0) == KL_TARGET  # no entropy fed (a supervised run): the fixed target
    assert kl_target(3.0, 6.0, 0.005, power=1.0) == pytest.approx(0.0025)
    assert kl_target(3.0, 6.0, 0.005, power=0.5) == pytest.approx(0.005 * math.sqrt(0.5))
    assert kl_target(7.0, 6.0, 0.005, power=1.0) == 0.005  # never above the base
    assert kl_target(-1.0, 6.0, 0.005, power=1.0) == 0.0
    assert kl_target(float("nan"), 6.0, 0.005, power=1.0) == 0.005
    assert kl_target(3.0, 6.0, 0.005, power=0.0) == 0.005
    assert kl_target(3.0, 6.0, 0.005) == pytest.approx(0.005 * 0.5 ** KL_ENTROPY_POWER)  # the shipped power


def _sharpening_lrs(steps: int = 400) -> list[float]:
    """OnlineAdamW (fresh, non-learning) fed a KL that grows as lr^2 and shrinks with the entropy, as
    a sharpening policy's does (median 0.005 at lr 1e-2 and the starting entropy; log-normal noise),
    and an entropy falling 10x, from 6.9 to 0.69 nats; the effective lr of every step."""
    opt, step = _toy_optimizer()
    rng = random.Random(0)
    lrs = []
    for t in range(steps):
        loss = step()
        lrs.append(opt.effective_lr())
        entropy = 6.9 * 0.1 ** (t / (steps - 1))
        kl = 0.005 * (lrs[-1] / 1e-2) ** 2 * entropy / 6.9 * math.exp(1.5 * rng.gauss(0.0, 1.0))
        opt.observe(loss=loss, policy_kl=kl, entropy=entropy)
    return lrs


def test_a_sharpening_policy_does_not_carry_the_lr_up_with_it(monkeypatch):
    """The same parameter step moves a sharper policy less (a small logit change's KL is about half
    its variance under the policy). With the target following the entropy the lr holds its level as
    the entropy falls 10x; a fixed target lets it climb ~sqrt(10)x."""
    from adaptiverl.controllers import online

    def rise(lrs: list[float]) -> float:  # geometric mean of the last 80 steps / of steps 20-100
        return math.exp(statistics.fmean(map(math.log, lrs[-80:])) - statistics.fmean(map(math.log, lrs[20:100])))

    assert KL_ENTROPY_POWER == 1.0 and 0.6 < rise(_sharpening_lrs()) < 1.4  # 0.82
    monkeypatch.setattr(online, "KL_ENTROPY_POWER", 0.0)  # a fixed target
    assert rise(_sharpening_lrs()) > 1.6  # 2.03


def test_recent_kl_is_the_last_value_by_default_or_the_median_of_a_window():
    values = (0.004, 0.2, 0.006, 0.005)
    assert KL_MEDIAN_OF == 1 and recent_kl(values) == 0.005  # the shipped prior acts on the last one
    assert recent_kl(values, 3) == 0.006  # a lone spike (0.2) does not count in a window of 3
    assert recent_kl((0.2, 0.3), 3) == pytest.approx(0.25)  # fewer values than the window: their median
    assert recent_kl((0.01,), 3) == 0.01


def test_kl_raise_searches_until_the_kl_first_reaches_half_the_target():
    assert kl_raise(1e-4, 0.01, searching=True) == KL_SEARCH_FACTOR == 2.0
    assert kl_raise(1e-4, 0.01, searching=False) == KL_FACTOR == 1.5  # then as large as the cut


def test_the_kl_search_state_survives_a_save_and_old_states_do_not_search_again():
    import torch

    from adaptiverl.optim import OnlineAdamW

    model = torch.nn.Linear(4, 2)
    opt = OnlineAdamW(model.parameters(), lr=1e-3, controller="fresh")
    for kl in (1e-4, 1e-4):
        model(torch.randn(3, 4)).pow(2).mean().backward()
        opt.step()
        opt.observe(loss=1.0, policy_kl=kl)
    ctl = opt.online_controller
    saved = ctl.state_dict()
    assert saved["ctl"]["kl_reached"] is False  # still searching: every KL was below half the target
    ctl.load_state_dict(saved)
    assert ctl.state.kl_reached is False
    del saved["ctl"]["kl_reached"]  # a state saved before the search existed, after KL measurements
    ctl.load_state_dict(saved)
    assert ctl.state.kl_reached is True


def _warmup_lrs(kls: list[float | None], total: int = 200) -> list[float]:
    return _fed_run(kls, total_steps=total)[1]


def test_the_fold_switch_ends_the_warm_up_at_the_level_the_search_found(monkeypatch):
    """Shipped: the horizon's warm-up (the first 5% of 200 steps) carries the lr on past the level
    where the KL search reached the band (~4x further here). With the development switch
    ``KL_FOLD_SCHEDULE`` the schedule's rise still ahead comes off the scale when the search ends,
    so the rest of the warm-up ends at that level."""
    from adaptiverl.controllers import online

    plain = _warmup_lrs([None] * 20)
    # measured after step k, acts at step k + 1: two low KLs (2x each), then one in the band
    kls = [None, 1e-4, 1e-4, 0.01] + [0.01] * 16
    shipped = _warmup_lrs(kls)
    monkeypatch.setattr(online, "KL_FOLD_SCHEDULE", True)
    found = _warmup_lrs(kls)
    level = found[4]  # the lr whose step measured in the band
    assert plain[16] / plain[4] > 3.5  # the warm-up's rise still ahead at step 4
    assert level / plain[4] == pytest.approx(4.0, rel=0.1) and shipped[4] == pytest.approx(level)  # 2x per low KL
    assert shipped[-1] == pytest.approx(level * plain[16] / plain[4], rel=0.1)  # shipped: carried past
    assert found[5] < level  # the fold: the rise ahead taken off at once ...
    assert all(x <= level * 1.35 for x in found[5:])  # ... never past the level (+ one warm-up step)
    assert found[-1] == pytest.approx(level * plain[5] / plain[4], rel=0.1)


@pytest.mark.parametrize("rule, climbing, expected", [("shipped", True, 1.5 ** 8), ("shipped", False, 1.5 ** 8),
                                                      ("while_flat", True, 1.0), ("while_flat", False, 1.5 ** 8)])
def test_after_the_search_a_low_kl_raises_and_the_flat_variant_waits_for_a_flat_reward(
        rule, climbing, expected, monkeypatch):
    """Once a KL has reached half the target, a low one raises the lr by 1.5x per step (shipped);
    the development rule ``kl_raises_while_flat`` raises only when the reward trend is not
    climbing, leaving an lr under which the reward climbs where it is."""
    from adaptiverl.controllers import online, policy_rules

    if rule == "while_flat":
        monkeypatch.setattr(online, "kl_raises", policy_rules.kl_raises_while_flat)
    rng = random.Random(0)
    rewards = [(0.05 * t + rng.gauss(0, 0.01)) if climbing else 0.5 for t in range(11)]
    kls = [0.01] + [1e-4] * 9  # the first reaches the band (search over), then low ones
    ratios = [a / b for a, b in zip(_noise_scales(kls, rewards), _noise_scales([None] * 10, rewards),
                                    strict=True)]
    assert ratios == pytest.approx([expected] * 2, rel=0.1)
