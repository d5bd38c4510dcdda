"""``callbacks=[AdaptiveCallback()]`` on the stock trainers, and the ``Adaptive*Trainer`` classes.

Real ``transformers.Trainer`` / TRL ``SFTTrainer``, ``GRPOTrainer``, ``RLOOTrainer`` on the
tiny local GPT-2, real adaptiverl optimizers; nothing is attached or patched.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from test_trainer_callback import sft_dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from adaptiverl.optim import AdaptiveOptimizer, OnlineAdamW
from adaptiverl.trainer.callback import AdaptiveCallback, unwrap_optimizer
from adaptiverl.trainer.trainers import (
    AdaptiveTrainer,
    decay_parameter_groups,
    trl_recorded_rewards,
)

PROMPTS = ("Return the", "This module", "If the", "A list")


def _model_and_tokenizer(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def _sft_args(out_dir, **overrides):
    kwargs = dict(output_dir=str(out_dir), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3,
                  logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
                  weight_decay=0.1)
    return TrainingArguments(**{**kwargs, **overrides})


def _logged(trainer, key):
    return [row[key] for row in trainer.state.log_history if key in row and "train_runtime" not in row]


def _grpo_parts(model_dir, out_dir, **overrides):
    from datasets import Dataset
    from trl import GRPOConfig

    from adaptiverl.rewards import build_rewards

    model, tokenizer = _model_and_tokenizer(model_dir)
    kwargs = dict(output_dir=str(out_dir), per_device_train_batch_size=4, num_generations=2,
                  max_completion_length=8, max_steps=3, logging_steps=1, report_to="none",
                  save_strategy="no", disable_tqdm=True, learning_rate=1e-3, seed=0, bf16=False)
    args = GRPOConfig(**{**kwargs, **overrides})
    reward = build_rewards([{"type": "length", "target": 12}, {"type": "regex", "pattern": "e"}])
    return dict(model=model, reward_funcs=[reward], args=args, processing_class=tokenizer,
                train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS] * 4))


def _rloo_args(out_dir, **overrides):
    from trl import RLOOConfig

    kwargs = dict(output_dir=str(out_dir), per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
                  max_steps=3, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
                  learning_rate=1e-3, seed=0, bf16=False)
    return RLOOConfig(**{**kwargs, **overrides})


def _sft_parts(model_dir, out_dir):
    """Model, tokenizer, a 16-row text dataset and a 3-step SFTConfig."""
    from datasets import Dataset
    from trl import SFTConfig

    model, tokenizer = _model_and_tokenizer(model_dir)
    texts = Dataset.from_list([{"text": f"{p} value of the object is returned."} for p in PROMPTS] * 4)
    args = SFTConfig(output_dir=str(out_dir), per_device_train_batch_size=4, max_steps=3, logging_steps=1,
                     report_to="none", save_strategy="no", disable_tqdm=True, learning_rate=1e-3, seed=0,
                     max_length=32, bf16=False)
    return model, tokenizer, texts, args


def test_stock_trainer_with_callbacks_list_feeds_what_is_public(tiny_gpt2_dir, tmp_path):
    model, tokenizer = _model_and_tokenizer(tiny_gpt2_dir)
    optimizer = OnlineAdamW(model.parameters(), lr=1e-3)
    callback = AdaptiveCallback(print_console=False)
    # max_grad_norm far above the norm: clipping is a no-op, so the norm after clipping is the Trainer's
    trainer = Trainer(model=model, args=_sft_args(tmp_path, max_grad_norm=1e6), train_dataset=sft_dataset(tokenizer),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                      optimizers=(optimizer, None), callbacks=[callback])
    with pytest.warns(UserWarning, match="stock trainer.*logging_steps=1.*Adaptive\\*Trainer") as record:
        trainer.train()
    assert sum("stock trainer" in str(w.message) for w in record) == 1  # once
    assert optimizer.total_steps == 4  # max_steps reached the optimizer
    logged_loss, logged_norm = _logged(trainer, "loss"), _logged(trainer, "grad_norm")
    assert len(logged_loss) == 4
    # The loss comes from the logs, one step late: steps 2..4 get the losses logged at steps 1..3.
    assert list(optimizer.signals.loss.values) == pytest.approx(logged_loss[:3])
    assert "loss" not in callback.history[0]
    assert [r["loss"] for r in callback.history[1:]] == pytest.approx(logged_loss[:3])
    # The gradient norm reaches the optimizer at every step, before it steps.
    assert [r["grad_norm"] for r in callback.history] == pytest.approx(logged_norm, rel=1e-4)


def test_adaptive_trainer_feeds_loss_and_pre_clip_grad_norm_every_step(tiny_gpt2_dir, tmp_path):
    model, tokenizer = _model_and_tokenizer(tiny_gpt2_dir)
    trainer = AdaptiveTrainer(model=model, args=_sft_args(tmp_path, max_grad_norm=0.05, gradient_accumulation_steps=2),
                              train_dataset=sft_dataset(tokenizer),
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                              optimizer_cls_and_kwargs=(OnlineAdamW, {}),
                              callbacks=[AdaptiveCallback(print_console=False)])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*stock trainer")
        trainer.train()
    optimizer = unwrap_optimizer(trainer.optimizer)
    assert isinstance(optimizer, OnlineAdamW) and optimizer.total_steps == 4
    history = trainer.adaptive_callback.history
    assert [r["loss"] for r in history] == pytest.approx(_logged(trainer, "loss"), rel=1e-4)
    assert list(optimizer.signals.loss.values) == pytest.approx(_logged(trainer, "loss"), rel=1e-4)
    # The norm before clipping, as the Trainer logs it (clipping at 0.05 was active).
    logged_norm = _logged(trainer, "grad_norm")
    assert min(logged_norm) > 0.05
    assert [r["grad_norm"] for r in history] == pytest.approx(logged_norm, rel=1e-4)
    # lr comes from the training arguments; dynamics are in the logs for report_to.
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-3)
    assert "adaptive/lr" in trainer.state.log_history[0]


def test_decay_groups_are_hfs(tiny_gpt2_dir, tmp_path):
    model, tokenizer = _model_and_tokenizer(tiny_gpt2_dir)
    stock = Trainer(model=model, args=_sft_args(tmp_path), train_dataset=sft_dataset(tokenizer, 8),
                    data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    hf_groups = stock.create_optimizer().param_groups
    ours = decay_parameter_groups(model, 0.1)
    assert [[id(p) for p in g["params"]] for g in ours] == [[id(p) for p in g["params"]] for g in hf_groups]
    assert [g["weight_decay"] for g in ours] == [0.1, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in ours[1]["params"]}
    assert {"transformer.h.0.attn.c_attn.bias", "transformer.h.0.ln_1.weight", "transformer.ln_f.weight"} <= no_decay
    assert "transformer.h.0.attn.c_attn.weight" in {names[id(p)] for p in ours[0]["params"]}
    # The trainer-built OnlineAdamW has exactly these groups.
    trainer = AdaptiveTrainer(model=model, args=_sft_args(tmp_path / "a"), train_dataset=sft_dataset(tokenizer, 8),
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                              optimizer_cls_and_kwargs=(OnlineAdamW, {"betas": (0.9, 0.95)}))
    built = trainer.create_optimizer()
    assert isinstance(built, OnlineAdamW)
    assert [[id(p) for p in g["params"]] for g in built.param_groups] == [[id(p) for p in g["params"]] for g in ours]
    assert [(g["weight_decay"], g["lr"], g["betas"]) for g in built.param_groups] == \
        [(0.1, 1e-3, (0.9, 0.95)), (0.0, 1e-3, (0.9, 0.95))]
    with pytest.raises(ValueError, match="weight_decay"):
        decay_parameter_groups(model, float("nan"))


def test_optimizer_arguments_are_checked(tiny_gpt2_dir, tmp_path):
    model, tokenizer = _model_and_tokenizer(tiny_gpt2_dir)
    common = dict(model=model, args=_sft_args(tmp_path), train_dataset=sft_dataset(tokenizer, 8),
                  data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    with pytest.raises(ValueError, match="'weight_decay' is set per parameter group.*weight_decay=0.5"):
        AdaptiveTrainer(**common, optimizer_cls_and_kwargs=(OnlineAdamW, {"weight_decay": 0.5}))
    with pytest.raises(ValueError, match="not both"):
        AdaptiveTrainer(**common, optimizers=(OnlineAdamW(model.parameters()), None),
                        optimizer_cls_and_kwargs=(OnlineAdamW, {}))
    with pytest.raises(TypeError, match=r"\(optimizer class, dict of kwargs\)"):
        AdaptiveTrainer(**common, optimizer_cls_and_kwargs=OnlineAdamW)
    with pytest.raises(TypeError, match="optimizer_wrapper must be callable"):
        AdaptiveTrainer(**common, optimizer_wrapper="AdaptiveOptimizer")


def test_optimizer_wrapper_wraps_what_the_trainer_builds(tiny_gpt2_dir, tmp_path):
    model, tokenizer = _model_and_tokenizer(tiny_gpt2_dir)
    trainer = AdaptiveTrainer(model=model, args=_sft_args(tmp_path, max_steps=3, optim="adamw_torch"),
                              train_dataset=sft_dataset(tokenizer),
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                              optimizer_wrapper=functools.partial(AdaptiveOptimizer, lr_rule="trend"))
    trainer.train()
    wrapper = unwrap_optimizer(trainer.optimizer)
    assert isinstance(wrapper, AdaptiveOptimizer) and isinstance(wrapper.optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in wrapper.param_groups] == [0.1, 0.0]
    assert wrapper.signals.loss.count == 3
    # Only one AdaptiveCallback: the one the trainer added itself.
    assert sum(isinstance(cb, AdaptiveCallback) for cb in trainer.callback_handler.callbacks) == 1


def test_adaptive_trainer_with_a_plain_torch_optimizer_trains_and_says_so(tiny_gpt2_dir, tmp_path):
    model, tokenizer = _model_and_tokenizer(tiny_gpt2_dir)
    trainer = AdaptiveTrainer(model=model, args=_sft_args(tmp_path, max_steps=2), train_dataset=sft_dataset(tokenizer),
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    with pytest.warns(UserWarning, match="found nothing to adapt.*AdamW.*training without adaptation"):
        trainer.train()
    assert trainer.state.global_step == 2


def test_attach_is_deprecated_and_keeps_one_callback(tiny_gpt2_dir, tmp_path):
    model, tokenizer = _model_and_tokenizer(tiny_gpt2_dir)
    trainer = AdaptiveTrainer(model=model, args=_sft_args(tmp_path, max_steps=2), train_dataset=sft_dataset(tokenizer),
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                              optimizer_cls_and_kwargs=(OnlineAdamW, {}))
    mine = AdaptiveCallback(print_console=False)
    with pytest.deprecated_call():
        assert mine.attach(trainer) is mine
    assert trainer.adaptive_callback is mine
    assert [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, AdaptiveCallback)] == [mine]
    trainer.train()
    assert len(mine.history) == 2 and all("loss" in r for r in mine.history)


def test_stock_grpo_trainer_with_callbacks_list(tiny_gpt2_dir, tmp_path):
    from trl import GRPOTrainer

    parts = _grpo_parts(tiny_gpt2_dir, tmp_path)
    optimizer = OnlineAdamW(parts["model"].parameters(), lr=1e-3)
    trainer = GRPOTrainer(**parts, optimizers=(optimizer, None), callbacks=[AdaptiveCallback(print_console=False)])
    with pytest.warns(UserWarning, match="stock trainer"):
        trainer.train()
    logged = _logged(trainer, "reward")
    assert len(logged) == 3
    assert list(optimizer.signals.reward.values) == pytest.approx(logged[:2])  # from the logs, one step late
    assert optimizer.total_steps == 3
    assert list(optimizer.signals["entropy"].values) == pytest.approx(_logged(trainer, "entropy")[:2])
    assert list(optimizer.signals["reward_std"].values) == pytest.approx(_logged(trainer, "reward_std")[:2])
    # the policy change, measured at the training prompts' own prefixes (no hook shows the batch),
    # fed right after each of the 3 steps (so a checkpoint of a step holds that step's change)
    assert optimizer.signals["policy_kl"].count == 3 and min(optimizer.signals["policy_kl"].values) > 0


def test_adaptive_grpo_trainer_feeds_trls_reward_every_step(tiny_gpt2_dir, tmp_path):
    """Also the contract test of ``trl_recorded_rewards``: it fails when TRL moves its reward record."""
    from adaptiverl.trainer.trainers import AdaptiveGRPOTrainer

    parts = _grpo_parts(tiny_gpt2_dir, tmp_path, logging_steps=2, weight_decay=0.01)
    trainer = AdaptiveGRPOTrainer(**parts, optimizer_cls_and_kwargs=(OnlineAdamW, {}),
                                  callbacks=[AdaptiveCallback(print_console=False)])
    seen: list[list[float] | None] = []

    class Probe(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            seen.append(list(trl_recorded_rewards(trainer) or []))

    trainer.add_callback(Probe())
    trainer.train()
    optimizer = unwrap_optimizer(trainer.optimizer)
    assert isinstance(optimizer, OnlineAdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    fed = [r["reward"] for r in trainer.adaptive_callback.history]
    assert len(fed) == 3 and list(optimizer.signals.reward.values) == pytest.approx(fed)
    # TRL's record holds one batch mean per generation; it is cleared at each log (every 2 steps).
    assert [len(s) for s in seen] == [1, 2, 1]
    assert fed == pytest.approx([seen[0][0], seen[1][1], seen[2][0]])
    # And the reward logged at step 2 is the mean of the two steps it covers.
    assert _logged(trainer, "reward") == pytest.approx([(fed[0] + fed[1]) / 2])
    assert optimizer.signals.loss.count == 3 and optimizer.total_steps == 3
    # RL signals: the policy change of each step, fed right after it, logged in the next step's row
    history = trainer.adaptive_callback.history
    assert "policy_kl" not in history[0] and all(r["policy_kl"] > 0 for r in history[1:])
    assert optimizer.signals["policy_kl"].count == 3 and optimizer.signals["entropy"].count == 3
    assert list(optimizer.signals["policy_kl"].values)[:2] == pytest.approx([r["policy_kl"] for r in history[1:]])
    assert optimizer.signals["reward_std"].count == 3 and optimizer.signals["frac_reward_zero_std"].count == 3


def test_adaptive_rloo_and_sft_trainers(tiny_gpt2_dir, tmp_path):
    from adaptiverl.trainer.trainers import AdaptiveRLOOTrainer, AdaptiveSFTTrainer

    parts = _grpo_parts(tiny_gpt2_dir, tmp_path / "rloo")
    parts["args"] = _rloo_args(tmp_path / "rloo", max_steps=2)
    rloo = AdaptiveRLOOTrainer(**parts, optimizer_cls_and_kwargs=(OnlineAdamW, {}),
                               callbacks=[AdaptiveCallback(print_console=False)])
    rloo.train()
    assert [r["reward"] for r in rloo.adaptive_callback.history] == pytest.approx(_logged(rloo, "reward"))

    model, tokenizer, texts, args = _sft_parts(tiny_gpt2_dir, tmp_path / "sft")
    sft = AdaptiveSFTTrainer(model=model, args=args, train_dataset=texts, processing_class=tokenizer,
                             optimizer_cls_and_kwargs=(OnlineAdamW, {}))
    sft.train()
    optimizer = unwrap_optimizer(sft.optimizer)
    assert list(optimizer.signals.loss.values) == pytest.approx(_logged(sft, "loss"), rel=1e-4)


def test_stock_sft_and_rloo_trainers_with_callbacks_list(tiny_gpt2_dir, tmp_path):
    from trl import RLOOTrainer, SFTTrainer

    model, tokenizer, texts, args = _sft_parts(tiny_gpt2_dir, tmp_path / "sft")
    optimizer = OnlineAdamW(model.parameters(), lr=1e-3)
    sft = SFTTrainer(model=model, args=args, train_dataset=texts, processing_class=tokenizer,
                     optimizers=(optimizer, None), callbacks=[AdaptiveCallback(print_console=False)])
    with pytest.warns(UserWarning, match="stock trainer"):
        sft.train()
    assert list(optimizer.signals.loss.values) == pytest.approx(_logged(sft, "loss")[:2], rel=1e-4)
    assert optimizer.total_steps == 3

    parts = _grpo_parts(tiny_gpt2_dir, tmp_path / "rloo")
    parts["args"] = _rloo_args(tmp_path / "rloo")
    optimizer = OnlineAdamW(parts["model"].parameters(), lr=1e-3)
    rloo = RLOOTrainer(**parts, optimizers=(optimizer, None), callbacks=[AdaptiveCallback(print_console=False)])
    with pytest.warns(UserWarning, match="stock trainer"):
        rloo.train()
    assert list(optimizer.signals.reward.values) == pytest.approx(_logged(rloo, "reward")[:2])


def test_a_non_finite_grad_norm_reaches_the_optimizer_before_it_steps(tiny_gpt2_dir, tmp_path):
    model, tokenizer = _model_and_tokenizer(tiny_gpt2_dir)
    bias = model.transformer.h[0].attn.c_attn.bias
    backward_calls = []

    def poison_second_step(grad):
        backward_calls.append(1)
        return grad * float("inf") if len(backward_calls) == 2 else grad

    bias.register_hook(poison_second_step)
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            snapshots.append(model.transformer.wte.weight.detach().clone())

        def on_optimizer_step(self, args, state, control, **kwargs):
            snapshots[-1] = torch.equal(snapshots[-1], model.transformer.wte.weight)

    trainer = AdaptiveTrainer(model=model, args=_sft_args(tmp_path, max_steps=3), train_dataset=sft_dataset(tokenizer),
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                              optimizer_cls_and_kwargs=(OnlineAdamW, {}),
                              callbacks=[AdaptiveCallback(print_console=False), Snapshot()])
    with pytest.warns(RuntimeWarning, match="non-finite gradient, step skipped"):
        trainer.train()
    optimizer = unwrap_optimizer(trainer.optimizer)
    assert [r["grad_norm"] for r in trainer.adaptive_callback.history][1] == float("inf")
    assert optimizer.skipped_steps == 1
    assert snapshots == [False, True, False]  # step 2 left the weights as they were; 1 and 3 moved them
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_callback_without_horizon_leaves_the_optimizer_unscheduled(tiny_gpt2_dir, tmp_path):
    model, tokenizer = _model_and_tokenizer(tiny_gpt2_dir)
    optimizer = OnlineAdamW(model.parameters(), lr=1e-3)
    trainer = Trainer(model=model, args=_sft_args(tmp_path), train_dataset=sft_dataset(tokenizer),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                      optimizers=(optimizer, None), callbacks=[AdaptiveCallback(print_console=False, horizon=False)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert optimizer.total_steps is None and optimizer.progress is None
    assert optimizer.dynamics()["summary"]["schedule"] == 1.0


def test_stock_sft_trainer_on_prompt_completion_data_measures_no_policy_change(tiny_gpt2_dir, tmp_path):
    """The policy probe (two extra forwards a step, and the RL KL prior it feeds) is for RL trainers:
    a supervised fine-tune whose rows have a ``prompt`` column must not pay for it or be steered by it."""
    from datasets import Dataset
    from trl import SFTTrainer

    model, tokenizer, _, args = _sft_parts(tiny_gpt2_dir, tmp_path)
    args.remove_unused_columns = False  # keeps the prompt column visible to the callback, as a custom collator would
    rows = Dataset.from_list([{"prompt": p, "completion": " value of the object is returned."} for p in PROMPTS] * 4)
    optimizer = OnlineAdamW(model.parameters(), lr=1e-3)
    callback = AdaptiveCallback(print_console=False)
    sft = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                     optimizers=(optimizer, None), callbacks=[callback])
    with pytest.warns(UserWarning, match="stock trainer"):
        sft.train()
    assert optimizer.signals.loss.count == 2
    assert "policy_kl" not in optimizer.signals.signals or optimizer.signals["policy_kl"].count == 0
    assert all("policy_kl" not in row for row in callback.history)
