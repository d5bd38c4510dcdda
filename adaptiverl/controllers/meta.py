"""The Meta-Optimizer strategies of seed 004, as controllers.

A :class:`MetaOptimizer` is a :class:`~adaptiverl.controllers.base.Controller`: called once per
optimisation step with the shared :class:`~adaptiverl.signals.Signals`, it counts the call and,
every ``update_frequency`` calls (``should_update(step)``), asks the strategy's
``update_hparams(metrics, step)`` for new *adjustments* per parameter-group role::

    {"*": {"lr": 0.5, "weight_decay": 1.5},      # every group
     "gate": {"lr": 0.1}}                          # groups whose role is "gate"
    # "<knob>_offset" entries are added after the multiplier (RL weight-decay deltas)

which are held until the next update. :class:`~adaptiverl.optim.OptimizerWrapper` (the applier,
in ``optim/meta_optimizer.py``) writes them as ``base * multiplier + offset``, so they compose with
any time schedule. The strategies are built from the shared rules: ``Plateau`` (patience,
cooldown, on the smoothed loss), ``ThresholdRule`` (grad-norm / weight-norm driven weight decay),
``TargetRule`` (routing entropy and sparsity), ``LinearRule`` (specialisation bonus) and
``ReinforcePolicy`` (REINFORCE with baseline and entropy bonus); every compounding multiplier is
the one :class:`~adaptiverl.controllers.base.BoundedAccumulator`.

Mixture-of-experts roles: gate (router) and expert parameters are found by name
(tokens of the dotted parameter name: ``gate``/``router`` and ``experts`` by
default, so Mixtral's ``mlp.gate.weight`` is a gate and ``mlp.experts.gate_up_proj``
an expert) and put in their own param groups by :meth:`MetaOptimizer.param_groups`.
Routing statistics come from the router logits a model returns with
``output_router_logits=True`` (:func:`routing_statistics`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from adaptiverl.controllers.base import ALL_GROUPS, BoundedAccumulator, Controller, Multipliers
from adaptiverl.controllers.plateau import Plateau
from adaptiverl.controllers.reinforce import ReinforcePolicy
from adaptiverl.controllers.rules import Compose, LinearRule, Rule, TargetRule, ThresholdRule
from adaptiverl.signals import Signals, to_float

Adjustments = Multipliers
_NOT_SIGNALS = frozenset({"lr", "weight_decay", "step", "epoch"})


def routing_statistics(router_logits: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, float]:
    """Routing statistics of a mixture-of-experts forward pass, all in [0, 1].

    ``router_logits``: one ``(tokens, experts)`` tensor or a sequence of them (one per
    layer, as ``model(..., output_router_logits=True).router_logits``). With
    ``p`` the softmax over experts per token and ``E`` the number of experts:

    * ``routing_entropy``: mean over tokens of ``H(p) / log E`` (1 = uniform routing,
      0 = every token sent to one expert);
    * ``load_entropy``: ``H(mean_tokens p) / log E`` (1 = balanced expert load);
    * ``routing_sparsity``: fraction of (token, expert) probabilities below ``1 / E``;
    * ``routing_specialization``: ``load_entropy - routing_entropy`` (decisive tokens
      spread over all experts).
    """
    tensors = [router_logits] if isinstance(router_logits, torch.Tensor) else list(router_logits)
    if not tensors:
        raise ValueError("routing_statistics: no router logits given (was output_router_logits=True?)")
    logits = torch.cat([t.detach().reshape(-1, t.shape[-1]).float() for t in tensors])
    experts = logits.shape[-1]
    if experts < 2:
        raise ValueError(f"routing_statistics: need >= 2 experts, got logits of shape {tuple(logits.shape)}")
    log_p = logits.log_softmax(-1)
    p = log_p.exp()
    norm = math.log(experts)
    token_entropy = (-(p * log_p).sum(-1)).mean() / norm
    load = p.mean(0)
    load_entropy = -(load * load.clamp_min(1e-12).log()).sum() / norm
    sparsity = (p < 1.0 / experts).float().mean()
    values = torch.stack([token_entropy, load_entropy, sparsity]).tolist()
    return {"routing_entropy": values[0], "load_entropy": values[1], "routing_sparsity": values[2],
            "routing_specialization": values[1] - values[0]}


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The signals in a seed-004 metrics dict: ``router_logits`` become routing statistics; the
    hyperparameters themselves (``lr``, ``weight_decay``) and counters are not signals."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "router_logits":
            out.update(routing_statistics(value))
        elif key in _NOT_SIGNALS or value is None:
            continue
        else:
            out[key] = to_float(value, f"metric {key!r}")
    return out


class MetaOptimizer(Controller, ABC):
    """Base class of the strategies (seed 004): ``update_hparams(metrics, step)`` every
    ``update_frequency`` calls, adjustments held in between; ``reset()`` forgets everything.

    Subclasses list their stateful rules in ``_state_children`` (saved, restored and reset
    together with the call count and the held adjustments).
    """

    _state_keys = ("calls", "adjustments")
    needs_weight_norm = False
    gate_tokens: tuple[str, ...] = ("gate", "router")
    expert_tokens: tuple[str, ...] = ("experts",)

    def __init__(self, update_frequency: int = 1, *, beta: float = 0.9, window: int = 20) -> None:
        if update_frequency < 1:
            raise ValueError(f"{type(self).__name__}: update_frequency must be >= 1, got {update_frequency}")
        self.update_frequency = update_frequency
        self.signals = Signals(beta=beta, window=window)
        self.calls = 0
        self.adjustments: Adjustments = {}
        self._param_names: dict[int, str] = {}

    # ---- the strategy -----------------------------------------------------------------------
    @abstractmethod
    def update_hparams(self, metrics: dict[str, float], step: int) -> Adjustments:
        """Return the adjustments (multipliers per role) from the current signals."""

    def initial_adjustments(self) -> Adjustments:
        """Adjustments in force before the first update (static role factors)."""
        return {}

    def should_update(self, step: int) -> bool:
        return step % self.update_frequency == 0

    def scalar_metrics(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The signals in one step's metrics dict (see :func:`scalar_metrics`)."""
        return scalar_metrics(metrics)

    def __call__(self, signals: Signals) -> Multipliers:
        """One step: count it; on update steps ask the strategy, else hold the last adjustments."""
        self.signals = signals
        if self.calls == 0 and not self.adjustments:
            self.adjustments = self.initial_adjustments()
        self.calls += 1
        if self.should_update(self.calls):
            latest = {name: sig.last for name, sig in signals.signals.items() if sig.last is not None}
            self.adjustments = self.update_hparams(latest, self.calls)
        return self.adjustments

    def reset(self) -> None:
        """Forget the signals (in place, so an applier sharing the hub sees it), rules and counts."""
        for sig in self.signals.signals.values():
            sig.reset()
        self.signals.step = 0
        super().reset()
        self.calls = 0
        self.adjustments = self.initial_adjustments()

    # ---- parameter roles ----------------------------------------------------------------------
    def role_of_name(self, name: str) -> str:
        tokens = name.split(".")
        if any(token in self.expert_tokens for token in tokens):
            return "expert"
        if any(token in self.gate_tokens for token in tokens):
            return "gate"
        return "other"

    def bind_model(self, model: nn.Module) -> None:
        """Remember parameter names so that groups added later can be classified."""
        self._param_names = {id(p): name for name, p in model.named_parameters()}

    def role_of_group(self, group: dict[str, Any]) -> str:
        if "role" in group:
            return str(group["role"])
        roles = {self.role_of_name(self._param_names[id(p)]) for p in group["params"] if id(p) in self._param_names}
        return roles.pop() if len(roles) == 1 else "other"

    def param_groups(self, model: nn.Module, **group_options: Any) -> list[dict[str, Any]]:
        """Param groups split by role (``"gate"``, ``"expert"``, ``"other"``), each tagged with ``role``."""
        self.bind_model(model)
        by_role: dict[str, list[nn.Parameter]] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                by_role.setdefault(self.role_of_name(name), []).append(param)
        return [{"params": params, "role": role, **group_options} for role, params in by_role.items()]


class PlateauMetaOptimizer(MetaOptimizer):
    """LR times ``lr_factor`` after ``patience`` calls without progress of the smoothed loss
    (:class:`~adaptiverl.controllers.plateau.Plateau`), counted in calls as
    ``ReduceLROnPlateau`` counts them: an exactly flat loss is cut at call ``patience + 2``.

    Noise robustness comes from the smoothing and a significance test, not from judging rarely:
    the judged value is the loss EMA (``beta``), and a new best is recorded ``noise_z`` standard
    errors of that EMA above the EMA itself (never above the previous best), so a call only
    counts as "no progress" when the smoothed loss fails to beat, by the relative ``threshold``,
    a best that noise alone could have reached. A minibatch loss that keeps falling slowly under
    heavy noise (seed 004's per-step usage) is not cut; a flat noisy one is. ``judge_every=N``
    judges the mean of each block of ``N`` new losses instead (``patience`` then counts blocks);
    nothing is judged before ``min_count`` losses. Weight decay times ``weight_decay_factor`` on
    each update whose grad-norm EMA exceeds ``grad_norm_threshold`` (bounded by ``max_wd_mult``,
    relaxing back by ``wd_relax`` per update below it)."""

    _state_children = ("plateau", "wd_rule")

    def __init__(self, patience: int = 3, lr_factor: float = 0.5, *, threshold: float = 1e-4,
                 cooldown: int = 0, min_lr_mult: float = 1e-4, grad_norm_threshold: float = 10.0,
                 weight_decay_factor: float = 1.5, max_wd_mult: float = 10.0, wd_relax: float = 0.1,
                 trend_guard: bool = False, min_count: int = 0, judge_every: int = 1,
                 noise_z: float = 2.0, update_frequency: int = 1, beta: float = 0.9, window: int = 20) -> None:
        super().__init__(update_frequency, beta=beta, window=window)
        self.plateau = Plateau("loss", factor=lr_factor, patience=patience, threshold=threshold,
                               cooldown=cooldown, min_mult=min_lr_mult, min_count=min_count,
                               interval=judge_every, trend_guard=trend_guard, noise_z=noise_z)
        self.wd_rule: Rule = ThresholdRule("grad_norm", threshold=grad_norm_threshold, factor=weight_decay_factor,
                                           relax=wd_relax, min_mult=1.0, max_mult=max_wd_mult, name="grad_norm")

    def update_hparams(self, metrics: dict[str, float], step: int) -> Adjustments:
        return {ALL_GROUPS: {"lr": self.plateau(self.signals), "weight_decay": self.wd_rule(self.signals)}}


class AdvancedPlateauMetaOptimizer(PlateauMetaOptimizer):
    """Plateau with several criteria, weight-norm monitoring, warmup and cooldown.

    * Multi-criteria plateau: an update counts as "bad" only if the loss EMA did not
      beat its best by ``threshold`` AND the least-squares trend over the last
      ``trend_window`` losses is not significantly downward.
    * Weight decay: times ``weight_decay_factor`` when the grad-norm EMA exceeds
      ``grad_norm_threshold`` and (overfitting watch) when the weight norm's
      relative trend per step exceeds ``weight_norm_growth`` (the wrapper measures
      the global weight norm with one fused ``_foreach_norm`` on update steps).
    * Warmup: the first ``warmup_steps`` calls only observe; cooldown: ``cooldown``
      updates of rest after each LR drop.
    """

    needs_weight_norm = True

    def __init__(self, patience: int = 3, lr_factor: float = 0.5, *, grad_norm_threshold: float = 10.0,
                 weight_decay_factor: float = 1.5, warmup_steps: int = 0, trend_window: int = 5,
                 weight_norm_growth: float = 1e-3, cooldown: int = 2, threshold: float = 1e-4,
                 min_lr_mult: float = 1e-4, max_wd_mult: float = 10.0, wd_relax: float = 0.1,
                 min_count: int = 0, judge_every: int = 1, noise_z: float = 2.0, update_frequency: int = 1,
                 beta: float = 0.9) -> None:
        if trend_window < 3:
            raise ValueError(f"AdvancedPlateauMetaOptimizer: trend_window must be >= 3, got {trend_window}")
        if warmup_steps < 0:
            raise ValueError(f"AdvancedPlateauMetaOptimizer: warmup_steps must be >= 0, got {warmup_steps}")
        super().__init__(patience, lr_factor, threshold=threshold, cooldown=cooldown, min_lr_mult=min_lr_mult,
                         grad_norm_threshold=grad_norm_threshold, weight_decay_factor=weight_decay_factor,
                         max_wd_mult=max_wd_mult, wd_relax=wd_relax, trend_guard=True, min_count=min_count,
                         judge_every=judge_every, noise_z=noise_z, update_frequency=update_frequency, beta=beta,
                         window=trend_window)
        self.warmup_steps = warmup_steps
        self.wd_rule = Compose([self.wd_rule, ThresholdRule(
            "weight_norm", threshold=weight_norm_growth, stat="trend", factor=weight_decay_factor,
            relax=wd_relax, min_mult=1.0, max_mult=max_wd_mult, name="weight_norm")])

    def should_update(self, step: int) -> bool:
        return step > self.warmup_steps and super().should_update(step)

    def phase(self, step: int) -> str:
        if step <= self.warmup_steps:
            return "warmup"
        return "cooldown" if self.plateau.in_cooldown else "adapt"


class ExpertGateMetaOptimizer(MetaOptimizer):
    """Separate LRs for the router (gate) and the experts of a mixture-of-experts model.

    Gate LR multiplier ``gate_lr_factor * (H / entropy_threshold) ** entropy_gain``
    (bounded to ``[min_entropy_mult, max_entropy_mult]``), with ``H`` the EMA of the
    normalised routing entropy: as routing sharpens below the threshold the router
    learns more slowly (guarding against collapse onto few experts); while it is
    still undecided (high entropy) it learns faster. Experts get ``expert_lr_factor``.
    Metrics: ``router_logits`` (the model output's tuple) or ``routing_entropy``.
    """

    def __init__(self, gate_lr_factor: float = 0.1, expert_lr_factor: float = 1.0, *,
                 entropy_threshold: float = 0.5, entropy_gain: float = 1.0, min_entropy_mult: float = 0.1,
                 max_entropy_mult: float = 3.0, update_frequency: int = 1, beta: float = 0.9,
                 window: int = 20) -> None:
        super().__init__(update_frequency, beta=beta, window=window)
        if gate_lr_factor <= 0 or expert_lr_factor <= 0:
            raise ValueError(f"{type(self).__name__}: gate_lr_factor and expert_lr_factor must be > 0, "
                             f"got {gate_lr_factor}, {expert_lr_factor}")
        self.gate_lr_factor, self.expert_lr_factor = gate_lr_factor, expert_lr_factor
        self.entropy_rule = TargetRule("routing_entropy", target=entropy_threshold, gain=entropy_gain,
                                       min_mult=min_entropy_mult, max_mult=max_entropy_mult, name="entropy")

    _state_children = ("entropy_rule",)

    def scalar_metrics(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Seed 004's ``entropy`` metric is the routing entropy."""
        if "entropy" in metrics and "routing_entropy" not in metrics:
            metrics = {("routing_entropy" if key == "entropy" else key): value for key, value in metrics.items()}
        return super().scalar_metrics(metrics)

    def initial_adjustments(self) -> Adjustments:
        return {"gate": {"lr": self.gate_lr_factor}, "expert": {"lr": self.expert_lr_factor}}

    def gate_multiplier(self) -> float:
        return self.gate_lr_factor * self.entropy_rule(self.signals)

    def expert_multiplier(self) -> float:
        return self.expert_lr_factor

    def update_hparams(self, metrics: dict[str, float], step: int) -> Adjustments:
        return {"gate": {"lr": self.gate_multiplier()}, "expert": {"lr": self.expert_multiplier()}}


class SmartExpertGateMetaOptimizer(ExpertGateMetaOptimizer):
    """Expert/gate LRs with entropy, sparsity-target and specialisation terms.

    * gate: ``gate_lr_factor * entropy_term * (S / sparsity_target) ** -sparsity_gain``
      with ``S`` the EMA of the routing sparsity (share of token-expert
      probabilities below uniform): sparser than the target slows the router,
      denser speeds it up;
    * experts: ``expert_lr_factor * (1 + (specialization_bonus - 1) * clip(sp, 0, 1))``
      with ``sp = load_entropy - routing_entropy`` (tokens route decisively while
      the load stays spread: experts are specialising, so they learn faster).

    Param groups added later (``add_param_group``) are classified by parameter name
    when the model is bound (``param_groups(model)`` or ``OptimizerWrapper(model=...)``).
    """

    def __init__(self, gate_lr_factor: float = 0.1, expert_lr_factor: float = 1.0, *,
                 entropy_threshold: float = 0.8, sparsity_target: float = 0.7, specialization_bonus: float = 1.2,
                 sparsity_gain: float = 1.0, entropy_gain: float = 1.0, update_frequency: int = 1,
                 beta: float = 0.9, window: int = 20) -> None:
        super().__init__(gate_lr_factor, expert_lr_factor, entropy_threshold=entropy_threshold,
                         entropy_gain=entropy_gain, update_frequency=update_frequency, beta=beta, window=window)
        if specialization_bonus <= 0:
            raise ValueError(f"SmartExpertGateMetaOptimizer: specialization_bonus must be > 0, got {specialization_bonus}")
        self.sparsity_rule = TargetRule("routing_sparsity", target=sparsity_target, gain=-sparsity_gain,
                                        min_mult=0.1, max_mult=10.0, name="sparsity")
        self.specialization_rule = LinearRule("routing_specialization", gain=specialization_bonus - 1.0,
                                              name="specialization")

    def gate_multiplier(self) -> float:
        return super().gate_multiplier() * self.sparsity_rule(self.signals)

    def expert_multiplier(self) -> float:
        return self.expert_lr_factor * self.specialization_rule(self.signals)


class RLMetaOptimizer(MetaOptimizer):
    """REINFORCE meta-optimizer: a small policy picks an LR multiplier and a weight-decay delta.

    Every ``update_frequency`` steps: the previous action is rewarded with the
    relative fall of the loss EMA since it was taken minus ``cost_weight`` times the
    EMA of the ``cost`` metric (e.g. seconds per step), clipped to [-1, 1] (a loss
    falls by all of itself at most, and one loss of 1e200 must not become a
    policy-gradient step of 1e200); the policy takes one
    REINFORCE step (:class:`~adaptiverl.controllers.reinforce.ReinforcePolicy`:
    baseline, entropy bonus ``entropy_weight``, Adam with ``policy_lr``); then it
    samples a new action from the state

        [tanh(window * loss trend), log1p(grad-norm EMA), loss rel. std,
         sign(c) log1p(|c|) of the cost EMA c, log10(LR multiplier)]

    (every entry finite and of moderate size for any finite signal: the loss's
    relative std is at most ``sqrt(window)``)

    and sets ``lr_mult <- clip(lr_mult * lr_actions[i], min_lr_mult, max_lr_mult)``,
    ``wd_offset <- wd_offset + wd_actions[j]`` (the weight decay never goes below 0).
    Sampling uses the policy's own seeded generator: equal seeds, equal actions.
    """

    _state_keys = (*MetaOptimizer._state_keys, "wd_offset", "loss_at_action", "last_reward", "actions")
    _state_children = ("policy", "lr_accumulator")

    def __init__(self, update_frequency: int = 10, lr_actions: Sequence[float] = (0.5, 1.0, 2.0),
                 wd_actions: Sequence[float] = (-1e-5, 0.0, 1e-5), policy_lr: float = 1e-4,
                 entropy_weight: float = 0.01, *, baseline_beta: float = 0.9, hidden: int = 32,
                 cost_weight: float = 0.0, min_lr_mult: float = 1e-3, max_lr_mult: float = 1e3,
                 seed: int = 0, beta: float = 0.9, window: int = 20) -> None:
        super().__init__(update_frequency, beta=beta, window=window)
        if not lr_actions or min(lr_actions) <= 0:
            raise ValueError(f"RLMetaOptimizer: lr_actions must be positive multipliers, got {list(lr_actions)}")
        if not wd_actions:
            raise ValueError("RLMetaOptimizer: wd_actions must not be empty")
        self.lr_actions, self.wd_actions = list(lr_actions), list(wd_actions)
        self.cost_weight = cost_weight
        self.lr_accumulator = BoundedAccumulator(min_lr_mult, max_lr_mult, name="RLMetaOptimizer lr")
        self.seed = seed
        self._policy_args = {"hidden": hidden, "policy_lr": policy_lr, "entropy_weight": entropy_weight,
                             "baseline_beta": baseline_beta}
        self._new_policy()

    def _new_policy(self) -> None:
        self.policy = ReinforcePolicy(5, [len(self.lr_actions), len(self.wd_actions)], seed=self.seed,
                                      **self._policy_args)
        self.lr_accumulator.reset()
        self.wd_offset = 0.0
        self.loss_at_action: float | None = None
        self.last_reward: float | None = None
        self.actions: list[tuple[float, float]] = []

    @property
    def lr_mult(self) -> float:
        return self.lr_accumulator.value

    def reset(self) -> None:
        super().reset()
        self._new_policy()

    def state_vector(self) -> list[float]:
        loss, window = self.signals.loss, self.signals.window
        grad = self.signals.signals.get("grad_norm")
        cost = self.signals.signals.get("cost")
        cost_ema = cost.ema if cost and cost.ema is not None else 0.0
        return [math.tanh(window * loss.trend), math.log1p(grad.ema) if grad and grad.ema is not None else 0.0,
                loss.rel_std, math.copysign(math.log1p(abs(cost_ema)), cost_ema), math.log10(self.lr_mult)]

    def reward(self) -> float | None:
        loss = self.signals.loss.ema
        if self.loss_at_action is None or loss is None:
            return None
        cost = self.signals.signals.get("cost")
        penalty = self.cost_weight * cost.ema if cost is not None and cost.ema is not None else 0.0
        fall = (self.loss_at_action - loss) / (abs(self.loss_at_action) + 1e-12)
        return min(max(fall - penalty, -1.0), 1.0)

    def update_hparams(self, metrics: dict[str, float], step: int) -> Adjustments:
        reward = self.reward()
        if reward is not None:
            self.policy.learn(reward)
            self.last_reward = reward
        lr_index, wd_index = self.policy.act(self.state_vector())
        self.lr_accumulator.update(self.lr_actions[lr_index])
        self.wd_offset += self.wd_actions[wd_index]
        self.actions.append((self.lr_actions[lr_index], self.wd_actions[wd_index]))
        self.loss_at_action = self.signals.loss.ema
        return {ALL_GROUPS: {"lr": self.lr_mult, "weight_decay_offset": self.wd_offset}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.actions = [tuple(a) for a in self.actions]  # type: ignore[misc]
