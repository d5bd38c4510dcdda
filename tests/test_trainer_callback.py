"""AdaptiveCallback with the real HF Trainer / TRL GRPOTrainer and the real adaptiverl optimizers.

``AdaptiveTrainer`` feeds the callback every step; the stock ``Trainer`` with
``callbacks=[AdaptiveCallback()]`` is covered in ``test_trainers.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    TrainerCallback,
    TrainingArguments,
)

from adaptiverl.optim import AdaptiveOptimizer, OnlineAdamW, OnlineSGD
from adaptiverl.trainer.callback import (
    HISTORY_FILE,
    AdaptiveCallback,
    format_console_line,
    unwrap_optimizer,
)
from adaptiverl.trainer.trainers import AdaptiveTrainer

DATA = Path(__file__).resolve().parent.parent / "configs" / "data"



def sft_dataset(tokenizer, n: int = 32):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(DATA / "sft_text.jsonl"), split="train").select(range(n))
    return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=48), batched=True,
                  remove_columns=["text"])


def sft_trainer(model_dir, out_dir, make_optimizer, *, steps=4, logging_steps=1, scheduler="linear",
                grad_accum=1, report_to="none", callback=None, trainer_cls=AdaptiveTrainer, max_grad_norm=1.0):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=4, max_steps=steps,
                             learning_rate=0.05, lr_scheduler_type=scheduler, logging_steps=logging_steps,
                             gradient_accumulation_steps=grad_accum, report_to=report_to,
                             save_strategy="no", disable_tqdm=True, seed=0, max_grad_norm=max_grad_norm)
    optimizer = make_optimizer(model.parameters())
    trainer = trainer_cls(model=model, args=args, train_dataset=sft_dataset(tokenizer),
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                          optimizers=(optimizer, None), callbacks=[callback or AdaptiveCallback()])
    return trainer, optimizer


class EffectiveLR(TrainerCallback):
    """Measures the LR actually applied to the embedding: -(dtheta . g) / (g . g), for plain SGD."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.rows: list[tuple[float, float]] = []
        self.reported: list[float] = []  # the optimizer's own delta_scale of the same tensor

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        p = self.trainer.model.transformer.wte.weight
        self.before, self.grad = p.detach().clone(), p.grad.detach().clone()
        self.scheduled = self.trainer.lr_scheduler.get_last_lr()[0]

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        weight = self.trainer.model.transformer.wte.weight
        delta = weight.detach() - self.before
        applied = -(delta * self.grad).sum() / (self.grad * self.grad).sum()
        self.rows.append((self.scheduled, float(applied)))
        ours = unwrap_optimizer(optimizer)
        row = next(i for i, p in enumerate(ours.param_groups[0]["params"]) if p is weight)
        self.reported.append(ours.dynamics()["tensors"][row]["delta_scale"])


def run_effective_lr(model_dir, out_dir, adapt: bool):
    trainer, optimizer = sft_trainer(model_dir, out_dir, lambda p: OnlineSGD(p, lr=0.05, adapt=adapt),
                                     steps=6, scheduler="linear")
    callback = trainer.adaptive_callback
    probe = EffectiveLR(trainer)
    trainer.add_callback(probe)
    trainer.train()
    return probe.rows, probe.reported, callback


def test_adaptation_survives_the_trainers_lambdalr(tiny_gpt2_dir, tmp_path):
    # Control arm: without adaptation the measured LR is exactly the LambdaLR value,
    # which proves the probe measures what was applied.
    rows, _, _ = run_effective_lr(tiny_gpt2_dir, tmp_path / "plain", adapt=False)
    scheduled = [s for s, _ in rows]
    assert scheduled == sorted(scheduled, reverse=True) and scheduled[-1] < 0.5 * scheduled[0]
    for sched, applied in rows:
        assert applied == pytest.approx(sched, rel=1e-4)
    # Adaptive arm: the scheduler still decays group["lr"], and the applied LR departs from it.
    rows, reported, callback = run_effective_lr(tiny_gpt2_dir, tmp_path / "adaptive", adapt=True)
    assert [s for s, _ in rows] == scheduled
    ratios = [applied / sched for sched, applied in rows]
    assert max(abs(r - 1.0) for r in ratios[2:]) > 1e-2, ratios
    # The multiplier applied on top of LambdaLR is the one the optimizer reports.
    assert ratios == pytest.approx(reported, rel=1e-3)
    # The logged effective LR is the controller's, not the scheduler's.
    row = callback.history[2]
    assert row["lr"] != pytest.approx(row["scheduler_lr"], rel=1e-3)
    assert row["base_lr"] == pytest.approx(row["scheduler_lr"])


def test_loss_fed_every_step_equals_trainers_loss(tiny_gpt2_dir, tmp_path, capsys):
    trainer, optimizer = sft_trainer(tiny_gpt2_dir, tmp_path, lambda p: OnlineAdamW(p, lr=1e-3),
                                     steps=5, logging_steps=1, grad_accum=2)
    callback = trainer.adaptive_callback
    trainer.train()
    # The optimizer found under accelerate's AcceleratedOptimizer is ours.
    assert callback.targets == [optimizer]
    assert type(trainer.optimizer).__name__ == "AcceleratedOptimizer"
    assert optimizer.signals.loss.count == 5
    logged = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    fed = [row["loss"] for row in callback.history]
    assert fed == pytest.approx(logged, rel=1e-3, abs=1e-4)
    assert list(optimizer.signals.loss.values) == pytest.approx(fed)
    # Dynamics reach the trainer's logs and the history file; the console line is printed.
    assert "adaptive/lr" in trainer.state.log_history[0] and "adaptive/beta1" in trainer.state.log_history[0]
    rows = [json.loads(line) for line in (tmp_path / HISTORY_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert "Step 5 | Loss: " in capsys.readouterr().out


def test_logging_steps_do_not_limit_feeding(tiny_gpt2_dir, tmp_path):
    trainer, optimizer = sft_trainer(tiny_gpt2_dir, tmp_path, lambda p: OnlineAdamW(p, lr=1e-3),
                                     steps=4, logging_steps=100, callback=AdaptiveCallback(print_console=False))
    trainer.train()
    assert optimizer.signals.loss.count == 4
    assert not any("loss" in row for row in trainer.state.log_history[:-1])


def test_wrapped_torch_optimizer_and_tensorboard(tiny_gpt2_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def make(params):
        return AdaptiveOptimizer(torch.optim.Adagrad(params, lr=0.01))

    trainer, optimizer = sft_trainer(tiny_gpt2_dir, tmp_path, make, steps=3, logging_steps=1,
                                     report_to="tensorboard", callback=AdaptiveCallback(print_console=False))
    trainer.train()
    assert optimizer.signals.loss.count == 3
    events = list(tmp_path.glob("runs/**/events.out.tfevents.*"))
    assert events
    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/adaptive/lr" in tags and "train/loss" in tags


def test_something_must_adapt(tiny_gpt2_dir, tmp_path):
    trainer, _ = sft_trainer(tiny_gpt2_dir, tmp_path, lambda p: torch.optim.SGD(p, lr=0.01), steps=1)
    with pytest.raises(ValueError, match="found nothing to adapt.*SGD"):
        trainer.train()


def test_unwrap_and_console_line():
    from accelerate.optimizer import AcceleratedOptimizer

    opt = OnlineSGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert unwrap_optimizer(AcceleratedOptimizer(opt, device_placement=False)) is opt
    line = format_console_line(50, 0.8213, -0.34561, {"lr": 3.2e-5, "momentum": 0.9123})
    assert line == "Step 50 | Reward: 0.82 | Loss: -0.3456 | LR: 3.2e-05 | Momentum: 0.912"
    assert format_console_line(7, None, 1.0, {"lr": 1e-3, "beta1": 0.9}) == \
        "Step 7 | Loss: 1.0000 | LR: 1.0e-03 | Momentum: 0.900"
    # What adapts shows: the mean and range of the per-tensor lr scales.
    summary = {"lr": 1e-3, "beta1": 0.89984, "delta_scale_mean": 1.62, "delta_scale_min": 0.8,
               "delta_scale_max": 3.1}
    assert format_console_line(9, None, None, summary) == \
        "Step 9 | LR: 1.0e-03 | Scale: x1.62 [0.80-3.10] | Momentum: 0.900"


def test_adaptive_scheduler_passed_as_the_trainers_scheduler_is_fed(tiny_gpt2_dir, tmp_path):
    from adaptiverl.optim import AdaptiveScheduler

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = AdaptiveScheduler(optimizer, patience=None, up_factor=1.5, down_factor=0.5)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=15,
                             logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = AdaptiveTrainer(model=model, args=args, train_dataset=sft_dataset(tokenizer),
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                              optimizers=(optimizer, scheduler), callbacks=[AdaptiveCallback(print_console=False)])
    callback = trainer.adaptive_callback
    trainer.train()
    assert callback.targets == [scheduler]  # plain SGD takes no signals; the scheduler does
    assert scheduler.signals.loss.count == 15
    assert list(scheduler.signals.loss.values) == pytest.approx([r["loss"] for r in callback.history])
    assert optimizer.param_groups[0]["lr"] != pytest.approx(0.05)  # the scheduler acted
    assert "adaptive/adaptive_mult" in trainer.state.log_history[0]


def test_feed_uses_the_seed_names_when_there_is_no_observe():
    from adaptiverl.trainer.callback import feed, is_adaptive

    class SeedStyle:  # a user's controller written against the seed's method names
        def __init__(self):
            self.calls = []

        def step_loss(self, loss):
            self.calls.append(("loss", loss))

        def step_reward(self, reward):
            self.calls.append(("reward", reward))

    target = SeedStyle()
    assert is_adaptive(target) and not is_adaptive(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    feed(target, 0.5, None)
    feed(target, None, 0.25)
    feed(target, 0.4, 0.3)
    assert target.calls == [("loss", 0.5), ("reward", 0.25), ("loss", 0.4), ("reward", 0.3)]


def test_resume_skips_a_torn_history_line_and_keeps_the_rest(tmp_path):
    from types import SimpleNamespace

    from adaptiverl.trainer.callback import HISTORY_FILE, AdaptiveCallback

    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    (tmp_path / HISTORY_FILE).write_text("\n".join(rows[:2]) + "\n" + rows[2][:9])  # killed mid-line
    callback = AdaptiveCallback()
    with pytest.warns(UserWarning, match="torn"):
        callback._resume_history(SimpleNamespace(output_dir=str(tmp_path)),
                                 SimpleNamespace(is_world_process_zero=True, global_step=3))
    assert [r["step"] for r in callback.history] == [1, 2]
    assert [json.loads(line)["step"] for line in (tmp_path / HISTORY_FILE).read_text().splitlines()] == [1, 2]


def test_each_evaluation_feeds_its_eval_loss(tiny_gpt2_dir, tmp_path):
    """on_evaluate hands the HF Trainer's eval_loss to the optimizer (held-out pooling reads it) and
    the next step's history row carries it."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=5,
                             learning_rate=1e-3, logging_steps=1, eval_strategy="steps", eval_steps=2,
                             per_device_eval_batch_size=4, report_to="none", save_strategy="no",
                             disable_tqdm=True, seed=0)
    optimizer = OnlineAdamW(model.parameters(), lr=1e-3)
    callback = AdaptiveCallback(print_console=False)
    trainer = AdaptiveTrainer(model=model, args=args, train_dataset=sft_dataset(tokenizer),
                              eval_dataset=sft_dataset(tokenizer, 8),
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                              optimizers=(optimizer, None), callbacks=[callback])
    trainer.train()
    logged = [row["eval_loss"] for row in trainer.state.log_history if "eval_loss" in row]
    assert len(logged) == 3  # after steps 2 and 4, and at the end
    assert list(optimizer.signals["eval_loss"].values) == pytest.approx(logged)
    assert optimizer.online_controller.state.eval_count == 2  # the last one would be read at step 6
    assert [row["step"] for row in callback.history if "eval_loss" in row] == [3, 5]
