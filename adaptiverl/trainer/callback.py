"""AdaptiveCallback: feeds an adaptive optimizer the training signals of a HF/TRL trainer.

Two ways to hook it up, neither patching the trainer::

    # every step's loss, reward and pre-clip gradient norm (recommended)
    trainer = AdaptiveGRPOTrainer(model=..., args=..., reward_funcs=...,
                                  optimizer_cls_and_kwargs=(OnlineAdamW, {}))
    # or any stock trainer; the loss and reward then come from its logs
    trainer = GRPOTrainer(..., optimizers=(OnlineAdamW(...), None), callbacks=[AdaptiveCallback()])

HF callbacks never see the training loss, so the per-step values come from the
``Adaptive*Trainer`` classes of :mod:`adaptiverl.trainer.trainers`, which override
the public ``training_step`` and hand the callback :meth:`AdaptiveCallback.record_step`
once per optimizer step. On a stock trainer the callback does what the public
callback events allow and warns once that it does.

Per optimizer step, in ``on_pre_optimizer_step`` (after the Trainer clipped the
gradients, before ``optimizer.step()``), every target gets one
``observe(loss=, reward=, grad_norm=)`` call (or the seed names ``step_loss`` /
``step_reward``):

* **loss**: from an ``Adaptive*Trainer``, the sum over the accumulation window of what
  ``training_step`` returns, averaged over ranks, i.e. exactly the loss the Trainer logs,
  at every step. On a stock trainer: the ``loss`` of the last ``on_log`` (the mean since
  the log before), fed at the step after the logging step.
* **reward** (GRPO/RLOO): from an ``Adaptive*Trainer``, the mean of the batch rewards TRL
  recorded since the last step (already gathered over ranks); on a stock trainer, the
  ``reward`` TRL logs, as for the loss.
* **grad_norm**: from an ``Adaptive*Trainer``, the L2 norm of all gradients after the last
  backward of the window and before clipping, the same value the Trainer logs as
  ``grad_norm``. On a stock trainer the norm of the gradients the optimizer is about to use
  (after clipping: ``min(norm, max_grad_norm)`` when ``max_grad_norm > 0``). A non-finite
  norm is passed on: the Online optimizers skip that step.
* **RL signals** (GRPO/RLOO), as further keywords of ``observe``: ``policy_kl`` (the KL between
  the policy before and after the previous optimizer step on that step's sampled tokens, from
  the ``Adaptive*Trainer``'s :class:`~adaptiverl.signals.policy.PolicyProbe`, measured and fed in
  ``on_optimizer_step``, so a checkpoint of that step holds it; logged in the next step's row), ``entropy``, ``reward_std`` and
  ``frac_reward_zero_std`` (TRL's per-batch records; on a stock trainer, from its logs as for
  the loss). On a stock GRPO/RLOO trainer, whose sampled batches no public hook shows,
  ``policy_kl`` is measured at the prefixes of the first 8 training prompts (when they are plain
  text) instead: two no-grad forwards of 8 short rows per step. Only RL trainers get it
  (:func:`is_rl_config`): a supervised run, on prompt/completion rows too, pays nothing for it.
* **horizon**: ``set_total_steps(state.max_steps)`` at train begin (also on resume), for
  targets that have it.

Targets are the real optimizer under accelerate's ``AcceleratedOptimizer`` (and any further
``.optimizer`` wrappers), the LR scheduler, and any extra ``targets``, whichever has
``observe`` or ``step_loss`` / ``step_reward``.

Logging: ``dynamics()["summary"]`` of each target goes into the trainer's logs under
``adaptive/`` (through the ``Adaptive*Trainer``'s ``log``, so TensorBoard and W&B record
it), a per-step history into ``OUTPUT_DIR/adaptive_history.jsonl`` (what
:mod:`adaptiverl.trainer.plot` draws; saved with every checkpoint and continued on resume),
and at logging steps the main process prints
``Step 50 | Reward: 0.82 | Loss: -0.3456 | LR: 3.2e-05 | Scale: x1.62 [0.80-3.10] | Momentum: 0.912``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from adaptiverl._files import append_text, write_text
from adaptiverl.signals import ScalarSignal
from adaptiverl.signals.policy import PolicyProbe, text_probe_batch

HISTORY_FILE = "adaptive_history.jsonl"
LOG_PREFIX = "adaptive/"
#: Further per-step scalars given to ``observe`` by keyword when known (RL runs).
RL_SIGNALS = ("policy_kl", "entropy", "reward_std", "frac_reward_zero_std")



def quiet_checkpointing_aliases() -> None:
    """Hide transformers 5's four FutureWarnings about the ``gradient_checkpointing`` names, only them.

    TRL's configs default the deprecated ``gradient_checkpointing`` argument to True, and TRL's
    generation calls the deprecated model methods around every ``generate``: a stock-trainer script
    gets four warnings about names it never wrote. Called on import of this module and by every
    :class:`AdaptiveCallback` (train.py also avoids them at the source: it sets
    ``activation_checkpointing``).
    """
    warnings.filterwarnings(
        "ignore", message=r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated and will be removed",
        category=FutureWarning)


quiet_checkpointing_aliases()


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


def feed(target: Any, loss: float | None, reward: float | None, grad_norm: float | None = None,
         **extra: float | None) -> None:
    """Give one step's signals to ``target`` in one ``observe`` call, or through the seed names.

    Seed-style targets (``step_loss`` / ``step_reward`` only) take neither a gradient norm nor
    the ``extra`` signals (``policy_kl``, ``entropy``, ...).
    """
    observe = getattr(target, "observe", None)
    if callable(observe):
        signals = {"loss": loss, "reward": reward, "grad_norm": grad_norm, **extra}
        observe(**{k: v for k, v in signals.items() if v is not None})
        return
    if loss is not None and callable(getattr(target, "step_loss", None)):
        target.step_loss(loss)
    if reward is not None and callable(getattr(target, "step_reward", None)):
        target.step_reward(reward)


def gradient_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """``sqrt(sum_p ||grad_p||^2)`` over every gradient, as a 0-d tensor; None when there is none.

    The norm ``clip_grad_norm_`` computes (``torch.nn.utils.get_total_norm``). For sharded
    DTensor gradients (FSDP2) the norm is all-reduced to the full-tensor value, so every
    rank gets the same number. Gradients DeepSpeed keeps in its own partitions (ZeRO) are
    not in ``p.grad``: None.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    full_tensor = getattr(norm, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else norm


def _summary(target: Any) -> dict[str, float]:
    dynamics = getattr(target, "dynamics", None)
    if not callable(dynamics):
        return {}
    summary = dynamics().get("summary", {})
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def format_console_line(step: int, reward: float | None, loss: float | None,
                        summary: dict[str, float]) -> str:
    """The seed's console line, ``Step 50 | Reward: 0.82 | Loss: -0.3456 | LR: 3.2e-05 | Momentum: 0.912``,
    with what the controller moves: ``Scale: x1.62 [0.80-3.10]`` (the mean and range of the
    per-tensor lr scales, where the optimizer has them) before ``Momentum``.

    Parts whose value is unknown are left out; ``Momentum`` falls back to ``beta1``.
    """
    parts = [f"Step {step}"]
    if reward is not None:
        parts.append(f"Reward: {reward:.2f}")
    if loss is not None:
        parts.append(f"Loss: {loss:.4f}")
    if "lr" in summary:
        parts.append(f"LR: {summary['lr']:.1e}")
    if "delta_scale_mean" in summary:
        spread = (f" [{summary['delta_scale_min']:.2f}-{summary['delta_scale_max']:.2f}]"
                  if "delta_scale_min" in summary and "delta_scale_max" in summary else "")
        parts.append(f"Scale: x{summary['delta_scale_mean']:.2f}{spread}")
    momentum = summary.get("momentum", summary.get("beta1"))
    if momentum is not None:
        parts.append(f"Momentum: {momentum:.3f}")
    return " | ".join(parts)


class AdaptiveCallback(TrainerCallback):
    """Connects adaptive optimizers/controllers to a ``transformers.Trainer`` (or a TRL trainer).

    Pass it in ``callbacks=[AdaptiveCallback()]`` of any trainer; the ``Adaptive*Trainer``
    classes add one themselves and feed it every step (see the module docstring).

    Args:
        targets: extra objects to feed besides the trainer's optimizer and
            scheduler (controllers, wrappers; anything with ``observe`` or
            ``step_loss`` / ``step_reward``).
        print_console: print the seed's one-line summary at logging steps.
        history_file: per-step JSONL written in ``args.output_dir`` (None: none).
        require_targets: with nothing to adapt, raise at train begin (True) or warn and
            stay idle (False: what the ``Adaptive*Trainer`` classes add by themselves, so
            that they also train a plain torch optimizer).
    """

    def __init__(self, targets: list[Any] | None = None, *, print_console: bool = True,
                 history_file: str | None = HISTORY_FILE, require_targets: bool = True,
                 horizon: bool = True) -> None:
        quiet_checkpointing_aliases()
        self.extra_targets = list(targets or [])
        #: tell the optimizers ``max_steps`` (their horizon schedule anneals towards it); False
        #: leaves them without a horizon, e.g. for RL runs where an anneal loses to a constant lr
        self.horizon = horizon
        self.require_targets = require_targets
        self.print_console = print_console
        self.history_file = history_file
        self.targets: list[Any] = []
        self.history: list[dict[str, float]] = []
        self.reward_signal = ScalarSignal("reward")
        #: True once a trainer hands over per-step signals through :meth:`record_step`.
        self.fed_by_trainer = False
        self._pending: dict[str, float | None] = {}
        self._from_logs: dict[str, float | None] = {}
        self._probe: Any = None
        self._text_probe: dict[str, Any] | None = None  # stock trainers: the prompts' own prefixes
        self._policy: dict[str, float] = {}
        self._eval: dict[str, float] = {}  # the last evaluation's eval_loss, for the next history row
        self._warned_logs_only = False
        self._last: dict[str, Any] = {}

    # ---- wiring -----------------------------------------------------------
    def attach(self, trainer: Any) -> AdaptiveCallback:
        """Deprecated: register with ``trainer`` (use ``callbacks=[...]`` or an ``Adaptive*Trainer``).

        Replaces an ``AdaptiveCallback`` the trainer already holds, so exactly one feeds it.
        """
        warnings.warn("AdaptiveCallback.attach(trainer) is deprecated: pass callbacks=[AdaptiveCallback()] "
                      "or use the Adaptive*Trainer classes of adaptiverl.trainer.trainers",
                      DeprecationWarning, stacklevel=2)
        for callback in list(trainer.callback_handler.callbacks):
            if isinstance(callback, AdaptiveCallback) and callback is not self:
                trainer.remove_callback(callback)
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def record_step(self, *, loss: float | None = None, reward: float | None = None,
                    grad_norm: float | None = None, policy_probe: Any = None, **signals: float | None) -> None:
        """This optimizer step's signals, handed over by the trainer before it clips and steps.

        Called by the ``Adaptive*Trainer`` classes after the last backward of the accumulation
        window; the values are fed to the targets in the following ``on_pre_optimizer_step``.
        ``signals`` are further scalars by name (:data:`RL_SIGNALS`); ``policy_probe`` (a
        :class:`~adaptiverl.signals.policy.PolicyProbe`) is read after the optimizer step and its
        ``policy_kl`` and ``entropy`` are fed then (logged with the next step's signals).
        """
        unknown = set(signals) - set(RL_SIGNALS)
        if unknown:
            raise TypeError(f"AdaptiveCallback.record_step: unknown signal(s) {sorted(unknown)}; "
                            f"known: {list(RL_SIGNALS)}")
        self.fed_by_trainer = True
        self._pending = {"loss": _finite(loss), "reward": _finite(reward), "grad_norm": grad_norm,
                         **{k: _finite(v) for k, v in signals.items()}}
        self._probe = policy_probe

    def log_entries(self) -> dict[str, float]:
        """The latest step's dynamics summary under ``adaptive/``, to merge into a train log."""
        return {LOG_PREFIX + k: v for k, v in self._last.get("summary", {}).items()}

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
        self.targets = self._find_targets(optimizer, lr_scheduler)
        if not self.targets:
            message = (
                f"AdaptiveCallback found nothing to adapt: the optimizer "
                f"({type(unwrap_optimizer(optimizer)).__name__}) "
                "has no observe/step_loss/step_reward; give an Adaptive*Trainer "
                "optimizer_cls_and_kwargs=(OnlineAdamW, {...}), pass an adaptiverl optimizer through "
                "`optimizers=(optimizer, scheduler)`, or give `targets=`")
            if self.require_targets:
                raise ValueError(message)
            warnings.warn(message + "; training without adaptation", UserWarning, stacklevel=2)
        for target in self.targets if self.horizon else ():
            if callable(getattr(target, "set_total_steps", None)):
                target.set_total_steps(int(state.max_steps))
        self._pending, self._from_logs, self._probe, self._policy, self._eval = {}, {}, None, {}, {}
        self._text_probe = (_prompt_probe(kwargs.get("train_dataloader"), kwargs.get("processing_class"))
                            if is_rl_config(args) else None)
        self._resume_history(args, state)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.targets:
            self._pending = {}
            return
        if self.fed_by_trainer:
            signals, self._pending = self._pending, {}
        else:
            self._warn_logs_only(args)
            signals, self._from_logs = self._from_logs, {}
            norm = gradient_norm(model.parameters()) if model is not None else None
            signals["grad_norm"] = float(norm) if norm is not None else None
            if self._text_probe is not None and model is not None:  # measured after the step
                self._probe = PolicyProbe(model, self._text_probe,
                                          temperature=float(getattr(args, "temperature", 1.0) or 1.0))
        policy, self._policy = self._policy, {}
        loss, reward, grad_norm = signals.get("loss"), signals.get("reward"), signals.get("grad_norm")
        extra = {k: signals[k] for k in RL_SIGNALS if signals.get(k) is not None and k not in policy}
        if reward is not None:
            self.reward_signal.update(reward)
        for target in self.targets:
            feed(target, loss, reward, grad_norm, **extra)
        # the previous step's policy change was fed when it was measured; it is logged in this row
        self._last = {"loss": loss, "reward": reward, "grad_norm": grad_norm, **extra, **policy}

    def on_optimizer_step(self, args, state, control, **kwargs):
        """The step is taken: measure how far it moved the policy and feed it to the targets now.

        Fed here, not with the next step's signals, so a checkpoint written after this step holds
        it in the optimizer's state: a resumed run steps on it exactly as the uninterrupted one.
        The controller acts on it at its next step either way; a scheduler target (rsl_rl's rule)
        sets the next step's lr from it. It is logged in the next step's history row.
        """
        probe, self._probe = self._probe, None
        if probe is not None and self.targets:
            measured = probe.after()
            if not self.fed_by_trainer:  # prompt prefixes: the change, not the policy's own entropy
                measured = {"policy_kl": measured["policy_kl"]}
            finite = {k: _finite(v) for k, v in measured.items()}
            self._policy = {k: v for k, v in finite.items() if v is not None}
            for target in self.targets if self._policy else ():
                feed(target, None, None, None, **self._policy)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """Feed the evaluation's ``eval_loss`` to the targets (an Online optimizer's held-out pooling
        reads it in supervised runs; RL runs ignore it). Logged in the next step's history row."""
        value = _finite((metrics or {}).get("eval_loss"))
        if value is None or not self.targets:
            return
        for target in self.targets:
            feed(target, None, None, None, eval_loss=value)
        self._eval = {"eval_loss": value}

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        summary: dict[str, float] = {}
        for i, target in enumerate(self.targets):
            prefix = "" if i == 0 else f"{type(target).__name__}/"
            summary.update({prefix + k: v for k, v in _summary(target).items()})
        if self.reward_signal.ready and "reward_trend" not in summary:
            summary["reward_trend"] = self.reward_signal.trend
        self._last["summary"] = summary
        row: dict[str, float] = {"step": state.global_step}
        for key in ("loss", "reward", "grad_norm", *RL_SIGNALS):
            if self._last.get(key) is not None:
                row[key] = self._last[key]
        row.update(self._eval)
        self._eval = {}
        if lr_scheduler is not None and hasattr(lr_scheduler, "get_last_lr"):
            row["scheduler_lr"] = float(lr_scheduler.get_last_lr()[0])
        row.update(summary)
        self.history.append(row)
        if self.history_file and state.is_world_process_zero:
            append_text(Path(args.output_dir) / self.history_file, json.dumps(row) + "\n")

    def on_save(self, args, state, control, **kwargs):
        """Keep the history up to this step with the checkpoint, so a resumed run continues it."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.history_file and state.is_world_process_zero and folder.is_dir():
            _write_rows(folder / self.history_file, self.history)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        if not self.fed_by_trainer:  # a stock trainer: its logged means are the signals we get
            self._from_logs = {key: _finite(logs.get(key)) for key in ("loss", "reward", *RL_SIGNALS)}
        if self.print_console and state.is_world_process_zero:
            summary = self._last.get("summary", {})
            reward = logs.get("reward", self._last.get("reward"))
            tqdm.write(format_console_line(state.global_step, reward, logs.get("loss"), summary))

    # ---- helpers ----------------------------------------------------------
    def _warn_logs_only(self, args) -> None:
        if self._warned_logs_only:
            return
        self._warned_logs_only = True
        every = args.logging_steps
        first = (f"; with logging_steps={every} the optimizer gets its first loss at step {int(every) + 1} "
                 "and until then adapts from gradients alone (an Online optimizer then warns that no loss "
                 "was observed: this is why). Lower logging_steps (1 feeds every step's loss) or"
                 if every > 1 else ". For every step's own values")
        warnings.warn(
            "AdaptiveCallback on a stock trainer: HF callbacks never receive the training loss, so "
            f"the loss (and TRL's reward) reach the optimizer from the trainer's logs, every "
            f"logging_steps={every} steps and one step late, and the gradient norm is "
            f"taken after clipping{first} use the Adaptive*Trainer classes of "
            "adaptiverl.trainer.trainers (AdaptiveTrainer, AdaptiveSFTTrainer, AdaptiveGRPOTrainer, "
            "AdaptiveRLOOTrainer).", UserWarning, stacklevel=2)

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
                if source.is_file():  # a line torn by a crash is skipped with a warning
                    rows = read_jsonl(source)
                    self.history = [r for r in rows if isinstance(r.get("step"), int | float)
                                    and r["step"] <= state.global_step]
                    break
        _write_rows(out / self.history_file, self.history)


def is_rl_config(args: Any) -> bool:
    """Whether ``args`` configure an RL trainer that samples completions (TRL's ``GRPOConfig`` /
    ``RLOOConfig``: they carry ``num_generations``). Only those get the policy-change probe: a
    supervised run, prompt/completion rows included, pays nothing for it and gets no KL prior."""
    return getattr(args, "num_generations", None) is not None


def _prompt_probe(dataloader: Any, tokenizer: Any) -> dict[str, Any] | None:
    """The stock-trainer probe batch: the first training prompts, when they are plain text."""
    dataset = getattr(dataloader, "dataset", None)
    names = getattr(dataset, "column_names", None)
    if not names or "prompt" not in names or tokenizer is None:
        return None
    try:
        return text_probe_batch(list(dataset[:8]["prompt"]), tokenizer)
    except (TypeError, ValueError, KeyError):  # conversational prompts, a processor without text input
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one a line; a torn or bad line is skipped with a warning."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            warnings.warn(f"{path}:{number}: skipping a line that is not a JSON object "
                          f"(torn by a crash?): {line[:80]!r}", UserWarning, stacklevel=2)
            continue
        rows.append(row)
    return rows


def _write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
