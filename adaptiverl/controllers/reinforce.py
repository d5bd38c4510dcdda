"""REINFORCE with a baseline and an entropy bonus, over factored discrete actions.

A small MLP maps a state vector ``s`` to one categorical distribution per action
head (e.g. an LR-multiplier head and a weight-decay-delta head). After an action
``a`` was taken and its reward ``r`` observed, the policy-gradient step
(Williams, 1992, "Simple statistical gradient-following algorithms for
connectionist reinforcement learning") minimises::

    L = -(r - b) * sum_h log pi_h(a_h | s) - entropy_weight * sum_h H(pi_h(. | s))
    b <- baseline_beta * b + (1 - baseline_beta) * r

with the baseline ``b`` an EMA of past rewards (variance reduction, Sutton &
Barto 2018, sec. 13.4) and the entropy bonus keeping exploration alive
(Williams & Peng, 1991). Parameters are initialised and actions sampled from a
``torch.Generator`` the object owns, seeded by ``seed`` and saved in
``state_dict``: two processes (e.g. distributed ranks) given the same seed and
the same (all-reduced) states take the same actions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class ReinforcePolicy:
    """Factored categorical policy trained by REINFORCE; CPU, float32, tiny."""

    def __init__(self, state_dim: int, head_sizes: Sequence[int], *, hidden: int = 32,
                 policy_lr: float = 1e-3, entropy_weight: float = 0.01,
                 baseline_beta: float = 0.9, seed: int = 0) -> None:
        if state_dim < 1 or not head_sizes or min(head_sizes) < 1:
            raise ValueError(f"ReinforcePolicy: need state_dim >= 1 and non-empty head sizes >= 1, "
                             f"got state_dim={state_dim}, head_sizes={list(head_sizes)}")
        if policy_lr <= 0:
            raise ValueError(f"ReinforcePolicy: policy_lr must be > 0, got {policy_lr}")
        if not 0.0 <= baseline_beta < 1.0:
            raise ValueError(f"ReinforcePolicy: baseline_beta must be in [0, 1), got {baseline_beta}")
        self.state_dim, self.head_sizes = state_dim, list(head_sizes)
        self.entropy_weight, self.baseline_beta = entropy_weight, baseline_beta
        self.generator = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(state_dim, hidden), nn.Tanh(),
                                 nn.Linear(hidden, sum(self.head_sizes)))
        with torch.no_grad():
            for layer in (self.net[0], self.net[2]):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=self.generator)
                layer.bias.zero_()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=policy_lr)
        self.baseline: float | None = None
        self._pending: tuple[torch.Tensor, list[int]] | None = None
        self.updates = 0

    def distributions(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Log-probabilities of each head for one state vector."""
        logits = self.net(state.float().reshape(1, -1)).squeeze(0)
        return [chunk.log_softmax(-1) for chunk in logits.split(self.head_sizes)]

    def act(self, state: Sequence[float] | torch.Tensor) -> list[int]:
        """Sample one action index per head (from the owned generator) and remember it."""
        state_t = torch.as_tensor(state, dtype=torch.float32)
        if state_t.numel() != self.state_dim:
            raise ValueError(f"ReinforcePolicy.act: state has {state_t.numel()} values, "
                             f"expected {self.state_dim}")
        with torch.no_grad():
            log_probs = self.distributions(state_t)
        actions = [int(torch.multinomial(lp.exp(), 1, generator=self.generator)) for lp in log_probs]
        self._pending = (state_t, actions)
        return actions

    def learn(self, reward: float) -> float | None:
        """One REINFORCE step for the last action with its reward; returns the advantage."""
        if self._pending is None or not math.isfinite(reward):
            return None
        state, actions = self._pending
        self._pending = None
        baseline = reward if self.baseline is None else self.baseline
        advantage = reward - baseline
        with torch.enable_grad():  # the applier may call the controller inside its no_grad step()
            log_probs = self.distributions(state)
            chosen = sum(lp[a] for lp, a in zip(log_probs, actions, strict=True))
            entropy = sum(-(lp.exp() * lp).sum() for lp in log_probs)
            loss = -advantage * chosen - self.entropy_weight * entropy
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        self.baseline = self.baseline_beta * baseline + (1.0 - self.baseline_beta) * reward
        self.updates += 1
        return advantage

    def probabilities(self, state: Sequence[float] | torch.Tensor) -> list[list[float]]:
        with torch.no_grad():
            return [lp.exp().tolist() for lp in self.distributions(torch.as_tensor(state))]

    def state_dict(self) -> dict[str, Any]:
        pending = None if self._pending is None else (self._pending[0].clone(), list(self._pending[1]))
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "baseline": self.baseline,
                "pending": pending, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline = state["baseline"]
        self._pending = state["pending"]
        self.updates = state["updates"]
