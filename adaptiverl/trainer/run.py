"""The training entry point: ``train(config) -> TrainResult``.

``train.py``, ``adaptiverl train CONFIG`` and the benchmarks all call
:func:`train`. One run is:

1. validate the config (:mod:`adaptiverl.trainer.config`), then :func:`preflight`: the model
   path, the data file's columns, the trainer arguments, the optimizer's arguments, the LoRA
   targets and the checkpoint to resume, all before any weights load; only then write the
   resolved config to ``OUTPUT_DIR/train_config.json`` (and into every checkpoint);
2. load tokenizer and model with ``from_pretrained(MODEL)`` (quantized through
   bitsandbytes if asked), wrap it with LoRA adapters unless ``FULLTUNE``;
3. load the data (``TRAIN_FILE``, or ``dataset_name`` with its train and eval splits) through
   :mod:`adaptiverl.trainer.data`;
4. build the adaptive optimizer named by ``OPTIM``;
5. run TRL's ``GRPOTrainer`` (``MODE: rl``), ``RLOOTrainer`` (``rloo``) or ``SFTTrainer``
   (``sft``: text, chat messages or prompt/completion data), with :class:`AdaptiveCallback`
   feeding the optimizer the loss and reward of every step;
6. save the final model, a model card naming the base model, the optimizer and the reward
   components, the trainer state and the dynamics plot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.trainer_callback import ProgressCallback

from adaptiverl._files import write_text
from adaptiverl.trainer import data
from adaptiverl.trainer.config import (
    FIELDS,
    ConfigError,
    TrainConfig,
    alias_of,
    check_machine,
    load_config,
    model_settings,
    parse_config,
    trainer_arguments_class,
    trainer_settings,
)
from adaptiverl.trainer.outputs import (
    CONFIG_FILE,
    ReplaySamplerEpochs,
    SaveConfigCallback,
    check_output_dir,
    check_resume_matches,
    finished_step,
    known_noise_quiet,
    redact_pickled_secrets,
    resume_checkpoint,
)

MODEL_CARD = "README.md"
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
    #: a RESUME of a run already at its last step: nothing was trained or written
    already_finished: bool = False


def resolve_config(config: TrainConfig | dict[str, Any] | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return parse_config(config)
    return load_config(config)


def model_arguments(c: TrainConfig):
    """TRL's ``ModelConfig`` from the config: its settings plus ``model_args``."""
    from trl import ModelConfig

    try:
        return ModelConfig(**{**model_settings(c), **c.model_args})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key 'MODEL_ARGS': ModelConfig rejected the arguments: {err}") from None


def load_model_and_tokenizer(c: TrainConfig):
    """``from_pretrained(MODEL)``; quantization and LoRA adapters as TRL's ``ModelConfig`` says."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = model_arguments(c)
    tokenizer = AutoTokenizer.from_pretrained(m.model_name_or_path, revision=m.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"revision": m.model_revision}
    if m.dtype not in (None, "auto"):
        kwargs["dtype"] = getattr(torch, m.dtype)
    if m.attn_implementation is not None:
        kwargs["attn_implementation"] = m.attn_implementation
    if m.load_in_4bit or m.load_in_8bit:
        from transformers import BitsAndBytesConfig

        compute_dtype = torch.bfloat16 if c.BF16 else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=m.load_in_4bit, load_in_8bit=m.load_in_8bit,
            bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_type=m.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=m.use_bnb_nested_quant,
            bnb_4bit_quant_storage=m.bnb_4bit_quant_storage)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(m.model_name_or_path, **kwargs)
    if getattr(model, "loss_type", None) is None:
        # A causal LM whose class name transformers cannot map to a loss (GPT2LMHeadModel): name
        # the one it falls back to anyway, instead of a warning at the first SFT step.
        model.loss_type = "ForCausalLM"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if m.use_peft:
        from peft import get_peft_model, prepare_model_for_kbit_training
        from trl import get_peft_config

        if m.load_in_4bit or m.load_in_8bit:
            model = prepare_model_for_kbit_training(model)
        check_lora_targets(c, model)
        lora = get_peft_config(m)
        lora.fan_in_fan_out = model.config.model_type == "gpt2"  # GPT-2's Conv1D stores W transposed
        with checkpointing_alias_quiet():
            model = get_peft_model(model, lora)
    return model, tokenizer


@contextlib.contextmanager
def checkpointing_alias_quiet():
    """Hide transformers 5's FutureWarning for ``model.is_gradient_checkpointing``, and only it.

    TRL 1.16 reads that deprecated alias at every generation (``trl/models/utils.py``) and peft
    when it wraps a model; nothing in adaptiverl calls it. The trainer's own deprecated
    ``gradient_checkpointing`` argument is avoided at its source: :func:`training_arguments`
    sets ``activation_checkpointing``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


def check_lora_targets(c: TrainConfig, model) -> None:
    """Every ``LORA_TARGET_MODULES`` name is a module of ``model`` (a real or a meta-device one)."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in c.LORA_TARGET_MODULES if m not in present]
    if missing:
        raise ConfigError(f"config key 'LORA_TARGET_MODULES': {missing} not found in {c.MODEL} "
                          f"(module names there include: {', '.join(sorted(present)[:20])})")


def load_dataset_for(c: TrainConfig, tokenizer):
    """The checked training split, prepared for the trainer (:func:`adaptiverl.trainer.data.load_prepared`)."""
    return data.load_prepared(c, tokenizer)[0]


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

    # activation_checkpointing given (TRL's configs default the deprecated gradient_checkpointing
    # to True, and transformers warns about that alias at every copy of the arguments).
    common: dict[str, Any] = dict(use_cpu=not torch.cuda.is_available(), activation_checkpointing=False,
        data_seed=c.seed, disable_tqdm=False, **trainer_settings(c))
    common.update(report_to=c.report_to or "none", save_strategy="steps" if c.save_steps else "no",
                  save_steps=c.save_steps or 500, save_total_limit=c.save_total_limit or None)
    common.update(c.trainer_args)  # any other field, by its own name; it may override the above
    cls = trainer_arguments_class(c.MODE)
    try:
        return cls(**common)
    except (TypeError, ValueError) as err:
        message = str(err)
        for name in FIELDS:  # TRL's message names its fields: add the seed's keys
            if alias_of(name) != name:
                message = message.replace(f"`{name}`", f"`{name}` ({alias_of(name)})")
        given = [k for k in c.TRAINER_ARGS if k in message]
        key = f"TRAINER_ARGS.{given[0]}" if given else "config"
        raise ConfigError(f"{key}: {cls.__name__} rejected the arguments: {message}") from None



def build_trainer(c: TrainConfig, model, tokenizer, dataset, optimizer=None, eval_dataset=None):
    """``AdaptiveSFTTrainer`` (sft), ``AdaptiveGRPOTrainer`` (rl) or ``AdaptiveRLOOTrainer`` (rloo).

    Without ``optimizer`` the trainer builds the one ``OPTIM`` names through its own
    ``create_optimizer`` (HF's decay groups, after the model is wrapped, as FSDP and DeepSpeed
    need); the arguments are checked first by building it once here. With ``optimizer`` it is
    passed as ``optimizers=(optimizer, None)``. ``horizon`` (when set) goes to the trainer's
    ``AdaptiveCallback``.
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
    data_args = {"train_dataset": dataset, "eval_dataset": eval_dataset, "processing_class": tokenizer}
    if c.mode == "sft":
        trainer = trainers.AdaptiveSFTTrainer(model=model, args=args, **data_args, **how)
    else:
        from adaptiverl.rewards import build_rewards

        reward = build_rewards(c.rewards)
        rl_trainer = trainers.AdaptiveGRPOTrainer if c.mode == "rl" else trainers.AdaptiveRLOOTrainer
        trainer = rl_trainer(model=model, reward_funcs=[reward], args=args, **data_args, **how)
    if c.horizon is not None:
        trainer.adaptive_callback.horizon = c.horizon
    return trainer


# What the console's eval line shows (SFT: loss and token accuracy; GRPO/RLOO: reward and components).
EVAL_LINE_KEYS = ("loss", "mean_token_accuracy", "reward", "reward_std", "entropy")


class QuietProgressCallback(ProgressCallback):
    """The HF progress bar without its raw log dicts: AdaptiveCallback prints the summary line;
    evaluation results get one line of their own."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and any(k.startswith("eval_") for k in logs):
            shown = [f"{k.removeprefix('eval_')}: {v:.4g}" for k, v in logs.items() if isinstance(v, int | float)
                     and (k.removeprefix("eval_") in EVAL_LINE_KEYS or re.fullmatch(r"eval_composite/.+/mean", k))]
            from tqdm.auto import tqdm

            tqdm.write(f"Eval {state.global_step} | " + " | ".join(shown))


def check_model_path(c: TrainConfig) -> None:
    """MODEL is a local folder, or a hub id (in the local cache when the hub is off)."""
    path = Path(c.MODEL).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"config key 'MODEL' = {c.MODEL!r}: the folder has no config.json "
                              "(not a model saved with save_pretrained)")
        return
    looks_local = c.MODEL.startswith((".", "/", "~")) or c.MODEL.count("/") > 1 or "\\" in c.MODEL \
        or path.exists()
    build = (f"; to build the quickstart's tiny GPT-2 there, run: adaptiverl build-tiny {c.MODEL}"
             if "tiny" in path.name else "")
    if looks_local:
        raise ConfigError(f"config key 'MODEL' = {c.MODEL!r}: no such model folder "
                          f"({path.resolve()}){build}")
    from huggingface_hub.constants import HF_HUB_OFFLINE
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(c.MODEL)
    except HFValidationError as err:
        raise ConfigError(f"config key 'MODEL' = {c.MODEL!r}: neither a local folder nor a hub id "
                          f"({err})") from None
    if HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(c.MODEL, "config.json"), str):
            raise ConfigError(f"config key 'MODEL' = {c.MODEL!r}: not a local folder, and the hub is "
                              f"off (HF_HUB_OFFLINE) with no cached copy of it{build}")


def preflight(c: TrainConfig) -> Path | None:
    """Every check that needs more than the config itself, before any weights load.

    The machine (precision, quantization, loggers), MODEL, the TRAIN_FILE's columns, the trainer
    arguments (TRL's own checks), the optimizer's arguments (built once on a stand-in layer),
    the LoRA targets (on a meta-device copy of the model), the checkpoint to resume (returned)
    and OUTPUT_DIR (:func:`preflight_outputs`). Each failure is one :class:`ConfigError` naming the key.
    """
    import torch

    check_machine(c)
    check_model_path(c)
    data.load_splits(c)
    training_arguments(c)
    model_arguments(c)
    try:
        build_optimizer(c, torch.nn.Linear(2, 2))
    except (TypeError, ValueError) as err:
        # Whose fault: without ADAPTIVE_ARGS, does the optimizer build?
        key = "OPTIM_ARGS"
        if c.ADAPTIVE_ARGS:
            try:
                build_optimizer(dataclasses.replace(c, adaptive_args={}), torch.nn.Linear(2, 2))
                key = "ADAPTIVE_ARGS"
            except (TypeError, ValueError):
                pass
        detail = re.sub(r"^config key '\w+': ", "", str(err))
        if not detail.startswith("OPTIM"):
            detail = f"OPTIM {c.OPTIM!r} rejected the arguments: {detail}"
        raise ConfigError(f"config key {key!r}: {detail}") from None
    if not c.FULLTUNE:
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            check_lora_targets(c, AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(c.MODEL)))
    return preflight_outputs(c)


def preflight_outputs(c: TrainConfig) -> Path | None:
    """The checkpoint to resume (:func:`~adaptiverl.trainer.outputs.resume_checkpoint`), checked against
    the config, and OUTPUT_DIR (:func:`~adaptiverl.trainer.outputs.check_output_dir`); last, since it
    may create OUTPUT_DIR and, with OVERWRITE_OUTPUT_DIR, remove an earlier run's checkpoints."""
    checkpoint = resume_checkpoint(c)
    if checkpoint is not None:
        check_resume_matches(c, checkpoint)
    check_output_dir(c, resuming=checkpoint is not None)
    return checkpoint


def write_model_card(c: TrainConfig, trainer, out: Path) -> Path:
    """``OUTPUT_DIR/README.md``: the base model, the optimizer, the reward components, the run."""
    optimizer = trainer.optimizer
    while getattr(optimizer, "optimizer", None) is not None and not hasattr(optimizer, "observe"):
        optimizer = optimizer.optimizer  # under accelerate's AcceleratedOptimizer
    inner = getattr(optimizer, "optimizer", None)
    name = type(optimizer).__name__ + (f"({type(inner).__name__})" if inner is not None else "")
    lines = [f"# {out.name}", "",
             "A fine-tuned version of "
             + (f"`{c.MODEL}` (a local folder)" if Path(c.MODEL).expanduser().is_dir()
                else f"[{c.MODEL}](https://huggingface.co/{c.MODEL})")
             + f", trained with adaptiverl ({type(trainer).__name__}, MODE `{c.MODE}`).", "",
             f"- **Base model**: `{c.MODEL}`" + ("" if c.FULLTUNE else f" with LoRA adapters (r={c.LORA_R})"),
             f"- **Optimizer**: `{name}` (OPTIM `{c.OPTIM}`, learning rate {c.LRATE:g}"
             + (f", ADAPTIVE_ARGS `{json.dumps(c.ADAPTIVE_ARGS)}`" if c.ADAPTIVE_ARGS else "")
             + (f", OPTIM_ARGS `{json.dumps(c.OPTIM_ARGS)}`" if c.OPTIM_ARGS else "") + ")",
             f"- **Training data**: `{data.describe(c)}`, {trainer.state.global_step} steps"]
    if c.MODE != "sft":
        lines.append("- **Reward components**:")
        lines += [f"  - `{spec.get('type')}` (weight {spec.get('weight', 1.0)}): "
                  + ", ".join(f"{k}={v!r}" for k, v in spec.items() if k not in ("type", "weight"))
                  for spec in c.REWARDS]
    lines += ["", f"The resolved training config is `{CONFIG_FILE}`; the per-step dynamics "
              "(loss, reward, effective LR, betas) are in `adaptive_history.jsonl`.", ""]
    return write_text(out / MODEL_CARD, "\n".join(lines))


def already_finished(c: TrainConfig, step: int, start: float) -> TrainResult:
    """RESUME of a run at or past its last step: say so, train nothing, write nothing."""
    if int(os.environ.get("RANK", "0")) == 0:
        last = f"STEPS {c.STEPS}" if c.STEPS > 0 else f"the last step of EPOCHS {c.EPOCHS:g}"
        print(f"RESUME: the run in OUTPUT_DIR {c.OUTPUT_DIR} already reached step {step} "
              f"({last}); nothing to train. Raise STEPS to train further.")
    return TrainResult(output_dir=Path(c.OUTPUT_DIR), global_step=step,
                       runtime_s=time.perf_counter() - start, already_finished=True)


def train(config: TrainConfig | dict[str, Any] | str | Path) -> TrainResult:
    """Run one training job described by ``config`` (a TrainConfig, a dict, or a config file path)."""
    start = time.perf_counter()
    c = resolve_config(config)
    from transformers import set_seed

    out = Path(c.OUTPUT_DIR)
    resume_from = preflight(c)
    done = finished_step(c, resume_from) if resume_from is not None else None
    if done is not None:
        return already_finished(c, done, start)
    if int(os.environ.get("RANK", "0")) == 0:
        c.save(out / CONFIG_FILE)
    if c.CPU_THREADS:
        import torch

        torch.set_num_threads(c.CPU_THREADS)
    set_seed(c.SEED)
    model, tokenizer = load_model_and_tokenizer(c)
    dataset, eval_dataset = data.load_prepared(c, tokenizer)
    trainer = build_trainer(c, model, tokenizer, dataset, eval_dataset=eval_dataset)
    redact_pickled_secrets(trainer.args)  # training_args.bin holds "<HUB_TOKEN>", as train_config.json
    callback = trainer.adaptive_callback
    trainer.add_callback(SaveConfigCallback(c))
    trainer.add_callback(ReplaySamplerEpochs())
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback())
    with checkpointing_alias_quiet(), known_noise_quiet(trainer.model):
        output = trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    trainer.save_model(str(out))
    plot_path = None
    if trainer.is_world_process_zero():
        trainer.save_state()
        write_model_card(c, trainer, out)
        if c.PLOT:
            from adaptiverl.trainer.plot import plot_dynamics

            plot_path = plot_dynamics(out)
    return TrainResult(output_dir=out, global_step=trainer.state.global_step,
                       runtime_s=time.perf_counter() - start, history=callback.history,
                       metrics=dict(output.metrics), plot=plot_path, trainer=trainer)
