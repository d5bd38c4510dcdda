"""What an Online optimizer reports about itself: ``dynamics()``, ``format_dynamics()``,
``effective_lr()`` and ``effective_knobs()`` (host values the last step recorded: logging, never the
hot path). A mixin of :class:`adaptiverl.optim._online_core.OnlineOptimizer`, which supplies the
controller, the param groups, the state and the algorithm's knob names."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from adaptiverl.signals.tensor_stats import local


class DynamicsReport:
    """Figures of the last step per tensor, per group and in summary (see the module docstring)."""

    def effective_knobs(self) -> list[dict[str, float]]:
        """The knob values the last step used, per group (the base values before any step)."""
        last = self.online_controller.last_knobs()
        out = []
        for gi, group in enumerate(self.param_groups):
            values = last[gi] if last is not None and gi < len(last) else self._base_knobs(group)
            out.append(dict(zip(self.KNOBS, values, strict=True)))
        return out

    def effective_lr(self) -> float:
        """Mean over tensors of ``group["lr"] * delta_scale`` the last step used (host values, no sync)."""
        scales = self.online_controller.last_scales()
        lrs = [float(g["lr"]) for g in self.param_groups for _ in g["params"]]
        if scales is None or len(scales) != len(lrs):
            return sum(lrs) / max(1, len(lrs))
        return sum(lr * s for lr, s in zip(lrs, scales, strict=True)) / max(1, len(lrs))

    def dynamics(self) -> dict[str, Any]:
        """Summary, per-group and per-tensor figures for logging (not for the hot path).

        ``delta_scale`` is the multiplier the last step applied to ``group["lr"]`` (the
        controller's scale times the horizon schedule), so ``lr = base_lr * delta_scale``.
        """
        params = self._all_params()
        rows = len(params)
        figures = self.online_controller.row_figures(rows, self.progress)
        scales, grad_signal = figures["scale"], figures["signal"]
        hidden_norm, gate = figures["hidden_norm"], figures["gate"]
        first, second = self._moment_stats(params)
        knobs = self.effective_knobs()
        tensors, groups = [], []
        row = 0
        for gi, group in enumerate(self.param_groups):
            lrs = []
            for _ in group["params"]:
                lr = float(group["lr"]) * scales[row]
                lrs.append(lr)
                tensors.append({"group": gi, "lr": lr, "delta_scale": scales[row],
                                "grad_signal": grad_signal[row], "gate": gate[row],
                                "hidden_norm": hidden_norm[row],
                                "exp_avg_norm": first[row], "exp_avg_sq_mean": second[row]})
                row += 1
            groups.append({"lr": sum(lrs) / max(1, len(lrs)), "base_lr": float(group["lr"]), **knobs[gi]})
        summary: dict[str, float] = {}
        if groups:
            for key in groups[0]:
                summary[key] = sum(g[key] for g in groups) / len(groups)
        progress = self.progress
        summary.update({
            "delta_scale_mean": sum(scales) / max(1, rows),
            "delta_scale_min": min(scales, default=1.0),
            "delta_scale_max": max(scales, default=1.0),
            "schedule": math.exp(self.controller.schedule(progress)),
            "progress": -1.0 if progress is None else progress,
            "gate_mean": sum(gate) / max(1, rows),
            "grad_signal_mean": sum(grad_signal) / max(1, rows),
            "hidden_norm_mean": sum(hidden_norm) / max(1, rows),
            "loss_trend": self.signals.loss.trend,
            "reward_trend": self.signals.reward.trend,
            "skipped_steps": float(self.skipped_steps),
            "controller_resets": float(self.online_controller.resets),
        })
        return {"summary": summary, "groups": groups, "tensors": tensors}

    def _moment_stats(self, params: list[Tensor]) -> tuple[list[float], list[float]]:
        """Per tensor: norm of the first-moment buffer and mean of the second (0 where absent)."""
        first = [0.0] * len(params)
        second = [0.0] * len(params)
        idx_m, ms, idx_v, vs = [], [], [], []
        for i, p in enumerate(params):
            state = self.state.get(p, {})
            m = self._memory(state) if state else None
            if m is not None:  # a shard's own figures under FSDP (logging only)
                idx_m.append(i)
                ms.append(local(m))
            v = state.get("exp_avg_sq", state.get("square_avg")) if state else None
            if v is not None:
                idx_v.append(i)
                vs.append(local(v))
        if ms:
            for i, val in zip(idx_m, torch.stack(torch._foreach_norm(ms)).tolist(), strict=True):
                first[i] = val
        if vs:
            for i, val in zip(idx_v, torch.stack([v.float().mean() for v in vs]).tolist(), strict=True):
                second[i] = val
        return first, second

    def format_dynamics(self, step: int | None = None, max_tensors: int | None = 8) -> str:
        """The seed's log block: ``[OnlineAdamW] Step 100 dynamics:`` then one block per tensor."""
        dyn = self.dynamics()
        step = self.online_controller.steps if step is None else step
        s = dyn["summary"]
        knob_text = " | ".join(f"{k}={s[k]:.4g}" for k in self.KNOBS)
        lines = [f"[{type(self).__name__}] Step {step} dynamics:",
                 f"  lr={s['lr']:.3e} | {knob_text} | delta_scale mean={s['delta_scale_mean']:.4f} "
                 f"[{s['delta_scale_min']:.4f}, {s['delta_scale_max']:.4f}]"]
        shown = dyn["tensors"] if max_tensors is None else dyn["tensors"][:max_tensors]
        for i, t in enumerate(shown):
            lines.append(f"  Tensor {i} | grad_signal={t['grad_signal']:.4f} | hidden_norm={t['hidden_norm']:.4f}"
                         f" | delta_scale={t['delta_scale']:.4f}")
            lines.append(f"  exp_avg_norm={t['exp_avg_norm']:.4f} | exp_avg_sq_mean={t['exp_avg_sq_mean']:.6f}")
        if len(shown) < len(dyn["tensors"]):
            lines.append(f"  ... {len(dyn['tensors']) - len(shown)} more tensors")
        return "\n".join(lines)
