"""The training config: the seed's upper-case keys, TRL's argument names, files and command lines.

A config is a JSON (``//`` comments allowed) or YAML mapping. Every setting has two spellings,
the seed's and TRL's, and both load::

    {"MODEL": "gpt2", "TRAIN_FILE": "data.json", "BATCH_SIZE": "2", "LRATE": "5e-5", ...}
    {"model_name_or_path": "gpt2", "train_file": "data.json", "per_device_train_batch_size": 2,
     "learning_rate": 5e-5, "top_p": 0.9, "loss_type": "dr_grpo", ...}

Any other field of the mode's trainer arguments (``GRPOConfig`` for ``rl``, ``RLOOConfig`` for
``rloo``, ``TrainingArguments`` for ``sft``) or of TRL's ``ModelConfig`` may be set by its own
name; it lands in ``TRAINER_ARGS`` / ``MODEL_ARGS``. On the command line the same names are
flags of a :class:`trl.TrlParser` over those dataclasses plus :data:`AdaptiveArguments`, and
override the file::

    python train.py configs/quickstart.json --learning_rate 1e-3 --max_steps 50

Values may be strings (``"2"``, ``"false"``, ``"5e-5"``) or native values. The resolved
:class:`TrainConfig` validates itself in ``__post_init__``, so a config built in Python is held to
exactly the same rules as one read from a file: unknown keys (with the closest valid key), types,
non-finite numbers, allowed values, the training file. Every error names the key and the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUE_STRINGS = {"true", "1", "yes", "y", "on"}
FALSE_STRINGS = {"false", "0", "no", "n", "off"}
MODES = ("rl", "rloo", "sft")
ONLINE_OPTIMIZERS = ("sgd", "rmsprop", "adamw")
DATA_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
YAML_SUFFIXES = (".yaml", ".yml")
GPT2_LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]
RULE_KEYS = ("lr_rule", "momentum_rule", "betas_rule", "alpha_rule", "wd_rule", "reward_rule")


class ConfigError(ValueError):
    """A config key is unknown, mistyped or impossible on this machine."""


@dataclass
class TrainConfig:
    """Every key a training config may hold. Field names are the seed's keys; see :data:`TRL_NAMES`.

    Values are coerced (``"2"`` -> 2, ``"false"`` -> False) and validated on construction, so
    ``TrainConfig(MODEL="gpt2", TRAIN_FILE="data.jsonl", OPTIM="AdamW")`` resolves exactly as the
    same keys read from a file, and ``TrainConfig(..., MODE="bogus")`` raises :class:`ConfigError`.
    """

    MODEL: str = field(metadata={"help": "Hub id or local folder loaded with `from_pretrained` (e.g. `gpt2`, `./models/tiny-gpt2`)."})
    TRAIN_FILE: str = field(metadata={"help": "JSON, JSONL, CSV or Parquet file: a `prompt` column for rl/rloo (plus columns rewards read, e.g. `reference`), a `text` column for sft."})
    OUTPUT_DIR: str = field(default="checkpoints", metadata={"help": "Checkpoints, logs, the resolved config, the model card and the plot go here."})
    MODE: str = field(default="rl", metadata={"help": "`rl` (TRL GRPOTrainer), `rloo` (TRL RLOOTrainer) or `sft` (HF Trainer, causal-LM loss on `text`)."})
    BATCH_SIZE: int = field(default=2, metadata={"help": "Per-device batch size. rl/rloo: completions per device per step; BATCH_SIZE x processes x GRAD_ACCUM must be a multiple of NUM_GENERATIONS."})
    GRAD_ACCUM: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    EPOCHS: float = field(default=1.0, metadata={"help": "Training epochs (ignored when STEPS > 0)."})
    STEPS: int = field(default=-1, metadata={"help": "Optimizer steps; -1 trains for EPOCHS."})
    LRATE: float = field(default=5e-5, metadata={"help": "Base learning rate (the scheduler's and the controller's multipliers act on it)."})
    LR_SCHEDULER: str = field(default="constant", metadata={"help": "HF scheduler name: `constant`, `linear`, `cosine`, `constant_with_warmup`, ..."})
    WARMUP_STEPS: int = field(default=0, metadata={"help": "Scheduler warm-up steps."})
    OPTIM: str = field(default="adamw", metadata={"help": "`sgd`, `rmsprop`, `adamw` (OnlineSGD/OnlineRMSProp/OnlineAdamW), `enhanced_sgd`, or any `torch.optim` class name (e.g. `Adagrad`; `torch.AdamW` for torch's own AdamW) wrapped by AdaptiveOptimizer, which adapts it only through the rules ADAPTIVE_ARGS names (none: the plain torch optimizer)."})
    OPTIM_ARGS: dict = field(default_factory=dict, metadata={"help": "Extra keyword arguments for the optimizer (e.g. `weight_decay`, `betas`, controller settings of the Online optimizers)."})
    ADAPTIVE_ARGS: dict = field(default_factory=dict, metadata={"help": "Keyword arguments of AdaptiveOptimizer when OPTIM names a torch optimizer (e.g. `{\"lr_rule\": \"trend+variance\"}`); no `*_rule` key: no adaptation."})
    WEIGHT_DECAY: float = field(default=0.0, metadata={"help": "Weight decay passed to the optimizer."})
    MAX_GRAD_NORM: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 disables clipping."})
    MAXSEQ: int = field(default=512, metadata={"help": "sft: tokens per example. rl/rloo: prompt tokens + MAX_COMPLETION_LENGTH (prompts are truncated to fit)."})
    NUM_GENERATIONS: int = field(default=2, metadata={"help": "rl/rloo: completions sampled per prompt (2 by default, so that the seed's BATCH_SIZE 2 forms one group)."})
    MAX_COMPLETION_LENGTH: int = field(default=32, metadata={"help": "rl/rloo: new tokens per completion."})
    LOG_COMPLETIONS: bool = field(default=False, metadata={"help": "rl/rloo: print a sample of prompts, completions and rewards at logging steps (TRL's `log_completions`)."})
    TEMPERATURE: float = field(default=1.0, metadata={"help": "rl/rloo: sampling temperature."})
    BETA: float = field(default=0.0, metadata={"help": "rl/rloo: KL coefficient against the reference model (0 skips loading one)."})
    REWARDS: list = field(default_factory=list, metadata={"help": "rl/rloo: reward specs of `adaptiverl.rewards.build_rewards` (each a dict with `type`, `weight`, ...)."})
    BF16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (CPU or a GPU that supports it)."})
    FP16: bool = field(default=False, metadata={"help": "float16 mixed precision (needs a CUDA GPU)."})
    LOAD_4BIT: bool = field(default=False, metadata={"help": "Load the model 4-bit quantized through bitsandbytes (CUDA only; needs FULLTUNE false)."})
    LOAD_8BIT: bool = field(default=False, metadata={"help": "Load the model 8-bit quantized through bitsandbytes (CUDA only; needs FULLTUNE false)."})
    FULLTUNE: bool = field(default=True, metadata={"help": "true: train every weight. false: train LoRA adapters through peft (TRL's `use_peft`, inverted)."})
    LORA_R: int = field(default=8, metadata={"help": "LoRA rank r of the adapter matrices."})
    LORA_ALPHA: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    LORA_DROPOUT: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch input."})
    LORA_TARGET_MODULES: list = field(default_factory=lambda: list(GPT2_LORA_TARGETS), metadata={"help": "Module names LoRA adapts (GPT-2: attention `c_attn`, `c_proj` and MLP `c_fc`, `c_proj`)."})
    SAVE_STEPS: int = field(default=0, metadata={"help": "Checkpoint every N steps (0: only the final model)."})
    SAVE_TOTAL_LIMIT: int = field(default=0, metadata={"help": "Keep at most this many checkpoints (0: keep all)."})
    RESUME: bool = field(default=False, metadata={"help": "Continue from the newest complete checkpoint in OUTPUT_DIR (an incomplete one, e.g. from a crash during a save, is skipped with a warning)."})
    OVERWRITE_OUTPUT_DIR: bool = field(default=False, metadata={"help": "Start a fresh run in an OUTPUT_DIR that holds an earlier run (its checkpoint-* folders are removed); without it such a run is refused."})
    CPU_THREADS: int = field(default=0, metadata={"help": "torch intra-op threads (0: torch's default). 1 is fastest for tiny models on a small, shared CPU."})
    SEED: int = field(default=42, metadata={"help": "Seed of every RNG (the same on all ranks)."})
    LOGGING_STEPS: int = field(default=10, metadata={"help": "Log (console line, TensorBoard/W&B) every N steps."})
    REPORT_TO: list = field(default_factory=list, metadata={"help": "Loggers: `tensorboard`, `wandb`, ... (list or comma-separated string; empty: none)."})
    PLOT: bool = field(default=True, metadata={"help": "Write `dynamics.png` (loss, reward, LR, momentum/betas) to OUTPUT_DIR at the end."})
    TRAINER_ARGS: dict = field(default_factory=dict, metadata={"help": "Any other field of the mode's trainer arguments (GRPOConfig, RLOOConfig, TrainingArguments) by its own name, e.g. `{\"top_p\": 0.9, \"loss_type\": \"dr_grpo\"}`; such keys may also be written at the top level."})
    MODEL_ARGS: dict = field(default_factory=dict, metadata={"help": "Any other field of TRL's ModelConfig (e.g. `dtype`, `model_revision`, `attn_implementation`, `use_rslora`); such keys may also be written at the top level."})

    def __post_init__(self) -> None:
        for name in FIELDS:
            setattr(self, name, _coerce(name, getattr(self, name), _field_type(name)))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with secrets replaced, as transformers does: any ``*_token`` trainer or
        model argument (``hub_token``) becomes ``"<HUB_TOKEN>"``. What :meth:`save` writes."""
        public = self.to_dict()
        for group in ("TRAINER_ARGS", "MODEL_ARGS"):
            public[group] = {k: f"<{k.upper()}>" if k.endswith("_token") and v is not None else v
                             for k, v in public[group].items()}
        return public

    def save(self, path: str | Path) -> Path:
        """Write the resolved config (native JSON values, secrets redacted) to ``path``."""
        from adaptiverl._files import write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(self.to_public_dict(), indent=2) + "\n")
        return path


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
REQUIRED = tuple(name for name, f in FIELDS.items()
                 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)

# The seed key of every setting TRL (trainer arguments or ModelConfig) or our own arguments also
# name: the file, the command line and the resolved config agree on one value per setting.
TRAINER_TWINS = {
    "OUTPUT_DIR": "output_dir", "BATCH_SIZE": "per_device_train_batch_size",
    "GRAD_ACCUM": "gradient_accumulation_steps", "EPOCHS": "num_train_epochs", "STEPS": "max_steps",
    "LRATE": "learning_rate", "LR_SCHEDULER": "lr_scheduler_type", "WARMUP_STEPS": "warmup_steps",
    "WEIGHT_DECAY": "weight_decay", "MAX_GRAD_NORM": "max_grad_norm",
    "NUM_GENERATIONS": "num_generations", "MAX_COMPLETION_LENGTH": "max_completion_length",
    "LOG_COMPLETIONS": "log_completions", "TEMPERATURE": "temperature", "BETA": "beta",
    "BF16": "bf16", "FP16": "fp16", "SAVE_STEPS": "save_steps", "SAVE_TOTAL_LIMIT": "save_total_limit",
    "SEED": "seed", "LOGGING_STEPS": "logging_steps", "REPORT_TO": "report_to",
}
MODEL_TWINS = {
    "MODEL": "model_name_or_path", "LOAD_4BIT": "load_in_4bit", "LOAD_8BIT": "load_in_8bit",
    "FULLTUNE": "use_peft", "LORA_R": "lora_r", "LORA_ALPHA": "lora_alpha",
    "LORA_DROPOUT": "lora_dropout", "LORA_TARGET_MODULES": "lora_target_modules",
}
OWN_NAMES = {
    "TRAIN_FILE": "train_file", "MODE": "mode", "OPTIM": "optimizer", "OPTIM_ARGS": "optimizer_args",
    "ADAPTIVE_ARGS": "adaptive_args", "REWARDS": "rewards", "MAXSEQ": "max_seq_length",
    "RESUME": "resume", "OVERWRITE_OUTPUT_DIR": "overwrite_output_dir", "CPU_THREADS": "cpu_threads", "PLOT": "plot",
    "TRAINER_ARGS": "trainer_args", "MODEL_ARGS": "model_args",
}
TRL_NAMES = {**TRAINER_TWINS, **MODEL_TWINS, **OWN_NAMES}
SEED_KEYS = {name: key for key, name in TRL_NAMES.items()}
INVERTED = {"FULLTUNE"}  # FULLTUNE true == use_peft false
# Trainer fields that would be silently ignored or that train() sets itself: refused by name.
RESERVED_TRAINER_FIELDS = {
    "optim": "adaptiverl builds the optimizer: pick it with OPTIM (`optimizer`)",
    "optim_args": "give optimizer arguments in OPTIM_ARGS (`optimizer_args`)",
}
# Deprecated trainer names folded into their successors (transformers warns on the old ones).
DEPRECATED_TRAINER_FIELDS = {"gradient_checkpointing": "activation_checkpointing",
                             "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def trainer_arguments_class(mode: str) -> type:
    """``GRPOConfig`` (rl), ``RLOOConfig`` (rloo) or ``TrainingArguments`` (sft)."""
    if mode == "rl":
        from trl import GRPOConfig

        return GRPOConfig
    if mode == "rloo":
        from trl import RLOOConfig

        return RLOOConfig
    from transformers import TrainingArguments

    return TrainingArguments


@functools.cache
def _trainer_fields(mode: str) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(trainer_arguments_class(mode)) if f.init)


@functools.cache
def _model_fields() -> frozenset[str]:
    from trl import ModelConfig

    return frozenset(f.name for f in dataclasses.fields(ModelConfig) if f.init)


def config_parser(mode: str = "rl"):
    """A :class:`trl.TrlParser` over our arguments, ``mode``'s trainer arguments and ModelConfig.

    Its errors are :class:`ConfigError` (one line naming the flag) instead of ``sys.exit``.
    """
    from trl import ModelConfig, TrlParser

    class Parser(TrlParser):
        def error(self, message: str):
            raise ConfigError(f"command line: {message}")

    parser = Parser([AdaptiveArguments, trainer_arguments_class(mode), ModelConfig],
                    prog="train.py", allow_abbrev=False, usage="train.py CONFIG.{json,yaml} [--NAME VALUE ...]",
                    description="Every flag overrides the config file's value of that name; "
                                "the seed's keys work as flags too (--LRATE 1e-3).")
    for action in parser._actions:
        action.required = False
    return parser


def _make_adaptive_arguments() -> type:
    """Our own arguments under their TRL-style names, for the parser (help text from TrainConfig)."""
    specs = []
    for key, name in OWN_NAMES.items():
        f = FIELDS[key]
        kind = _field_type(key)
        default = None if f.default is dataclasses.MISSING else f.default
        specs.append((name, str if kind in (list, dict) else kind | None,
                      field(default=default, metadata={"help": f"({key}) {f.metadata['help']}"})))
    return dataclasses.make_dataclass("AdaptiveArguments", specs)


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Turn a config value (native or string) into ``kind``, or raise naming the key."""
    bad = ConfigError(f"config key {key!r}: expected {kind.__name__}, got {value!r} ({type(value).__name__})")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_STRINGS | FALSE_STRINGS:
            return value.strip().lower() in TRUE_STRINGS
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(number):
            raise ConfigError(f"config key {key!r} = {value!r}: must be a finite number")
        return number
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    if kind is list:
        if isinstance(value, list | tuple):
            return list(value)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError:
                    raise bad from None
                if isinstance(parsed, list):
                    return parsed
                raise bad
            return [part.strip() for part in text.split(",") if part.strip()]
        raise bad
    if kind is dict:
        if isinstance(value, dict):
            return dict(value)
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                raise bad from None
            if isinstance(parsed, dict):
                return parsed
        raise bad
    raise TypeError(f"unsupported config field type {kind!r} for {key}")


def _field_type(name: str) -> type:
    annotation = FIELDS[name].type
    return {"str": str, "int": int, "float": float, "bool": bool, "list": list,
            "dict": dict}[annotation if isinstance(annotation, str) else annotation.__name__]


AdaptiveArguments = _make_adaptive_arguments()


def _closest_hint(key: str, mode: str) -> str:
    names = [*FIELDS, *SEED_KEYS]
    if key.islower():
        names = [*SEED_KEYS, *_trainer_fields(mode), *_model_fields()]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6) or \
        difflib.get_close_matches(key.upper(), list(FIELDS), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def normalize(raw: dict[str, Any], mode: str | None = None) -> dict[str, Any]:
    """Fold a mapping written with either spelling into :class:`TrainConfig` keyword arguments.

    Seed keys stay; their TRL names become the seed key (``learning_rate`` -> ``LRATE``,
    ``use_peft`` -> ``not FULLTUNE``); other fields of the mode's trainer arguments go to
    ``TRAINER_ARGS`` and ModelConfig fields to ``MODEL_ARGS``. A setting given twice, or a key
    that is none of these, is an error naming it.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of KEY: value pairs, got {type(raw).__name__}")
    mode = str(mode or raw.get("MODE", raw.get("mode", "rl"))).lower()
    if mode not in MODES:
        raise ConfigError(f"config key 'MODE' = {mode!r}: must be one of {', '.join(MODES)}")
    values: dict[str, Any] = {}
    trainer_args: dict[str, Any] = {}
    model_args: dict[str, Any] = {}
    spelled: dict[str, str] = {}

    def put(target: dict[str, Any], name: str, value: Any, written: str) -> None:
        if name in spelled:
            raise ConfigError(f"config key {written!r}: the same setting is also given as "
                              f"{spelled[name]!r}; keep one of them")
        spelled[name] = written
        target[name] = value

    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r}: keys must be strings")
        if key in ("TRAINER_ARGS", "trainer_args", "MODEL_ARGS", "model_args"):
            inner = _coerce(key, value, dict)
            target = trainer_args if key.upper() == "TRAINER_ARGS" else model_args
            for name, item in inner.items():
                if name in (*FIELDS, *SEED_KEYS):
                    raise ConfigError(f"config key {key!r}: {name!r} is a config key of its own; "
                                      "write it at the top level")
                put(target, name, item, f"{key}.{name}")
            continue
        if key in FIELDS:
            put(values, key, value, key)
        elif key in SEED_KEYS:
            seed_key = SEED_KEYS[key]
            if seed_key in INVERTED:
                value = not _coerce(key, value, bool)
            put(values, seed_key, value, key)
        elif key in _trainer_fields(mode):
            put(trainer_args, key, value, key)
        elif key in _model_fields():
            put(model_args, key, value, key)
        else:
            other = [m for m in MODES if m != mode and key in _trainer_fields(m)]
            if other:
                raise ConfigError(f"config key {key!r}: a field of {trainer_arguments_class(other[0]).__name__} "
                                  f"(MODE {other[0]!r}), not of {trainer_arguments_class(mode).__name__}, "
                                  f"which MODE {mode!r} trains with")
            raise ConfigError(f"unknown config key {key!r}.{_closest_hint(key, mode)} Valid keys: "
                              f"{', '.join(FIELDS)}, their TRL names (docs/training.md), or any field of "
                              f"{trainer_arguments_class(mode).__name__} or ModelConfig")
    for name, inner in (("TRAINER_ARGS", trainer_args), ("MODEL_ARGS", model_args)):
        if inner:
            values[name] = inner
    return values


def parse_config(raw: dict[str, Any], base_dir: str | Path | None = None,
                 check_hardware: bool = True) -> TrainConfig:
    """Validate a config mapping (either spelling) and return the resolved :class:`TrainConfig`.

    ``base_dir`` is where relative ``TRAIN_FILE`` paths are also looked for
    (the config file's folder) when they do not exist relative to the working
    directory.
    """
    values = normalize(raw)
    missing = [key for key in REQUIRED if key not in values]
    if missing:
        raise ConfigError("config is missing required key(s): " +
                          ", ".join(f"{key} ({TRL_NAMES[key]})" for key in missing))
    if base_dir is not None and isinstance(values.get("TRAIN_FILE"), str):
        values["TRAIN_FILE"] = str(_find_train_file(values["TRAIN_FILE"], base_dir))
    config = TrainConfig(**values)
    if check_hardware:
        check_machine(config)
    return config


_STRING_OR_COMMENT = re.compile(r'("(?:\\.|[^"\\])*")|//[^\n]*')


def strip_comments(text: str) -> str:
    """Drop ``// ...`` line comments outside strings (the seed's example config has one)."""
    return _STRING_OR_COMMENT.sub(lambda m: m.group(1) or "", text)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a JSON (``//`` comments allowed) or YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() in YAML_SUFFIXES:
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
    else:
        try:
            raw = json.loads(strip_comments(text))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of KEY: value pairs, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path, check_hardware: bool = True,
                overrides: list[str] | None = None) -> TrainConfig:
    """Read and validate a config file, then apply command-line ``overrides`` (``--name value``)."""
    raw = read_config_file(path)
    if overrides:
        raw = merge_overrides(raw, overrides)
    return parse_config(raw, base_dir=Path(path).parent, check_hardware=check_hardware)


def parse_command_line(argv: list[str], check_hardware: bool = True) -> TrainConfig:
    """``CONFIG [--NAME VALUE ...]`` (or TRL's ``--config CONFIG ...``) -> :class:`TrainConfig`."""
    args = list(argv)
    if "--config" in args:
        at = args.index("--config")
        if at + 1 >= len(args):
            raise ConfigError("command line: --config needs a file")
        path = args.pop(at + 1)
        args.pop(at)
    elif args and not args[0].startswith("-"):
        path = args.pop(0)
    else:
        raise ConfigError("usage: train.py CONFIG.{json,yaml} [--NAME VALUE ...] "
                          "(e.g. --learning_rate 1e-3 --max_steps 50)")
    return load_config(path, check_hardware=check_hardware, overrides=args)


def merge_overrides(raw: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """The file's mapping with the command line's ``--NAME VALUE`` flags on top.

    Seed keys (``--LRATE 1e-3``) take one value each; every other flag is parsed by the
    mode's :func:`config_parser` (TrlParser types: ``--report_to tensorboard wandb``,
    ``--use_peft``). A flag replaces the file's value of the same setting in either spelling.
    """
    seed_flags: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.removeprefix("--").partition("=")
        if token.startswith("--") and name in FIELDS:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"command line: --{name} needs a value")
                i += 1
                inline = argv[i]
            seed_flags[name] = inline
        else:
            rest.append(token)
        i += 1
    mode = seed_flags.get("MODE") or _flag_value(rest, "mode") or raw.get("MODE", raw.get("mode", "rl"))
    parser = config_parser(str(mode).lower())
    namespace = argparse.Namespace()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    _, unknown = parser.parse_known_args(rest, namespace=namespace)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        hint = _closest_hint(flag.lstrip("-").partition("=")[0], str(mode).lower())
        raise ConfigError(f"command line: unknown argument {flag!r}.{hint} "
                          "Run `train.py --help` for every flag")
    flags: dict[str, Any] = {**seed_flags, **vars(namespace)}
    merged = normalize(raw, str(mode).lower())
    for key, value in normalize(flags, str(mode).lower()).items():
        if key in ("TRAINER_ARGS", "MODEL_ARGS"):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, token in enumerate(argv):
        if token == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(f"--{name}="):
            return token.partition("=")[2]
    return None


def _non_finite(value: Any, where: str) -> str | None:
    """The path of the first non-finite number inside ``value`` (floats or numeric strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, str) and value.strip().lower() in {"nan", "inf", "+inf", "-inf", "infinity",
                                                            "+infinity", "-infinity"}:
        return where
    if isinstance(value, dict):
        return next((p for k, v in value.items() if (p := _non_finite(v, f"{where}.{k}"))), None)
    if isinstance(value, list | tuple):
        return next((p for i, v in enumerate(value) if (p := _non_finite(v, f"{where}[{i}]"))), None)
    return None


def _validate(c: TrainConfig) -> None:
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"config key {key!r} = {getattr(c, key)!r}: {why}")

    c.MODE = c.MODE.lower()
    if c.MODE not in MODES:
        fail("MODE", f"must be one of {', '.join(MODES)}")
    for key in ("BATCH_SIZE", "GRAD_ACCUM", "MAXSEQ", "NUM_GENERATIONS", "MAX_COMPLETION_LENGTH",
                "LOGGING_STEPS", "LORA_R", "LORA_ALPHA"):
        if getattr(c, key) < 1:
            fail(key, "must be >= 1")
    for key in ("SAVE_STEPS", "SAVE_TOTAL_LIMIT", "WARMUP_STEPS", "CPU_THREADS"):
        if getattr(c, key) < 0:
            fail(key, "must be >= 0")
    for key in ("LRATE", "EPOCHS", "TEMPERATURE"):
        if not getattr(c, key) > 0:
            fail(key, "must be > 0")
    for key in ("MAX_GRAD_NORM", "WEIGHT_DECAY", "BETA"):
        if getattr(c, key) < 0:
            fail(key, "must be >= 0")
    for key in ("OPTIM_ARGS", "ADAPTIVE_ARGS", "REWARDS", "TRAINER_ARGS", "MODEL_ARGS"):
        where = _non_finite(getattr(c, key), key)
        if where is not None:
            raise ConfigError(f"config key {where!r}: must be a finite number, got a NaN or infinity")
    if c.STEPS == 0 or c.STEPS < -1:
        fail("STEPS", "must be a positive number of steps, or -1 to train for EPOCHS")
    if not 0.0 <= c.LORA_DROPOUT < 1.0:
        fail("LORA_DROPOUT", "must be in [0, 1)")
    if not c.LORA_TARGET_MODULES or not all(isinstance(m, str) for m in c.LORA_TARGET_MODULES):
        fail("LORA_TARGET_MODULES", "must be a non-empty list of module names")
    if not all(isinstance(r, str) for r in c.REPORT_TO):
        fail("REPORT_TO", "must be a list of logger names")
    c.REPORT_TO = [r for r in c.REPORT_TO if r.lower() != "none"]
    if c.FP16 and c.BF16:
        fail("FP16", "FP16 and BF16 are mutually exclusive: set one of them to false")
    if c.LOAD_4BIT and c.LOAD_8BIT:
        fail("LOAD_4BIT", "LOAD_4BIT and LOAD_8BIT are mutually exclusive: set one of them to false")
    if (c.LOAD_4BIT or c.LOAD_8BIT) and c.FULLTUNE:
        fail("FULLTUNE", "quantized weights cannot be fully fine-tuned: set FULLTUNE to false (LoRA) "
                         "or LOAD_4BIT/LOAD_8BIT to false")
    if Path(c.OUTPUT_DIR).expanduser().is_file():
        fail("OUTPUT_DIR", "is a file; name a folder (it is created if missing)")
    _validate_scheduler(c, fail)
    _validate_optim(c, fail)
    if c.MODE in ("rl", "rloo"):
        if not c.REWARDS:
            fail("REWARDS", f"MODE {c.MODE!r} needs at least one reward spec, e.g. "
                            '[{"type": "length", "target": 20, "weight": 1.0}]')
        if not all(isinstance(spec, dict) for spec in c.REWARDS):
            fail("REWARDS", "must be a list of JSON objects (reward specs)")
        _validate_rewards(c.REWARDS)
        if c.NUM_GENERATIONS < 2:
            fail("NUM_GENERATIONS", "GRPO/RLOO compare completions of one prompt: use at least 2")
        if c.MAX_COMPLETION_LENGTH >= c.MAXSEQ:
            fail("MAX_COMPLETION_LENGTH", f"must be smaller than MAXSEQ ({c.MAXSEQ}) to leave room for the prompt")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if (c.BATCH_SIZE * world * c.GRAD_ACCUM) % c.NUM_GENERATIONS:
            fail("BATCH_SIZE", f"BATCH_SIZE x processes ({world}) x GRAD_ACCUM ({c.GRAD_ACCUM}) must be a "
                               f"multiple of NUM_GENERATIONS ({c.NUM_GENERATIONS}): each prompt's "
                               "completions are scored as one group")
    _validate_trl_args(c)
    c.TRAIN_FILE = str(_find_train_file(c.TRAIN_FILE, None))


def _validate_scheduler(c: TrainConfig, fail) -> None:
    from transformers.trainer_utils import SchedulerType

    names = [s.value for s in SchedulerType]
    if c.LR_SCHEDULER not in names:
        close = difflib.get_close_matches(c.LR_SCHEDULER, names, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        fail("LR_SCHEDULER", f"unknown scheduler.{hint} Valid: {', '.join(names)}")


def _validate_trl_args(c: TrainConfig) -> None:
    """TRAINER_ARGS / MODEL_ARGS: names of the right dataclass, string values typed as TrlParser would."""
    if not c.TRAINER_ARGS and not c.MODEL_ARGS:
        return
    for old, new in DEPRECATED_TRAINER_FIELDS.items():
        if old in c.TRAINER_ARGS:
            if new in c.TRAINER_ARGS:
                raise ConfigError(f"config key 'TRAINER_ARGS.{old}': deprecated alias of {new!r}, "
                                  "which is also given; keep one")
            c.TRAINER_ARGS[new] = c.TRAINER_ARGS.pop(old)
    actions = {a.dest: a for a in config_parser(c.MODE)._actions}
    for group, allowed in (("TRAINER_ARGS", _trainer_fields(c.MODE)), ("MODEL_ARGS", _model_fields())):
        values = getattr(c, group)
        for name in list(values):
            key = name
            if name in SEED_KEYS:
                raise ConfigError(f"config key {key!r}: set {SEED_KEYS[name]} ({name}) at the top level")
            if name in RESERVED_TRAINER_FIELDS and group == "TRAINER_ARGS":
                raise ConfigError(f"config key {name!r}: not used by adaptiverl; "
                                  f"{RESERVED_TRAINER_FIELDS[name]}")
            if name not in allowed:
                hint = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
                raise ConfigError(f"config key {key!r}: not a field of "
                                  f"{trainer_arguments_class(c.MODE).__name__ if group == 'TRAINER_ARGS' else 'ModelConfig'}."
                                  + (f" Did you mean {hint[0]!r}?" if hint else ""))
            values[name] = _typed(key, values[name], actions.get(name))


def _typed(key: str, value: Any, action: argparse.Action | None) -> Any:
    """A string value converted with the parser's own type for the field (what TrlParser does)."""
    if action is None or not isinstance(value, str) or action.type in (None, str):
        converted = value
    elif value.strip().lower() in ("none", "null") and action.type is not None:
        converted = None
    else:
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p] if action.nargs in ("+", "*") else [value]
        try:
            items = [action.type(p.strip()) for p in parts]
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise ConfigError(f"config key {key!r} = {value!r}: {err}") from None
        converted = items if action.nargs in ("+", "*") else items[0]
    if action is not None and action.choices and converted is not None and converted not in action.choices:
        raise ConfigError(f"config key {key!r} = {value!r}: must be one of "
                          f"{', '.join(map(str, action.choices))}")
    if isinstance(converted, float) and not math.isfinite(converted):
        raise ConfigError(f"config key {key!r} = {value!r}: must be a finite number")
    return converted


def _validate_rewards(specs: list) -> None:
    """Build the composite once: spec errors (unknown type or key, bad weight, missing model folder)
    surface here, naming the component, before any model loads. Building loads no model."""
    from adaptiverl.rewards import RewardSpecError, build_rewards

    try:
        build_rewards(specs)
    except RewardSpecError as exc:
        raise ConfigError(f"config key 'REWARDS': {exc}") from exc


def _validate_optim(c: TrainConfig, fail) -> None:
    import torch

    name = c.OPTIM
    explicit_torch = name.startswith("torch.")
    if not explicit_torch and name.lower() in (*ONLINE_OPTIMIZERS, "enhanced_sgd"):
        c.OPTIM = name.lower()
        if c.ADAPTIVE_ARGS:
            fail("ADAPTIVE_ARGS", f"only applies when OPTIM names a torch optimizer, not {c.OPTIM!r}")
        return
    torch_names = [n for n in dir(torch.optim)
                   if isinstance(getattr(torch.optim, n), type)
                   and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
                   and n != "Optimizer"]
    bare = name.removeprefix("torch.")
    matches = [n for n in torch_names if n.lower() == bare.lower()]
    if not matches:
        valid = [*ONLINE_OPTIMIZERS, "enhanced_sgd", *torch_names]
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        fail("OPTIM", f"unknown optimizer.{hint} Valid: {', '.join(valid)} "
                      "(prefix a torch name with 'torch.' to pick torch's own SGD/RMSprop/AdamW)")
    # torch's SGD / RMSprop / AdamW keep their prefix: bare, those names mean the Online ones.
    c.OPTIM = ("torch." if matches[0].lower() in ONLINE_OPTIMIZERS else "") + matches[0]
    # A torch optimizer adapts only through the rules named: none named is the plain optimizer,
    # written out so the resolved config says so (AdaptiveOptimizer's own default is a rule).
    if not any(k in c.ADAPTIVE_ARGS for k in RULE_KEYS):
        c.ADAPTIVE_ARGS = {**c.ADAPTIVE_ARGS, "lr_rule": None}


def _find_train_file(name: str, base_dir: str | Path | None) -> Path:
    path = Path(name).expanduser()
    candidates = [path]
    if not path.is_absolute() and base_dir is not None:
        candidates.append(Path(base_dir) / path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        tried = " or ".join(str(p.resolve()) for p in candidates)
        raise ConfigError(f"config key 'TRAIN_FILE': file not found: {tried}")
    if found.suffix.lower() not in DATA_SUFFIXES:
        raise ConfigError(f"config key 'TRAIN_FILE' = {name!r}: unsupported file type {found.suffix!r}; "
                          f"use one of {', '.join(DATA_SUFFIXES)}")
    return found.resolve()


def check_machine(c: TrainConfig) -> None:
    """Fail early, with the key's name, if this machine cannot do what the config asks.

    Precision and quantization need the right hardware; plotting and the TensorBoard / W&B
    loggers need their packages.
    """
    import importlib.util

    import torch

    if c.PLOT and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("config key 'PLOT' = true needs matplotlib: pip install 'adaptiverl[plot]' "
                          "or set PLOT to false")
    for logger, package, extra in (("tensorboard", "tensorboard", "logging"), ("wandb", "wandb", "logging")):
        if logger in (r.lower() for r in c.REPORT_TO) and importlib.util.find_spec(package) is None:
            raise ConfigError(f"config key 'REPORT_TO' lists {logger!r} but {package} is not installed: "
                              f"pip install 'adaptiverl[{extra}]' or remove it from REPORT_TO")

    cuda = torch.cuda.is_available()
    if c.FP16 and not cuda:
        raise ConfigError("config key 'FP16' = true: float16 mixed precision needs a CUDA GPU and none is "
                          "available here; set FP16 to false (or BF16 to true, which runs on CPU)")
    if c.BF16 and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"config key 'BF16' = true: this GPU ({torch.cuda.get_device_name()}) does not "
                          "support bfloat16; use FP16 instead")
    for key in ("LOAD_4BIT", "LOAD_8BIT"):
        if getattr(c, key):
            if not cuda:
                raise ConfigError(f"config key {key!r} = true: bitsandbytes quantization needs a CUDA GPU "
                                  "and none is available here; set it to false")
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise ConfigError(f"config key {key!r} = true needs bitsandbytes: "
                                  "pip install 'adaptiverl[quant]'") from None
