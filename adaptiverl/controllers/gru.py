"""A batched per-tensor GRU controller: bounded per-step changes of a clamped log step scale.

One ``nn.GRUCell`` with shared weights runs over a ``(T, F)`` feature matrix, one row per
parameter tensor, each row with its own hidden state (Andrychowicz et al. 2016, "Learning to
learn by gradient descent by gradient descent": a coordinate-wise learned optimiser; here per
tensor and a GRU, Cho et al. 2014). A linear head reads the new hidden state *and* the features
(a skip connection) and gives a raw output ``z_i``. The controller does not output the scale
itself but a bounded **change** of its logarithm, integrated into a clamped state:

    delta_i   = log(max_step_factor) * tanh(z_i) * gate_i
    log s_i  <- clamp(log s_i + delta_i, log lo, log hi)

* one step never changes a tensor's lr by more than ``max_step_factor`` (default 1.1) either way;
* the bounds are **never absorbing**: at ``log hi`` a negative ``z`` moves the scale straight back
  down, and ``d delta / d z`` does not depend on where ``log s`` is (with the old design,
  ``log s = tanh(z) * log hi``, the gradient vanished exactly where the scale was pinned);
* ``z_i = x_i . prior + head([h_i, x_i])``: a fixed, documented rule (``prior``: gains on feature
  columns, set by the caller; the Online optimizers read the hypergradient t-statistics) plus
  the learned head. The head starts at zero (``controller="fresh"``), so an untrained
  controller is exactly the rule, and meta-training learns a correction on top of it;
* ``gate_i`` in ``[0, 1]`` is a signal-to-noise gate computed by the caller (see
  :mod:`adaptiverl.controllers.online`): a row whose learning signal is not significantly
  different from zero does not move, so a pure-noise signal leaves the scales where they are.

**Horizon.** Given the fraction of training done ``p`` (``None`` when the horizon is unknown),
:meth:`schedule` returns a log multiplier ``log a(p)``, piecewise linear over
``SCHEDULE_KNOTS`` with learnable values; it is initialised to a 5% linear warm-up followed by a
cosine decay and meta-trained with the rest. Unknown horizon: ``a = 1``.

**Pretrained weights.** ``scripts/meta_train.py`` meta-trains all of the above (GRU, head and
schedule knots) offline with antithetic evolution strategies over full training runs of a task
family disjoint from every benchmark task, and writes them to ``PRETRAINED_PATH`` (package data).
:meth:`load_pretrained` loads them (``weights_only=True``, any device).

**Online learning** continues from those weights at ``meta_lr`` (plain SGD, no per-parameter
normalisation, so a weak sign-flipping signal makes small steps, not fixed-size ones). The caller
supplies, per row, a signal ``h_i ~ dL / d log s_i`` judging the previous step's change; the
controller recomputes that change as a function of its weights from the stored inputs (detached)
and takes one SGD step on ``J(theta) = sum_i w_i h_i delta_i(theta) / sum_i w_i``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: Where :meth:`GRUController.load_pretrained` finds the meta-trained weights.
PRETRAINED_PATH = Path(__file__).resolve().parent / "pretrained" / "online_gru.pt"
#: Progress values (fraction of training done) at which the schedule's log multiplier is a parameter.
SCHEDULE_KNOTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Floor of the initial cosine schedule (a(1) = 2% of the lr), so its log stays finite.
SCHEDULE_FLOOR = 0.02


def initial_schedule() -> list[float]:
    """Log multipliers of a 5% linear warm-up (from 10%) then cosine decay to ``SCHEDULE_FLOOR``."""
    out = []
    for p in SCHEDULE_KNOTS:
        if p < 0.05:
            value = 0.1 + 0.9 * p / 0.05
        else:
            value = 0.5 * (1.0 + math.cos(math.pi * (p - 0.05) / 0.95))
        out.append(math.log(max(value, SCHEDULE_FLOOR)))
    return out


class GRUController(nn.Module):
    """Shared-weight GRU over per-tensor feature rows -> bounded changes of a clamped log scale.

    Args:
        num_features: F, the width of each feature row.
        hidden_size: H, the GRU hidden width (one hidden state per row).
        scale_bounds: ``(lo, hi)`` with ``0 < lo < 1 < hi``; the scales stay inside.
        max_step_factor: the most one step may multiply or divide a scale by (``> 1``).
        meta_lr: online learning rate (plain SGD) of the controller's weights; 0 freezes them.
        seed: seeds the weight initialisation (from a private generator, so the global RNG
            stream of the user's program is not consumed and every rank builds the same
            controller).
    """

    def __init__(self, num_features: int, hidden_size: int = 16,
                 scale_bounds: tuple[float, float] = (1e-3, 1e3), max_step_factor: float = 1.1,
                 meta_lr: float = 1e-3, prior: dict[int, float] | None = None, seed: int = 0) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"GRUController: num_features must be >= 1, got {num_features}")
        if hidden_size < 1:
            raise ValueError(f"GRUController: hidden_size must be >= 1, got {hidden_size}")
        lo, hi = (float(b) for b in scale_bounds)
        if not 0.0 < lo < 1.0 < hi or not math.isfinite(hi):
            raise ValueError(f"GRUController: scale_bounds must satisfy 0 < lo < 1 < hi, got {scale_bounds}")
        if not (math.isfinite(max_step_factor) and max_step_factor > 1.0):
            raise ValueError(f"GRUController: max_step_factor must be a finite number > 1, got {max_step_factor}")
        if not (math.isfinite(meta_lr) and meta_lr >= 0.0):
            raise ValueError(f"GRUController: meta_lr must be a finite number >= 0, got {meta_lr}")
        self.num_features = num_features
        self.hidden_size = hidden_size
        self.scale_bounds = (lo, hi)
        self.log_lo = math.log(lo)
        self.log_hi = math.log(hi)
        self.max_log_step = math.log(max_step_factor)
        self.meta_lr = float(meta_lr)
        prior_weights = torch.zeros(num_features)
        for column, gain in (prior or {}).items():
            if not 0 <= column < num_features:
                raise ValueError(f"GRUController: prior column {column} outside 0..{num_features - 1}")
            prior_weights[column] = float(gain)
        self.register_buffer("prior_weights", prior_weights)
        self.cell = nn.GRUCell(num_features, hidden_size)
        self.head = nn.Linear(hidden_size + num_features, 1)
        self.schedule_knots = nn.Parameter(torch.tensor(initial_schedule()))
        self._knots_host: list[float] | None = None  # host copy: schedule() never syncs a device
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int = 0) -> None:
        """The untrained start: uniform GRU weights, zero head (no change), initial schedule."""
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for weight in self.cell.parameters():
                weight.copy_(torch.empty(weight.shape).uniform_(-bound, bound, generator=gen))
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.schedule_knots.copy_(torch.tensor(initial_schedule()))
        self._knots_host = None

    # ------------------------------------------------------------------ pretrained
    def load_pretrained(self, path: str | Path | None = None) -> dict[str, Any]:
        """Load meta-trained weights (``weights_only=True``, mapped to this module's device).

        Returns the file's metadata (how the weights were trained). Raises ``FileNotFoundError``
        naming the file and the command that writes it, and ``ValueError`` when the file was
        trained for another feature set or hidden size.
        """
        path = Path(path) if path is not None else PRETRAINED_PATH
        if not path.is_file():
            raise FileNotFoundError(f"pretrained controller weights not found at {path}; "
                                    "`python scripts/meta_train.py` writes them")
        device = self.schedule_knots.device
        blob = torch.load(path, map_location=device, weights_only=True)
        meta = blob.get("meta", {})
        if meta.get("num_features") != self.num_features or meta.get("hidden_size") != self.hidden_size:
            raise ValueError(f"{path}: trained for num_features={meta.get('num_features')}, "
                             f"hidden_size={meta.get('hidden_size')}; this controller has "
                             f"{self.num_features}, {self.hidden_size}")
        self.load_state_dict(blob["weights"])
        return meta

    # ------------------------------------------------------------------ math
    def initial_hidden(self, rows: int, device: torch.device | str | None = None) -> Tensor:
        return torch.zeros(rows, self.hidden_size, device=device)

    def forward(self, features: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``(T, F), (T, H) -> (raw output z (T,), new hidden (T, H))`` in one batched call.

        ``z = x . prior_weights + head([h_new, x])``: a fixed rule plus the learned correction.
        """
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"GRUController: features must be (T, {self.num_features}), "
                             f"got {tuple(features.shape)}")
        new_hidden = self.cell(features, hidden)
        learned = self.head(torch.cat([new_hidden, features], dim=1)).squeeze(-1)
        return features @ self.prior_weights + learned, new_hidden

    def delta(self, raw: Tensor, gate: Tensor) -> Tensor:
        """Bounded change of ``log s``: ``log(max_step_factor) * tanh(raw) * gate``."""
        return self.max_log_step * torch.tanh(raw) * gate

    def integrate(self, log_scale: Tensor, delta: Tensor) -> Tensor:
        """``clamp(log s + delta, log lo, log hi)``."""
        return (log_scale + delta).clamp(self.log_lo, self.log_hi)

    def advance(self, features: Tensor, hidden: Tensor, log_scale: Tensor, gate: Tensor, extra: Tensor,
                cut: Tensor) -> tuple[Tensor, Tensor]:
        """One step of every row: ``(new log s, new hidden)``.

        ``log s <- clamp(log s + clamp(delta + extra, +-log(max_step_factor)) - cut, log lo, log hi)``
        with ``delta`` from :meth:`delta` (``extra``: another bounded change the caller adds, e.g. a
        reward path; ``cut``: an immediate decrease, e.g. a brake, allowed beyond the step cap).
        """
        raw, new_hidden = self(features, hidden)
        change = (self.delta(raw, gate) + extra).clamp(-self.max_log_step, self.max_log_step) - cut
        return self.integrate(log_scale, change), new_hidden

    def clamp_log_scale(self, log_scale: Tensor) -> Tensor:
        """``clamp(log s, log lo, log hi)``."""
        return log_scale.clamp(self.log_lo, self.log_hi)

    def anneal(self, progress: float) -> float:
        """``min(1, a(p) / max a)``: where the horizon schedule stands against its peak (host float)."""
        return min(1.0, math.exp(self.schedule(progress) - max(self.schedule_values())))

    def schedule(self, progress: float | None) -> float:
        """``log a(p)``: the horizon schedule's log multiplier; 0 when the horizon is unknown."""
        if progress is None:
            return 0.0
        p = min(max(float(progress), 0.0), 1.0)
        knots = SCHEDULE_KNOTS
        j = max(i for i in range(len(knots) - 1) if knots[i] <= p) if p < 1.0 else len(knots) - 2
        w = (p - knots[j]) / (knots[j + 1] - knots[j])
        values = self.schedule_values()
        return (1.0 - w) * values[j] + w * values[j + 1]

    def schedule_values(self) -> list[float]:
        """The knots' log multipliers as host floats (copied once per weight change)."""
        if self._knots_host is None:
            self._knots_host = self.schedule_knots.detach().cpu().tolist()
        return self._knots_host

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._knots_host = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def learn(self, features: Tensor, hidden: Tensor, gate: Tensor, signal: Tensor,
              weight: Tensor | None = None) -> None:
        """One SGD step (``meta_lr``) on ``sum_i w_i signal_i delta_i(theta) / sum_i w_i``.

        ``features`` / ``hidden`` / ``gate`` are the inputs of the step whose change ``signal``
        judges (``signal_i ~ dL / d log s_i``: positive means the scale should have been
        smaller); ``weight`` (T,) masks rows that carry no signal (0), default all ones.
        """
        if self.meta_lr == 0.0:
            return
        params = [p for p in (*self.cell.parameters(), *self.head.parameters())]
        with torch.enable_grad():
            raw, _ = self(features.detach(), hidden.detach())
            per_row = signal.detach() * self.delta(raw, gate.detach())
            if weight is None:
                surrogate = per_row.mean()
            else:
                surrogate = (weight * per_row).sum() / weight.sum().clamp_min(1.0)
            grads = torch.autograd.grad(surrogate, params, allow_unused=True)
        with torch.no_grad():
            updates = [g for g in grads if g is not None]
            targets = [p for p, g in zip(params, grads, strict=True) if g is not None]
            torch._foreach_add_(targets, [torch.nan_to_num(u, nan=0.0, posinf=0.0, neginf=0.0)
                                          for u in updates], alpha=-self.meta_lr)

    def is_finite(self) -> Tensor:
        """0-d bool tensor: every weight finite (read with the step's one host sync)."""
        return torch.stack([torch.isfinite(p).all() for p in self.parameters()]).all()

    def full_state_dict(self) -> dict[str, Any]:
        """Weights (the online learner is plain SGD: it has no state of its own)."""
        return {"weights": self.state_dict()}

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["weights"])
