"""AdaptiveCallback: feeds an adaptive optimizer the training signals of a HF/TRL trainer.

Works with the plain ``transformers.Trainer`` and TRL's ``GRPOTrainer`` /
``RLOOTrainer`` when our optimizer is passed through ``optimizers=(opt, sched)``::

    trainer = GRPOTrainer(model=..., args=..., optimizers=(OnlineAdamW(...), None), ...)
    AdaptiveCallback().attach(trainer)
    trainer.train()

What it does at every optimizer step (not only at logging steps):

* **loss**: ``attach`` wraps ``trainer.training_step``, whose return value is
  the micro-batch's loss already divided for gradient accumulation (what the
  Trainer sums into its logged ``loss``); just before the optimizer steps
  (``on_pre_optimizer_step``) the sum over the accumulation window, averaged
  over all ranks, is fed to the optimizer. It is the loss the Trainer logs,
  at every step, and every rank's controller sees the same value.
* **reward** (GRPO/RLOO): TRL appends the batch's mean reward, already gathered
  over ranks, to ``trainer._metrics["train"]["reward"]`` each time it scores a
  generation batch; the callback feeds each new value once.
* Targets: the real optimizer under accelerate's ``AcceleratedOptimizer`` (and
  any further ``.optimizer`` wrappers), the LR scheduler, and any extra
  ``targets`` given, whichever has ``observe(loss=, reward=)`` or the seeds'
  ``step_loss`` / ``step_reward``.
* **logging**: ``dynamics()["summary"]`` of each target is added to the
  trainer's logs under ``adaptive/`` (so TensorBoard and W&B record it), a
  per-step history is written to ``OUTPUT_DIR/adaptive_history.jsonl`` (what
  :mod:`adaptiverl.trainer.plot` draws; saved with every checkpoint and
  continued on resume), and at logging steps the main process
  prints ``Step 50 | Reward: 0.82 | Loss: -0.3456 | LR: 3.2e-05 | Momentum: 0.912``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from adaptiverl.signals import ScalarSignal

HISTORY_FILE = "adaptive_history.jsonl"
LOG_PREFIX = "adaptive/"


def unwrap_optimizer(optimizer: Any) -> Any:
    """Follow ``.optimizer`` (accelerate's ``AcceleratedOptimizer`` and similar) to the object that adapts."""
    seen = set()
    while id(optimizer) not in seen:
        seen.add(id(optimizer))
        if is_adaptive(optimizer):
            return optimizer
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            return optimizer
        optimizer = inner
    return optimizer


def is_adaptive(obj: Any) -> bool:
    """True for anything that takes training signals: ``observe`` or ``step_loss`` / ``step_reward``."""
    return any(callable(getattr(obj, name, None)) for name in ("observe", "step_loss", "step_reward"))


def feed(target: Any, loss: float | None, reward: float | None) -> None:
    """Give one step's signals to ``target`` through ``observe`` or the seed names."""
    observe = getattr(target, "observe", None)
    if callable(observe):
        observe(loss=loss, reward=reward)
        return
    if loss is not None and callable(getattr(target, "step_loss", None)):
        target.step_loss(loss)
    if reward is not None and callable(getattr(target, "step_reward", None)):
        target.step_reward(reward)


def _summary(target: Any) -> dict[str, float]:
    dynamics = getattr(target, "dynamics", None)
    if not callable(dynamics):
        return {}
    summary = dynamics().get("summary", {})
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def format_console_line(step: int, reward: float | None, loss: float | None,
                        summary: dict[str, float]) -> str:
    """The seed's console line: ``Step 50 | Reward: 0.82 | Loss: -0.3456 | LR: 3.2e-05 | Momentum: 0.912``.

    Parts whose value is unknown are left out; ``Momentum`` falls back to ``beta1``.
    """
    parts = [f"Step {step}"]
    if reward is not None:
        parts.append(f"Reward: {reward:.2f}")
    if loss is not None:
        parts.append(f"Loss: {loss:.4f}")
    if "lr" in summary:
        parts.append(f"LR: {summary['lr']:.1e}")
    momentum = summary.get("momentum", summary.get("beta1"))
    if momentum is not None:
        parts.append(f"Momentum: {momentum:.3f}")
    return " | ".join(parts)


class AdaptiveCallback(TrainerCallback):
    """Connects adaptive optimizers/controllers to a ``transformers.Trainer`` (or a TRL trainer).

    Args:
        targets: extra objects to feed besides the trainer's optimizer and
            scheduler (controllers, wrappers; anything with ``observe`` or
            ``step_loss`` / ``step_reward``).
        print_console: print the seed's one-line summary at logging steps.
        history_file: per-step JSONL written in ``args.output_dir`` (None: none).
    """

    def __init__(self, targets: list[Any] | None = None, *, print_console: bool = True,
                 history_file: str | None = HISTORY_FILE) -> None:
        self.extra_targets = list(targets or [])
        self.print_console = print_console
        self.history_file = history_file
        self.trainer: Any = None
        self.targets: list[Any] = []
        self.history: list[dict[str, float]] = []
        self.reward_signal = ScalarSignal("reward")
        self._micro_losses: list[torch.Tensor] = []
        self._reward_list: list[float] | None = None
        self._rewards_seen = 0
        self._last: dict[str, Any] = {}

    # ---- wiring -----------------------------------------------------------
    def attach(self, trainer: Any) -> AdaptiveCallback:
        """Register with ``trainer`` and record the loss of every micro-batch it trains on."""
        if self.trainer is not None:
            raise RuntimeError("this AdaptiveCallback is already attached to a trainer")
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        training_step = trainer.training_step
        log = trainer.log

        def training_step_recorded(*args, **kwargs):
            loss = training_step(*args, **kwargs)
            self._micro_losses.append(loss.detach().float().mean())
            return loss

        def log_with_dynamics(logs: dict[str, float], *args, **kwargs):
            if "loss" in logs or any(k.startswith("reward") for k in logs):
                logs.update({LOG_PREFIX + k: v for k, v in self._last.get("summary", {}).items()})
            return log(logs, *args, **kwargs)

        trainer.training_step = training_step_recorded
        trainer.log = log_with_dynamics
        return self

    def _find_targets(self, optimizer: Any, lr_scheduler: Any) -> list[Any]:
        found = [unwrap_optimizer(optimizer)] if optimizer is not None else []
        if lr_scheduler is not None and is_adaptive(lr_scheduler):
            found.append(lr_scheduler)
        found += self.extra_targets
        unique: list[Any] = []
        for target in found:
            if is_adaptive(target) and all(target is not u for u in unique):
                unique.append(target)
        return unique

    # ---- trainer events ---------------------------------------------------
    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if self.trainer is None:
            raise RuntimeError(
                "AdaptiveCallback needs the trainer to read the per-step loss and reward: "
                "use `AdaptiveCallback().attach(trainer)` instead of `callbacks=[AdaptiveCallback()]`")
        self.targets = self._find_targets(optimizer, lr_scheduler)
        if not self.targets:
            raise ValueError(
                f"AdaptiveCallback found nothing to adapt: the optimizer "
                f"({type(unwrap_optimizer(optimizer)).__name__}) "
                "has no observe/step_loss/step_reward; pass an adaptiverl optimizer through "
                "`optimizers=(optimizer, scheduler)` or give `targets=`")
        self._micro_losses.clear()
        self._resume_history(args, state)

    def on_step_begin(self, args, state, control, **kwargs):
        self._micro_losses.clear()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        loss = self._step_loss()
        reward = self._new_reward()
        if reward is not None:
            self.reward_signal.update(reward)
        for target in self.targets:
            feed(target, loss, reward)
        self._last = {"loss": loss, "reward": reward}
        self._micro_losses.clear()

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        summary: dict[str, float] = {}
        for i, target in enumerate(self.targets):
            prefix = "" if i == 0 else f"{type(target).__name__}/"
            summary.update({prefix + k: v for k, v in _summary(target).items()})
        if self.reward_signal.ready and "reward_trend" not in summary:
            summary["reward_trend"] = self.reward_signal.trend
        self._last["summary"] = summary
        row: dict[str, float] = {"step": state.global_step}
        if self._last.get("loss") is not None:
            row["loss"] = self._last["loss"]
        if self._last.get("reward") is not None:
            row["reward"] = self._last["reward"]
        if lr_scheduler is not None and hasattr(lr_scheduler, "get_last_lr"):
            row["scheduler_lr"] = float(lr_scheduler.get_last_lr()[0])
        row.update(summary)
        self.history.append(row)
        if self.history_file and state.is_world_process_zero:
            with open(Path(args.output_dir) / self.history_file, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    def on_save(self, args, state, control, **kwargs):
        """Keep the history up to this step with the checkpoint, so a resumed run continues it."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.history_file and state.is_world_process_zero and folder.is_dir():
            _write_rows(folder / self.history_file, self.history)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.print_console or not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        summary = self._last.get("summary", {})
        reward = logs.get("reward", self._last.get("reward"))
        tqdm.write(format_console_line(state.global_step, reward, logs.get("loss"), summary))

    # ---- helpers ----------------------------------------------------------
    def _step_loss(self) -> float | None:
        if not self._micro_losses:
            return None
        loss = torch.stack(self._micro_losses).sum()
        accelerator = getattr(self.trainer, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1:
            loss = accelerator.reduce(loss.to(accelerator.device), reduction="mean")
        value = float(loss.item())
        return value if math.isfinite(value) else None

    def _new_reward(self) -> float | None:
        """Mean of the batch rewards TRL recorded since the last step (None if none)."""
        metrics = getattr(self.trainer, "_metrics", None)
        if not isinstance(metrics, dict) or "train" not in metrics:
            return None
        rewards = metrics["train"].get("reward")
        if rewards is None:
            return None
        if rewards is not self._reward_list:
            self._reward_list, self._rewards_seen = rewards, 0
        new = [r for r in rewards[self._rewards_seen:] if math.isfinite(r)]
        self._rewards_seen = len(rewards)
        return sum(new) / len(new) if new else None

    def _resume_history(self, args, state) -> None:
        """Start the history afresh, or, when resuming, from the rows saved up to the checkpoint's step."""
        self.history = []
        if not self.history_file or not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if state.global_step > 0:
            for source in (out / f"checkpoint-{state.global_step}" / self.history_file,
                           out / self.history_file):
                if source.is_file():
                    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
                    self.history = [r for r in rows if r["step"] <= state.global_step]
                    break
        _write_rows(out / self.history_file, self.history)


def _write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
