"""The training entry point: ``train(config) -> TrainResult``.

``train.py``, ``adaptiverl train CONFIG`` and the benchmarks all call
:func:`train`. One run is:

1. validate the config (:mod:`adaptiverl.trainer.config`) before anything heavy loads,
   write the resolved config to ``OUTPUT_DIR/train_config.json`` (and into every checkpoint);
2. load tokenizer and model with ``from_pretrained(MODEL)`` (quantized through
   bitsandbytes if asked), wrap it with LoRA adapters unless ``FULLTUNE``;
3. load ``TRAIN_FILE`` with ``datasets``' local loaders;
4. build the adaptive optimizer named by ``OPTIM``;
5. run TRL's ``GRPOTrainer`` (``MODE: rl``), ``RLOOTrainer`` (``rloo``) or the HF
   ``Trainer`` on a causal-LM loss (``sft``), with :class:`AdaptiveCallback`
   feeding the optimizer the loss and reward of every step;
6. save the final model, the trainer state and the dynamics plot.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from adaptiverl.trainer.config import (
    DATA_SUFFIXES,
    ConfigError,
    TrainConfig,
    load_config,
    parse_config,
)

CONFIG_FILE = "train_config.json"
ONLINE_CLASSES = {"sgd": "OnlineSGD", "rmsprop": "OnlineRMSProp", "adamw": "OnlineAdamW",
                  "enhanced_sgd": "EnhancedSGD"}


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    output_dir: Path
    global_step: int
    runtime_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    plot: Path | None = None
    trainer: Any = None


def resolve_config(config: TrainConfig | dict[str, Any] | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return parse_config(config)
    return load_config(config)


def load_model_and_tokenizer(c: TrainConfig):
    """``from_pretrained(MODEL)``; bitsandbytes quantization and LoRA adapters as the config asks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(c.MODEL)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {}
    if c.LOAD_4BIT or c.LOAD_8BIT:
        from transformers import BitsAndBytesConfig

        compute_dtype = torch.bfloat16 if c.BF16 else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=c.LOAD_4BIT, load_in_8bit=c.LOAD_8BIT,
            bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_type="nf4")
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(c.MODEL, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if not c.FULLTUNE:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if c.LOAD_4BIT or c.LOAD_8BIT:
            model = prepare_model_for_kbit_training(model)
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [m for m in c.LORA_TARGET_MODULES if m not in present]
        if missing:
            raise ConfigError(f"config key 'LORA_TARGET_MODULES': {missing} not found in {c.MODEL} "
                              f"(module names there include: {', '.join(sorted(present)[:20])})")
        lora = LoraConfig(r=c.LORA_R, lora_alpha=c.LORA_ALPHA, lora_dropout=c.LORA_DROPOUT,
                          target_modules=list(c.LORA_TARGET_MODULES), task_type="CAUSAL_LM",
                          fan_in_fan_out=model.config.model_type == "gpt2")
        model = get_peft_model(model, lora)
    return model, tokenizer


def load_dataset_for(c: TrainConfig, tokenizer):
    """TRAIN_FILE through ``datasets``' json/csv/parquet loaders, checked for the mode's columns."""
    from datasets import load_dataset

    builder = DATA_SUFFIXES[Path(c.TRAIN_FILE).suffix.lower()]
    dataset = load_dataset(builder, data_files=c.TRAIN_FILE, split="train")
    column = "text" if c.MODE == "sft" else "prompt"
    if column not in dataset.column_names:
        raise ConfigError(f"TRAIN_FILE {c.TRAIN_FILE}: MODE {c.MODE!r} needs a {column!r} column; "
                          f"the file has {dataset.column_names}")
    if len(dataset) == 0:
        raise ConfigError(f"TRAIN_FILE {c.TRAIN_FILE}: no rows")
    if c.MODE == "sft":
        def tokenize(batch):
            return tokenizer(batch["text"], truncation=True, max_length=c.MAXSEQ)

        return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)
    max_prompt = c.MAXSEQ - c.MAX_COMPLETION_LENGTH

    def truncate(row):
        ids = tokenizer(row["prompt"])["input_ids"]
        if len(ids) > max_prompt:
            row["prompt"] = tokenizer.decode(ids[-max_prompt:])
        return row

    return dataset.map(truncate)


def optimizer_spec(c: TrainConfig) -> tuple[tuple[Any, dict[str, Any]], Any]:
    """``((optimizer class, kwargs), wrapper or None)`` for ``OPTIM``: what the trainer builds.

    The Online optimizers and EnhancedSGD are built directly; a ``torch.optim`` class is built
    by the Trainer and then wrapped by ``AdaptiveOptimizer(**ADAPTIVE_ARGS)``. ``weight_decay``
    is not among the kwargs: HF's decay groups set it per group.
    """
    import functools

    import torch

    import adaptiverl.optim as optim

    kwargs = {"lr": c.LRATE, **c.OPTIM_ARGS}
    kwargs.pop("weight_decay", None)  # per group: training_arguments' weight_decay
    if c.OPTIM in ONLINE_CLASSES:
        return (getattr(optim, ONLINE_CLASSES[c.OPTIM]), kwargs), None
    base = getattr(torch.optim, c.OPTIM.removeprefix("torch."))
    return (base, kwargs), functools.partial(optim.AdaptiveOptimizer, **c.ADAPTIVE_ARGS)


def weight_decay_of(c: TrainConfig) -> float:
    """``OPTIM_ARGS["weight_decay"]`` when given, else ``WEIGHT_DECAY``."""
    return float(c.OPTIM_ARGS.get("weight_decay", c.WEIGHT_DECAY))


def build_optimizer(c: TrainConfig, model):
    """The adaptive optimizer ``OPTIM`` names, over HF's decay groups of the model's trainable parameters.

    For ``optimizers=(optimizer, None)`` (single process or DDP); :func:`build_trainer` without
    an optimizer lets the trainer build the same one, which FSDP and DeepSpeed need.
    """
    from adaptiverl.trainer.trainers import decay_parameter_groups

    (cls, kwargs), wrapper = optimizer_spec(c)
    try:
        optimizer = cls(decay_parameter_groups(model, weight_decay_of(c)), **kwargs)
        return wrapper(optimizer) if wrapper is not None else optimizer
    except TypeError as err:
        key = "ADAPTIVE_ARGS" if wrapper is not None and c.ADAPTIVE_ARGS else "OPTIM_ARGS"
        raise ConfigError(f"config key {key!r}: OPTIM {c.OPTIM!r} rejected the arguments: {err}") from None


def training_arguments(c: TrainConfig):
    """GRPOConfig / RLOOConfig / TrainingArguments from the config.

    Without CUDA the arguments say ``use_cpu``, so that a multi-process launch
    (``accelerate launch --multi_gpu --num_processes N`` or ``torchrun``) on CPU
    runs distributed data parallel over gloo.
    """
    import torch

    common: dict[str, Any] = dict(use_cpu=not torch.cuda.is_available(),
        output_dir=c.OUTPUT_DIR, per_device_train_batch_size=c.BATCH_SIZE,
        gradient_accumulation_steps=c.GRAD_ACCUM, num_train_epochs=c.EPOCHS, max_steps=c.STEPS,
        learning_rate=c.LRATE, lr_scheduler_type=c.LR_SCHEDULER, warmup_steps=c.WARMUP_STEPS,
        max_grad_norm=c.MAX_GRAD_NORM, bf16=c.BF16, fp16=c.FP16, seed=c.SEED, data_seed=c.SEED,
        logging_steps=c.LOGGING_STEPS, report_to=c.REPORT_TO or "none",
        save_strategy="steps" if c.SAVE_STEPS else "no", save_steps=c.SAVE_STEPS or 500,
        save_total_limit=c.SAVE_TOTAL_LIMIT or None, disable_tqdm=False,
    )
    if c.MODE == "sft":
        from transformers import TrainingArguments

        return TrainingArguments(**common)
    rl = dict(num_generations=c.NUM_GENERATIONS, max_completion_length=c.MAX_COMPLETION_LENGTH,
              temperature=c.TEMPERATURE, beta=c.BETA, log_completions=c.LOG_COMPLETIONS)
    if c.MODE == "rl":
        from trl import GRPOConfig

        return GRPOConfig(**common, **rl)
    from trl import RLOOConfig

    return RLOOConfig(**common, **rl)


def build_trainer(c: TrainConfig, model, tokenizer, dataset, optimizer=None):
    """``AdaptiveTrainer`` (sft), ``AdaptiveGRPOTrainer`` (rl) or ``AdaptiveRLOOTrainer`` (rloo).

    Without ``optimizer`` the trainer builds the one ``OPTIM`` names through its own
    ``create_optimizer`` (HF's decay groups, after the model is wrapped, as FSDP and DeepSpeed
    need); the arguments are checked first by building it once here. With ``optimizer`` it is
    passed as ``optimizers=(optimizer, None)``.
    """
    from adaptiverl.trainer import trainers

    args = training_arguments(c)
    args.weight_decay = weight_decay_of(c)
    if optimizer is None:
        build_optimizer(c, model)  # a ConfigError naming the key, before training starts
        (cls, kwargs), wrapper = optimizer_spec(c)
        how = {"optimizer_cls_and_kwargs": (cls, kwargs), "optimizer_wrapper": wrapper}
    else:
        how = {"optimizers": (optimizer, None)}
    if c.MODE == "sft":
        from transformers import DataCollatorForLanguageModeling

        return trainers.AdaptiveTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), **how)
    from adaptiverl.rewards import build_rewards

    reward = build_rewards(c.REWARDS)
    rl_trainer = trainers.AdaptiveGRPOTrainer if c.MODE == "rl" else trainers.AdaptiveRLOOTrainer
    return rl_trainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                      processing_class=tokenizer, **how)


class QuietProgressCallback(ProgressCallback):
    """The HF progress bar without its raw log dicts: AdaptiveCallback prints the summary line."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return


class SaveConfigCallback(TrainerCallback):
    """Copies the resolved config into every checkpoint folder."""

    def __init__(self, config: TrainConfig) -> None:
        self.config_dict = config.to_dict()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / CONFIG_FILE).write_text(json.dumps(self.config_dict, indent=2) + "\n")


def train(config: TrainConfig | dict[str, Any] | str | Path) -> TrainResult:
    """Run one training job described by ``config`` (a TrainConfig, a dict, or a JSON file path)."""
    start = time.perf_counter()
    c = resolve_config(config)
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(c.OUTPUT_DIR)
    resume_from = None
    if c.RESUME:
        resume_from = get_last_checkpoint(str(out)) if out.is_dir() else None
        if resume_from is None:
            raise ConfigError(f"config key 'RESUME' = true: no checkpoint-* folder in OUTPUT_DIR {out.resolve()}")
    if int(os.environ.get("RANK", "0")) == 0:
        c.save(out / CONFIG_FILE)
    if c.CPU_THREADS:
        import torch

        torch.set_num_threads(c.CPU_THREADS)
    set_seed(c.SEED)
    model, tokenizer = load_model_and_tokenizer(c)
    dataset = load_dataset_for(c, tokenizer)
    trainer = build_trainer(c, model, tokenizer, dataset)
    callback = trainer.adaptive_callback
    trainer.add_callback(SaveConfigCallback(c))
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback())
    output = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model(str(out))
    plot_path = None
    if trainer.is_world_process_zero():
        trainer.save_state()
        if c.PLOT:
            from adaptiverl.trainer.plot import plot_dynamics

            plot_path = plot_dynamics(out)
    return TrainResult(output_dir=out, global_step=trainer.state.global_step,
                       runtime_s=time.perf_counter() - start, history=callback.history,
                       metrics=dict(output.metrics), plot=plot_path, trainer=trainer)
