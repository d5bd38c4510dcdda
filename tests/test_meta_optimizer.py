"""Meta-optimizer family: plateau strategies, expert/gate LRs on a real tiny Mixtral, REINFORCE."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from adaptiverl.controllers.reinforce import ReinforcePolicy
from adaptiverl.optim.meta_optimizer import (
    AdvancedPlateauMetaOptimizer,
    ExpertGateMetaOptimizer,
    MetaOptimizer,
    OptimizerWrapper,
    PlateauMetaOptimizer,
    RLMetaOptimizer,
    SmartExpertGateMetaOptimizer,
    routing_statistics,
)


def _wrapped(meta: MetaOptimizer, lr: float = 0.1, weight_decay: float = 0.01) -> OptimizerWrapper:
    param = nn.Parameter(torch.ones(4))
    return OptimizerWrapper(torch.optim.AdamW([param], lr=lr, weight_decay=weight_decay), meta)


def _lr(opt: OptimizerWrapper, index: int = 0) -> float:
    return opt.param_groups[index]["lr"]


# ---- plateau strategies -------------------------------------------------------------------------

def test_plateau_halves_lr_after_patience_and_raises_wd_on_high_grad_norm() -> None:
    opt = _wrapped(PlateauMetaOptimizer(patience=3, lr_factor=0.5, grad_norm_threshold=10.0,
                                        weight_decay_factor=1.5, max_wd_mult=3.0, min_count=0, judge_every=1))
    lrs = []
    for _ in range(5):
        opt.update_hyperparameters({"loss": 1.0, "grad_norm": 1.0, "lr": _lr(opt)})
        lrs.append(_lr(opt))
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05]  # best set, 3 bad updates tolerated, the 4th drops
    assert opt.param_groups[0]["weight_decay"] == 0.01
    for _ in range(10):
        opt.update_hyperparameters({"loss": 1.0, "grad_norm": torch.tensor(50.0)})
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.03)  # x1.5 per update, capped at x3


def test_update_frequency_counts_patience_in_updates() -> None:
    opt = _wrapped(PlateauMetaOptimizer(patience=1, update_frequency=5, min_count=0, judge_every=1))
    lrs = []
    for _ in range(15):
        opt.update_hyperparameters({"loss": 1.0})
        lrs.append(_lr(opt))
    assert lrs[:14] == [0.1] * 14 and lrs[14] == 0.05  # updates at steps 5, 10, 15


def test_advanced_plateau_guards_slow_progress_and_watches_weight_norm() -> None:
    slow = [1.0 * 0.995 ** t for t in range(40)]  # falls, but never by the 5% threshold per update
    plain = _wrapped(PlateauMetaOptimizer(patience=3, threshold=0.05, judge_every=1))
    advanced = _wrapped(AdvancedPlateauMetaOptimizer(patience=3, threshold=0.05, trend_window=5, cooldown=0))
    for loss in slow:
        plain.update_hyperparameters({"loss": loss})
        advanced.update_hyperparameters({"loss": loss})
    assert _lr(plain) < 0.1 and _lr(advanced) == 0.1

    meta = AdvancedPlateauMetaOptimizer(patience=100, warmup_steps=5, weight_norm_growth=1e-3)
    opt = _wrapped(meta)
    param = opt.param_groups[0]["params"][0]
    for step in range(1, 16):
        with torch.no_grad():
            param.mul_(1.1)  # weights growing fast: overfitting watch
        opt.update_hyperparameters({"loss": 1.0})
        if step <= 5:
            assert meta.phase(step) == "warmup" and opt.param_groups[0]["weight_decay"] == 0.01
    assert opt.param_groups[0]["weight_decay"] > 0.02
    assert meta.signals["weight_norm"].last == pytest.approx(float(param.detach().norm()), rel=1e-6)


def test_wrapper_composes_with_lambda_lr() -> None:
    opt = _wrapped(PlateauMetaOptimizer(patience=0, lr_factor=0.5, min_count=0, judge_every=1))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    used = []
    opt.optimizer.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))
    for t in range(6):
        opt.update_hyperparameters({"loss": 1.0})
        opt.step()
        schedule.step()
        assert used[-1] == pytest.approx(0.1 / (1 + t) * 0.5 ** max(0, t))  # patience 0: drop every update
        assert opt.dynamics()["summary"]["lr"] == used[-1]  # what the step used, not the schedule's rewrite


def test_metric_errors_name_the_key() -> None:
    opt = _wrapped(PlateauMetaOptimizer())
    with pytest.raises(ValueError, match="metric 'grad_norm' must be a real scalar"):
        opt.update_hyperparameters({"loss": 1.0, "grad_norm": torch.ones(3)})
    with pytest.raises(TypeError, match="meta must be a MetaOptimizer"):
        OptimizerWrapper(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), object())  # type: ignore[arg-type]


def test_meta_state_dict_round_trip() -> None:
    first = _wrapped(AdvancedPlateauMetaOptimizer(patience=2, cooldown=1))
    losses = [1.0, 0.9, 0.95, 0.97, 0.99, 1.0, 0.98, 1.01, 1.02, 1.0, 0.99, 1.03]
    for loss in losses[:6]:
        first.update_hyperparameters({"loss": loss, "grad_norm": 20.0})
    second = _wrapped(AdvancedPlateauMetaOptimizer(patience=2, cooldown=1))
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for loss in losses[6:]:
        first.update_hyperparameters({"loss": loss, "grad_norm": 20.0})
        second.update_hyperparameters({"loss": loss, "grad_norm": 20.0})
        assert first.param_groups[0]["lr"] == second.param_groups[0]["lr"]
        assert first.param_groups[0]["weight_decay"] == second.param_groups[0]["weight_decay"]


# ---- expert / gate on a real tiny mixture-of-experts model --------------------------------------

@pytest.fixture(scope="module")
def tiny_moe() -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(config)


def _routing_batch() -> torch.Tensor:
    return torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))


def test_moe_param_groups_by_name(tiny_moe: nn.Module) -> None:
    groups = ExpertGateMetaOptimizer().param_groups(tiny_moe, weight_decay=0.0)
    names = {id(p): n for n, p in tiny_moe.named_parameters()}
    by_role = {g["role"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    assert by_role["gate"] == ["model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight"]
    assert all(".mlp.experts." in n for n in by_role["expert"]) and len(by_role["expert"]) == 4
    assert sum(len(g["params"]) for g in groups) == len(names)


def test_gate_lr_follows_routing_entropy(tiny_moe: nn.Module) -> None:
    model = copy.deepcopy(tiny_moe)
    meta = ExpertGateMetaOptimizer(gate_lr_factor=0.1, entropy_threshold=0.5)
    opt = OptimizerWrapper(torch.optim.AdamW(meta.param_groups(model), lr=1e-3), meta)
    roles = [g["role"] for g in opt.param_groups]
    batch = _routing_batch()
    gate_lrs = []
    for sharpen in (1.0, 300.0):  # fresh router: near-uniform routing; scaled up: near one-hot
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.gate.weight.mul_(sharpen)
        meta.reset()
        for _ in range(3):
            out = model(input_ids=batch, labels=batch, output_router_logits=True)
            out.loss.backward()
            opt.update_hyperparameters({"loss": out.loss, "router_logits": out.router_logits})
            opt.step()
            opt.zero_grad()
        gate_lrs.append(opt.param_groups[roles.index("gate")]["lr"])
        assert opt.param_groups[roles.index("expert")]["lr"] == pytest.approx(1e-3)
    entropy = meta.signals["routing_entropy"].ema
    assert entropy < 0.5
    assert gate_lrs[0] > 1e-4 > gate_lrs[1]  # undecided router learns faster, sharp router slower
    assert gate_lrs[1] == pytest.approx(1e-4 * max(0.1, entropy / 0.5), rel=1e-6)


def test_routing_statistics_bounds() -> None:
    uniform = routing_statistics(torch.zeros(10, 4))
    assert uniform["routing_entropy"] == pytest.approx(1.0) and uniform["routing_sparsity"] == 0.0
    one_hot = routing_statistics((torch.eye(4).repeat(3, 1) * 50.0,))
    assert one_hot["routing_entropy"] < 0.01 and one_hot["load_entropy"] == pytest.approx(1.0, abs=1e-4)
    assert one_hot["routing_sparsity"] == pytest.approx(0.75) and one_hot["routing_specialization"] > 0.99
    with pytest.raises(ValueError, match="no router logits"):
        routing_statistics(())


def test_smart_expert_gate_sparsity_specialization_and_late_groups(tiny_moe: nn.Module) -> None:
    model = copy.deepcopy(tiny_moe)
    meta = SmartExpertGateMetaOptimizer(gate_lr_factor=0.1, expert_lr_factor=1.0, entropy_threshold=0.8,
                                        sparsity_target=0.5, specialization_bonus=1.5)
    groups = meta.param_groups(model)
    first = [g for g in groups if g["role"] != "gate"]
    opt = OptimizerWrapper(torch.optim.AdamW(first, lr=1e-3), meta, model=model)
    gate_params = [p for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")]
    opt.add_param_group({"params": gate_params})  # added later, no role tag: classified by name
    assert meta.role_of_group(opt.param_groups[-1]) == "gate"
    expert_index = [g.get("role") for g in opt.param_groups].index("expert")
    sharp = (torch.eye(4).repeat(8, 1) * 50.0,)  # decisive tokens, balanced load
    for _ in range(5):
        opt.update_hyperparameters({"loss": 1.0, "router_logits": sharp})
    stats = routing_statistics(sharp)
    expected_gate = 1e-3 * 0.1 * max(0.1, stats["routing_entropy"] / 0.8) * (stats["routing_sparsity"] / 0.5) ** -1
    assert opt.param_groups[-1]["lr"] == pytest.approx(expected_gate, rel=1e-6)
    bonus = 1.0 + 0.5 * min(1.0, stats["routing_specialization"])
    assert opt.param_groups[expert_index]["lr"] == pytest.approx(1e-3 * bonus, rel=1e-6)
    assert opt.param_groups[expert_index]["lr"] > 1.4e-3
    assert opt.dynamics()["summary"]["lr_gate"] == opt.param_groups[-1]["lr"]


# ---- REINFORCE ------------------------------------------------------------------------------------

def test_reinforce_policy_learns_a_bandit() -> None:
    policy = ReinforcePolicy(2, [3], hidden=8, policy_lr=0.05, entropy_weight=0.0, seed=0)
    state = [0.5, -0.5]
    for _ in range(150):
        (action,) = policy.act(state)
        policy.learn(1.0 if action == 2 else 0.0)
    assert policy.probabilities(state)[0][2] > 0.8


def _rl_run(meta: RLMetaOptimizer, steps: int, opt: OptimizerWrapper | None = None) -> OptimizerWrapper:
    opt = opt or _wrapped(meta, lr=1e-2, weight_decay=1e-3)
    for t in range(steps):
        opt.update_hyperparameters({"loss": 1.0 / (1.0 + 0.1 * t), "grad_norm": 2.0, "cost": 0.01})
    return opt


def test_rl_meta_same_seed_same_actions_and_round_trip() -> None:
    a, b, c = (RLMetaOptimizer(update_frequency=2, seed=s, policy_lr=1e-2) for s in (7, 7, 8))
    opt_a, opt_b = _rl_run(a, 40), _rl_run(b, 40)
    _rl_run(c, 40)
    assert a.actions == b.actions and len(a.actions) == 20
    assert a.actions != c.actions
    assert _lr(opt_a) == _lr(opt_b) and opt_a.param_groups[0]["weight_decay"] == opt_b.param_groups[0]["weight_decay"]
    assert a.policy.updates == 19 and a.last_reward is not None
    restored = RLMetaOptimizer(update_frequency=2, seed=0, policy_lr=1e-2)
    opt_r = _wrapped(restored, lr=1e-2, weight_decay=1e-3)
    opt_r.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for t in range(40, 60):
        metrics = {"loss": 1.0 / (1.0 + 0.1 * t), "grad_norm": 2.0, "cost": 0.01}
        opt_a.update_hyperparameters(metrics)
        opt_r.update_hyperparameters(metrics)
    assert restored.actions == a.actions and _lr(opt_r) == _lr(opt_a)


def test_rl_meta_applies_lr_multipliers_and_wd_deltas() -> None:
    meta = RLMetaOptimizer(update_frequency=1, lr_actions=[2.0], wd_actions=[-0.004], seed=0)
    opt = _rl_run(meta, 3)
    assert _lr(opt) == pytest.approx(1e-2 * 8)
    assert opt.param_groups[0]["weight_decay"] == 0.0  # 1e-3 - 3 * 4e-3, floored at zero
    with pytest.raises(ValueError, match="lr_actions must be positive"):
        RLMetaOptimizer(lr_actions=[0.0, 1.0])


def test_applier_protocol_for_all_three_front_ends() -> None:
    from adaptiverl.optim.adaptive_optimizer import AdaptiveOptimizer
    from adaptiverl.optim.adaptive_scheduler import AdaptiveScheduler

    def groups() -> list[dict[str, Any]]:
        return [{"params": [nn.Parameter(torch.ones(2))]}, {"params": [nn.Parameter(torch.ones(2))], "lr": 0.5}]

    wrapper = OptimizerWrapper(torch.optim.SGD(groups(), lr=0.1), PlateauMetaOptimizer(patience=0, min_count=0, judge_every=1))
    adaptive = AdaptiveOptimizer(torch.optim.SGD(groups(), lr=0.1), lr_rule="trend")
    sgd = torch.optim.SGD(groups(), lr=0.1, momentum=0.9)
    scheduler = AdaptiveScheduler(sgd, patience=0, cooldown=0)
    for _ in range(22):
        for applier in (wrapper, adaptive, scheduler):
            applier.observe(loss=1.0, reward=None, grad_norm=1.0)
        wrapper.step()
        adaptive.step()
        sgd.step()
        scheduler.step()
    # wrapper (min_count=0, judge_every=1): best at step 1, a drop at each later one down to min_lr_mult; scheduler: judged
    # once its 20-loss window is full (best at step 20), drops at steps 21 and 22
    for applier, lr0 in ((wrapper, 0.1 * 1e-4), (adaptive, 0.1), (scheduler, 0.1 * 0.5 ** 2)):
        dyn = applier.dynamics()
        assert set(dyn) == {"summary", "groups", "tensors"} and dyn["tensors"] == []
        assert len(dyn["groups"]) == 2 and dyn["summary"]["lr"] == pytest.approx(lr0)
        assert dyn["groups"][1]["lr"] == pytest.approx(lr0 * 5)
    assert scheduler.dynamics()["summary"]["momentum"] == 0.9


def test_meta_optimizer_is_abstract_and_judge_every_is_validated() -> None:
    with pytest.raises(TypeError, match="abstract"):
        MetaOptimizer()  # type: ignore[abstract]
    with pytest.raises(ValueError, match="judge_every"):
        PlateauMetaOptimizer(judge_every=0)


@pytest.mark.parametrize("losses", [[1.0] * 5 + [1e200] + [1.0] * 24, [1.0] * 10 + [1e200] * 20,
                                    [1.0, 1e200] * 15, [10.0 ** (10 * t) for t in range(30)]],
                         ids=["one_spike", "jump", "alternating", "growing"])
def test_rl_meta_optimizer_stays_finite_on_huge_losses_fed_through_step(losses) -> None:
    model = nn.Linear(4, 1)
    wrapped = OptimizerWrapper(torch.optim.SGD(model.parameters(), lr=0.1),
                               RLMetaOptimizer(update_frequency=1, cost_weight=1.0))
    for loss in losses:  # the strategy runs inside step() (no update_hyperparameters): under no_grad
        wrapped.zero_grad()
        model(torch.ones(4)).sum().backward()
        wrapped.observe(loss=loss, cost=1e200 if loss > 1e100 else 0.1)
        wrapped.step()
    assert all(torch.isfinite(p).all() for p in wrapped.meta.policy.net.parameters())
    assert all(math.isfinite(v) for v in wrapped.meta.state_vector())
    assert math.isfinite(wrapped.param_groups[0]["lr"]) and wrapped.meta.policy.updates == len(losses) - 1
