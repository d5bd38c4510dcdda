"""Tabular Q-learning controller that turns loss / gradient signals into LR and momentum multipliers.

The controller sees the training run as a small Markov decision process (Watkins & Dayan 1992,
"Q-learning", Machine Learning 8:279-292):

* **State** ``s_t``: three discretised signals, giving ``3 x 3 x 3 = 27`` states with the default
  edges: the relative loss trend (least-squares slope of the loss window divided by its mean,
  :attr:`adaptiverl.signals.ScalarSignal.trend`), the normalised gradient entropy ``H_t`` in
  ``[0, 1]`` (see :func:`adaptiverl.optim._gradient_processing.gradient_entropy`) and the loss
  variance, read as the window's coefficient of variation
  (:attr:`~adaptiverl.signals.ScalarSignal.rel_std`). Each value is bucketed by ``numpy.digitize``
  semantics against its sorted ``*_edges``.
* **Action** ``a_t``: a pair of factors ``(f_lr, f_mom)`` from ``lr_factors x momentum_factors``.
  They act multiplicatively on the running multipliers,
  ``m_lr <- clip(m_lr * f_lr, *lr_multiplier_bounds)`` and likewise ``m_mom`` (the one bounded
  accumulator of :mod:`adaptiverl.controllers.base`, in log space), so the controller
  composes with any time-based schedule that rewrites ``group["lr"]``. The momentum multiplier is
  capped at 1 by default: raising momentum 0.9 toward 0.99 multiplies the effective step tenfold
  and was the worst action in the ablation.
* **Decisions** are taken every ``interval`` calls of :meth:`QLearningController.step` (one call
  per optimizer step); in between the multipliers are held, so each action is judged on the
  ``interval`` steps it governed rather than on one noisy minibatch.
* **Reward** ``r = (m_prev - m_now) / |m_prev| + entropy_weight * H``: the relative drop of the
  loss EMA ``m`` since the previous decision (positive = better), plus a bonus for a spread-out gradient
  distribution (a low ``H`` means a few coordinates dominate the update, the typical shape of an
  unstable step). With ``baseline_beta > 0`` the learner is fed ``r - b`` where ``b`` is the
  running mean of past rewards (``b <- beta b + (1 - beta) r``, first ``b = r``): a loss that falls
  anyway then earns no action a reward by itself, only falling faster than usual does (the
  baseline of REINFORCE, Williams 1992, used here against zero-initialised Q-values all looking
  good at once).
* **Update**: ``Q(s, a) <- Q(s, a) + alpha * (r + gamma * max_a' Q(s', a') - Q(s, a))`` with
  ``alpha = learning_rate`` and ``gamma = discount``.
* **Policy**: epsilon-greedy (ties broken at random), ``epsilon <- max(min_epsilon,
  epsilon * epsilon_decay)`` after every choice. On top of that, with probability ``1 - mix_prob``
  the neutral action (all factors 1) is applied instead of the chosen one; ``mix_prob`` starts at
  ``initial_mix_prob`` and :meth:`QLearningController.update_mix_prob` raises it while the loss
  keeps beating its best value and lowers it otherwise, so the learner earns control by results.
  The update always credits the action actually applied.

All random choices come from a :class:`random.Random` the controller owns (seeded by ``seed``), and
the Q-table, the generator state and the multipliers are in :meth:`state_dict`. Pure Python and
torch only: the table is tiny, so there is nothing to vectorise.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from adaptiverl.controllers.base import ALL_GROUPS, BoundedAccumulator, Controller, Multipliers
from adaptiverl.signals import Signals


def _check_edges(name: str, edges: Sequence[float]) -> tuple[float, ...]:
    edges = tuple(float(e) for e in edges)
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"{name} must be strictly increasing, got {edges}")
    return edges


def _check_factors(name: str, factors: Sequence[float]) -> tuple[float, ...]:
    factors = tuple(float(f) for f in factors)
    if not factors or any(not math.isfinite(f) or f <= 0 for f in factors):
        raise ValueError(f"{name} must be a non-empty sequence of positive finite floats, got {factors}")
    return factors


class QLearningController(Controller):
    """Epsilon-greedy tabular Q-learner whose actions scale the LR and momentum multipliers.

    As a :class:`~adaptiverl.controllers.base.Controller`, ``controller(signals)`` reads the
    newest ``grad_entropy`` signal and returns ``{"*": {"lr": m_lr, "momentum": m_mom}}``; the
    momentum multiplier acts on the momentum's averaging horizon
    (:func:`~adaptiverl.controllers.base.beta_from_multiplier`).

    Args:
        learning_rate: Q-learning step size ``alpha`` in ``(0, 1]``.
        discount: discount factor ``gamma`` in ``[0, 1)``.
        epsilon: initial exploration probability in ``[0, 1]``.
        epsilon_decay: multiplicative decay of ``epsilon`` per decision, in ``(0, 1]``.
        min_epsilon: floor of ``epsilon``.
        initial_mix_prob: initial probability that the chosen action is applied (else neutral).
        mix_prob_step: how much :meth:`update_mix_prob` moves ``mix_prob`` per call.
        min_mix_prob: floor of ``mix_prob``, so the learner never loses all control.
        entropy_weight: weight of the gradient-entropy bonus in the reward.
        lr_factors / momentum_factors: per-decision factors; their product set is the action set.
        lr_multiplier_bounds / momentum_multiplier_bounds: clip range of the running multipliers.
        trend_edges / entropy_edges / variance_edges: bucket edges of the three state features.
        interval: optimizer steps per decision (``>= 1``).
        baseline_beta: EMA rate of the reward baseline in ``[0, 1)``; 0 = no baseline.
        seed: seed of the controller's own :class:`random.Random`.
    """

    def __init__(self, learning_rate: float = 0.1, discount: float = 0.9, epsilon: float = 0.2,
                 epsilon_decay: float = 0.998, min_epsilon: float = 0.01,
                 initial_mix_prob: float = 0.9, mix_prob_step: float = 0.01, min_mix_prob: float = 0.1,
                 entropy_weight: float = 0.1,
                 lr_factors: Sequence[float] = (0.8, 1.0, 1.25),
                 momentum_factors: Sequence[float] = (0.95, 1.0, 1.05),
                 lr_multiplier_bounds: tuple[float, float] = (0.1, 10.0),
                 momentum_multiplier_bounds: tuple[float, float] = (0.5, 1.0),
                 trend_edges: Sequence[float] = (-1e-3, 1e-3),
                 entropy_edges: Sequence[float] = (1 / 3, 2 / 3),
                 variance_edges: Sequence[float] = (0.02, 0.1),
                 interval: int = 1, baseline_beta: float = 0.9, seed: int = 0) -> None:
        if not 0.0 < learning_rate <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate}")
        if not 0.0 <= discount < 1.0:
            raise ValueError(f"discount must be in [0, 1), got {discount}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if not 0.0 < epsilon_decay <= 1.0:
            raise ValueError(f"epsilon_decay must be in (0, 1], got {epsilon_decay}")
        if not 0.0 <= min_epsilon <= 1.0:
            raise ValueError(f"min_epsilon must be in [0, 1], got {min_epsilon}")
        if not 0.0 <= min_mix_prob <= initial_mix_prob <= 1.0:
            raise ValueError("need 0 <= min_mix_prob <= initial_mix_prob <= 1, got "
                             f"min_mix_prob={min_mix_prob}, initial_mix_prob={initial_mix_prob}")
        if mix_prob_step < 0:
            raise ValueError(f"mix_prob_step must be >= 0, got {mix_prob_step}")
        if not 0.0 <= baseline_beta < 1.0:
            raise ValueError(f"baseline_beta must be in [0, 1), got {baseline_beta}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}")
        for name, (low, high) in (("lr_multiplier_bounds", lr_multiplier_bounds),
                                  ("momentum_multiplier_bounds", momentum_multiplier_bounds)):
            if not 0.0 < low <= 1.0 <= high:
                raise ValueError(f"{name} must satisfy 0 < low <= 1 <= high, got {(low, high)}")
        self.lr_accumulator = BoundedAccumulator(*lr_multiplier_bounds, name="lr_multiplier_bounds")
        self.momentum_accumulator = BoundedAccumulator(*momentum_multiplier_bounds,
                                                       name="momentum_multiplier_bounds")
        self.learning_rate = learning_rate
        self.discount = discount
        self.epsilon = epsilon
        self.epsilon_decay = epsilon_decay
        self.min_epsilon = min_epsilon
        self.mix_prob = initial_mix_prob
        self.mix_prob_step = mix_prob_step
        self.min_mix_prob = min_mix_prob
        self.entropy_weight = entropy_weight
        self.lr_factors = _check_factors("lr_factors", lr_factors)
        self.momentum_factors = _check_factors("momentum_factors", momentum_factors)
        self.lr_multiplier_bounds = (float(lr_multiplier_bounds[0]), float(lr_multiplier_bounds[1]))
        self.momentum_multiplier_bounds = (float(momentum_multiplier_bounds[0]),
                                           float(momentum_multiplier_bounds[1]))
        self.trend_edges = _check_edges("trend_edges", trend_edges)
        self.entropy_edges = _check_edges("entropy_edges", entropy_edges)
        self.variance_edges = _check_edges("variance_edges", variance_edges)
        self.actions = [(f_lr, f_mom) for f_lr in self.lr_factors for f_mom in self.momentum_factors]
        self.neutral_action = min(range(len(self.actions)),
                                  key=lambda i: abs(math.log(self.actions[i][0])) + abs(math.log(self.actions[i][1])))
        self.n_states = ((len(self.trend_edges) + 1) * (len(self.entropy_edges) + 1)
                         * (len(self.variance_edges) + 1))
        self.q_table = torch.zeros(self.n_states, len(self.actions), dtype=torch.float64)
        self.rng = random.Random(seed)
        self.last_state: int | None = None
        self.last_action: int | None = None
        self.last_reward = 0.0
        self.best_loss = math.inf
        self.epoch: int | None = None
        self.decisions = 0
        self.interval = interval
        self.calls = 0
        self.decision_loss: float | None = None
        self.baseline_beta = baseline_beta
        self.baseline: float | None = None

    _state_keys = ("q_table", "epsilon", "mix_prob", "last_state", "last_action", "last_reward",
                   "best_loss", "epoch", "decisions", "calls", "decision_loss", "baseline", "rng_state")
    _state_children = ("lr_accumulator", "momentum_accumulator")

    @property
    def lr_multiplier(self) -> float:
        return self.lr_accumulator.value

    @property
    def momentum_multiplier(self) -> float:
        return self.momentum_accumulator.value

    @property
    def rng_state(self) -> tuple[Any, ...]:
        return self.rng.getstate()

    @rng_state.setter
    def rng_state(self, state: Sequence[Any]) -> None:
        self.rng.setstate((state[0], tuple(state[1]), state[2]))

    def __call__(self, signals: Signals) -> Multipliers:
        entropy = signals.signals.get("grad_entropy")
        value = entropy.last if entropy is not None and entropy.last is not None else math.nan
        lr_mult, momentum_mult = self.step(signals, value)
        return {ALL_GROUPS: {"lr": lr_mult, "momentum": momentum_mult}}

    # ---- state and reward ------------------------------------------------
    def encode_state(self, trend: float, entropy: float, variance: float) -> int:
        """Index of the discretised ``(trend, entropy, variance)`` triple in the Q-table."""
        i = bisect.bisect_right(self.trend_edges, trend)
        j = bisect.bisect_right(self.entropy_edges, entropy)
        k = bisect.bisect_right(self.variance_edges, variance)
        return (i * (len(self.entropy_edges) + 1) + j) * (len(self.variance_edges) + 1) + k

    def reward(self, loss_improvement: float, entropy: float) -> float:
        """``r = loss_improvement + entropy_weight * entropy`` (see the module docstring)."""
        return loss_improvement + self.entropy_weight * entropy

    # ---- acting and learning ----------------------------------------------
    def choose(self, state: int) -> int:
        """Epsilon-greedy action, then replaced by the neutral one with probability ``1 - mix_prob``."""
        if self.rng.random() < self.epsilon:
            action = self.rng.randrange(len(self.actions))
        else:
            row = self.q_table[state].tolist()
            best = max(row)
            action = self.rng.choice([a for a, q in enumerate(row) if q == best])
        self.epsilon = max(self.min_epsilon, self.epsilon * self.epsilon_decay)
        if self.rng.random() >= self.mix_prob:
            action = self.neutral_action
        return action

    def learn(self, state: int, action: int, reward: float, next_state: int) -> float:
        """One Q-learning backup; returns the TD error."""
        target = reward + self.discount * float(self.q_table[next_state].max())
        td_error = target - float(self.q_table[state, action])
        self.q_table[state, action] += self.learning_rate * td_error
        return td_error

    def step(self, signals: Signals, entropy: float) -> tuple[float, float]:
        """Once per ``interval`` calls: learn from the last decision and take the next one.

        Returns ``(lr_mult, momentum_mult)``, held between decisions. ``signals.loss`` must have
        been fed the newest loss; without a loss yet (or with a non-finite entropy), nothing is
        counted, learned or changed.
        """
        if not signals.loss.ready or not math.isfinite(entropy):
            return self.lr_multiplier, self.momentum_multiplier
        self.calls += 1
        if (self.calls - 1) % self.interval != 0:
            return self.lr_multiplier, self.momentum_multiplier
        loss = signals.loss
        state = self.encode_state(loss.trend, entropy, loss.rel_std)
        if self.last_state is not None and self.last_action is not None and self.decision_loss is not None:
            improvement = (self.decision_loss - loss.ema) / (abs(self.decision_loss) + 1e-12)
            raw = self.reward(improvement, entropy)
            if self.baseline_beta > 0.0:
                baseline = raw if self.baseline is None else self.baseline
                self.last_reward = raw - baseline
                self.baseline = self.baseline_beta * baseline + (1.0 - self.baseline_beta) * raw
            else:
                self.last_reward = raw
            self.learn(self.last_state, self.last_action, self.last_reward, state)
        self.decision_loss = loss.ema
        action = self.choose(state)
        f_lr, f_mom = self.actions[action]
        self.lr_accumulator.update(f_lr)
        self.momentum_accumulator.update(f_mom)
        self.last_state, self.last_action = state, action
        self.decisions += 1
        return self.lr_multiplier, self.momentum_multiplier

    def update_mix_prob(self, current_loss: Any, epoch: int | None = None) -> float:
        """Raise ``mix_prob`` by ``mix_prob_step`` if ``current_loss`` beats the best loss so far, else lower it.

        ``mix_prob`` stays in ``[min_mix_prob, 1]``; non-finite losses only lower it. ``epoch`` is
        recorded (for logging and checkpoints). Returns the new ``mix_prob``.
        """
        value = float(current_loss.detach().float().item()) if isinstance(current_loss, torch.Tensor) \
            else float(current_loss)
        if math.isfinite(value) and value < self.best_loss:
            self.best_loss = value
            self.mix_prob = min(1.0, self.mix_prob + self.mix_prob_step)
        else:
            self.mix_prob = max(self.min_mix_prob, self.mix_prob - self.mix_prob_step)
        if epoch is not None:
            self.epoch = int(epoch)
        return self.mix_prob

    # ---- reporting and persistence -------------------------------------------
    def summary(self) -> dict[str, float]:
        return {"q_lr_multiplier": self.lr_multiplier, "q_momentum_multiplier": self.momentum_multiplier,
                "q_epsilon": self.epsilon, "q_mix_prob": self.mix_prob, "q_reward": self.last_reward,
                "q_state": float(-1 if self.last_state is None else self.last_state),
                "q_action": float(-1 if self.last_action is None else self.last_action)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        table = torch.as_tensor(state["q_table"], dtype=torch.float64)
        if table.shape != self.q_table.shape:
            raise ValueError(f"q_table has shape {tuple(table.shape)}, this controller needs "
                             f"{tuple(self.q_table.shape)} (different edges or factors?)")
        super().load_state_dict(state)
