"""A batched per-tensor GRU controller that learns bounded step-size multipliers online.

One ``nn.GRUCell`` with shared weights runs over a ``(T, F)`` feature matrix, one row
per parameter tensor, each row with its own hidden state (Andrychowicz et al. 2016,
"Learning to learn by gradient descent by gradient descent", coordinate-wise LSTM
optimiser; here per tensor and a GRU, Cho et al. 2014). A linear head maps each
hidden state to a raw output ``z_i`` and the bounded log step scale is

    log s_i = tanh(z_i) * (log hi   if z_i >= 0 else  -log lo),

so ``s_i`` lies in ``[lo, hi]`` (``lo < 1 < hi``) and equals 1 when ``z_i = 0``. The head
starts at zero, so an untrained controller leaves the step unchanged.

Online learning (truncated BPTT of length one). The caller supplies, for every
row, an estimate ``h_i`` of ``dL / d log s_i`` for the scale used at the *previous*
step (for example Baydin et al. 2018's hypergradient, see
:mod:`adaptiverl.optim.online`). The controller recomputes that previous output as a
function of its current weights theta, from the stored previous features and
incoming hidden state (detached), and takes one Adam step on the surrogate

    J(theta) = mean_i  w_i * h_i.detach() * log s_i(theta),

whose gradient is ``mean_i w_i h_i d log s_i / d theta``: a chain-rule estimate of
``dL/dtheta`` through the last step only. Recomputing instead of holding the autograd
graph between steps keeps the controller's state a handful of tensors, so a saved and
reloaded controller continues exactly.

Everything is one batched call per step: no Python loop over rows, no host sync.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


class GRUController(nn.Module):
    """Shared-weight GRU over per-tensor feature rows -> bounded per-row scales.

    Args:
        num_features: F, the width of each feature row.
        hidden_size: H, the GRU hidden width (one hidden state per row).
        scale_bounds: ``(lo, hi)`` with ``0 < lo < 1 < hi``; the scales stay inside.
        meta_lr: learning rate of the controller's own Adam.
        seed: seeds the weight initialisation (from a private generator, so the
            global RNG stream of the user's program is not consumed and every rank
            builds the same controller).
    """

    def __init__(self, num_features: int, hidden_size: int = 16,
                 scale_bounds: tuple[float, float] = (0.1, 10.0), meta_lr: float = 1e-2,
                 seed: int = 0) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"GRUController: num_features must be >= 1, got {num_features}")
        if hidden_size < 1:
            raise ValueError(f"GRUController: hidden_size must be >= 1, got {hidden_size}")
        lo, hi = (float(b) for b in scale_bounds)
        if not 0.0 < lo < 1.0 < hi or not math.isfinite(hi):
            raise ValueError(f"GRUController: scale_bounds must satisfy 0 < lo < 1 < hi, got {scale_bounds}")
        if not meta_lr > 0.0:
            raise ValueError(f"GRUController: meta_lr must be > 0, got {meta_lr}")
        self.num_features = num_features
        self.hidden_size = hidden_size
        self.scale_bounds = (lo, hi)
        self.log_lo = math.log(lo)
        self.log_hi = math.log(hi)
        self.cell = nn.GRUCell(num_features, hidden_size)
        self.head = nn.Linear(hidden_size, 1)
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(hidden_size)
        with torch.no_grad():
            for weight in self.cell.parameters():
                weight.copy_(torch.empty(weight.shape).uniform_(-bound, bound, generator=gen))
            self.head.weight.zero_()
            self.head.bias.zero_()
        self.meta_optimizer = torch.optim.Adam(self.parameters(), lr=meta_lr, fused=True)

    def initial_hidden(self, rows: int, device: torch.device | str | None = None) -> Tensor:
        return torch.zeros(rows, self.hidden_size, device=device)

    def bound(self, raw: Tensor) -> Tensor:
        """Map the raw head output to ``log s`` in ``[log lo, log hi]`` (0 at 0)."""
        t = torch.tanh(raw)
        return torch.where(t >= 0, t * self.log_hi, -t * self.log_lo)

    def forward(self, features: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``(T, F), (T, H) -> (log_scale (T,), new_hidden (T, H))`` in one batched call."""
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"GRUController: features must be (T, {self.num_features}), "
                             f"got {tuple(features.shape)}")
        new_hidden = self.cell(features, hidden)
        return self.bound(self.head(new_hidden).squeeze(-1)), new_hidden

    def learn(self, features: Tensor, hidden: Tensor, signal: Tensor,
              weight: Tensor | None = None) -> None:
        """One Adam step on ``mean_i w_i * signal_i * log s_i(theta)``.

        ``features`` / ``hidden`` are the inputs of the step whose scales ``signal``
        judges (``signal_i`` ~ dL/d log s_i); ``weight`` (T,) masks rows that carry no
        signal (0) and defaults to all ones.
        """
        with torch.enable_grad():
            log_scale, _ = self(features.detach(), hidden.detach())
            per_row = signal.detach() * log_scale
            if weight is None:
                surrogate = per_row.mean()
            else:
                surrogate = (weight * per_row).sum() / weight.sum().clamp_min(1.0)
            self.meta_optimizer.zero_grad(set_to_none=True)
            surrogate.backward()
        self.meta_optimizer.step()

    def full_state_dict(self) -> dict[str, Any]:
        """Weights plus the controller's Adam state."""
        return {"weights": self.state_dict(), "meta_optimizer": self.meta_optimizer.state_dict()}

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["weights"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
