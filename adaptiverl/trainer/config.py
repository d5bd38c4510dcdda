"""The JSON training config: the seed's keys plus what a real run needs.

A config is a flat JSON object with upper-case keys, as in the seed::

    {"MODEL": "gpt2", "TRAIN_FILE": "data.json", "BATCH_SIZE": "2", "LRATE": "5e-5", ...}

Values may be strings (``"2"``, ``"false"``, ``"5e-5"``) or native JSON values.
:func:`load_config` checks everything that can be checked before anything
heavy loads: unknown keys (with the closest valid key suggested), types,
allowed values, the training file, and whether the machine can do the
requested precision or quantization. Every error names the key and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUE_STRINGS = {"true", "1", "yes", "y", "on"}
FALSE_STRINGS = {"false", "0", "no", "n", "off"}
MODES = ("rl", "rloo", "sft")
ONLINE_OPTIMIZERS = ("sgd", "rmsprop", "adamw")
DATA_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
GPT2_LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]


class ConfigError(ValueError):
    """A config key is unknown, mistyped or impossible on this machine."""


@dataclass
class TrainConfig:
    """Every key a training config may hold. Field names are the JSON keys."""

    MODEL: str = field(metadata={"help": "Hub id or local folder loaded with `from_pretrained` (e.g. `gpt2`, `models/tiny-gpt2`)."})
    TRAIN_FILE: str = field(metadata={"help": "JSON, JSONL, CSV or Parquet file: a `prompt` column for rl/rloo (plus columns rewards read, e.g. `reference`), a `text` column for sft."})
    OUTPUT_DIR: str = field(default="checkpoints", metadata={"help": "Checkpoints, logs, the resolved config and the plot go here."})
    MODE: str = field(default="rl", metadata={"help": "`rl` (TRL GRPOTrainer), `rloo` (TRL RLOOTrainer) or `sft` (HF Trainer, causal-LM loss on `text`)."})
    BATCH_SIZE: int = field(default=2, metadata={"help": "Per-device batch size. rl/rloo: completions per device per step; BATCH_SIZE x processes x GRAD_ACCUM must be a multiple of NUM_GENERATIONS (TRL checks it)."})
    GRAD_ACCUM: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    EPOCHS: float = field(default=1.0, metadata={"help": "Training epochs (ignored when STEPS > 0)."})
    STEPS: int = field(default=-1, metadata={"help": "Optimizer steps; -1 trains for EPOCHS."})
    LRATE: float = field(default=5e-5, metadata={"help": "Base learning rate (the scheduler's and the controller's multipliers act on it)."})
    LR_SCHEDULER: str = field(default="constant", metadata={"help": "HF scheduler name: `constant`, `linear`, `cosine`, `constant_with_warmup`, ..."})
    WARMUP_STEPS: int = field(default=0, metadata={"help": "Scheduler warm-up steps."})
    OPTIM: str = field(default="adamw", metadata={"help": "`sgd`, `rmsprop`, `adamw` (OnlineSGD/OnlineRMSProp/OnlineAdamW), `enhanced_sgd`, or any `torch.optim` class name (e.g. `Adagrad`; `torch.AdamW` for torch's own AdamW) wrapped by AdaptiveOptimizer."})
    OPTIM_ARGS: dict = field(default_factory=dict, metadata={"help": "Extra keyword arguments for the optimizer (e.g. `weight_decay`, `betas`, controller settings of the Online optimizers)."})
    ADAPTIVE_ARGS: dict = field(default_factory=dict, metadata={"help": "Keyword arguments of AdaptiveOptimizer when OPTIM names a torch optimizer (e.g. `lr_rule`)."})
    WEIGHT_DECAY: float = field(default=0.0, metadata={"help": "Weight decay passed to the optimizer."})
    MAX_GRAD_NORM: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 disables clipping."})
    MAXSEQ: int = field(default=512, metadata={"help": "sft: tokens per example. rl/rloo: prompt tokens + MAX_COMPLETION_LENGTH (prompts are truncated to fit)."})
    NUM_GENERATIONS: int = field(default=4, metadata={"help": "rl/rloo: completions sampled per prompt."})
    MAX_COMPLETION_LENGTH: int = field(default=32, metadata={"help": "rl/rloo: new tokens per completion."})
    LOG_COMPLETIONS: bool = field(default=False, metadata={"help": "rl/rloo: print a sample of prompts, completions and rewards at logging steps (TRL's `log_completions`)."})
    TEMPERATURE: float = field(default=1.0, metadata={"help": "rl/rloo: sampling temperature."})
    BETA: float = field(default=0.0, metadata={"help": "rl/rloo: KL coefficient against the reference model (0 skips loading one)."})
    REWARDS: list = field(default_factory=list, metadata={"help": "rl/rloo: reward specs of `adaptiverl.rewards.build_rewards` (each a dict with `type`, `weight`, ...)."})
    BF16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (CPU or a GPU that supports it)."})
    FP16: bool = field(default=False, metadata={"help": "float16 mixed precision (needs a CUDA GPU)."})
    LOAD_4BIT: bool = field(default=False, metadata={"help": "Load the model 4-bit quantized through bitsandbytes (CUDA only; needs FULLTUNE false)."})
    LOAD_8BIT: bool = field(default=False, metadata={"help": "Load the model 8-bit quantized through bitsandbytes (CUDA only; needs FULLTUNE false)."})
    FULLTUNE: bool = field(default=True, metadata={"help": "true: train every weight. false: train LoRA adapters through peft."})
    LORA_R: int = field(default=8, metadata={"help": "LoRA rank r of the adapter matrices."})
    LORA_ALPHA: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    LORA_DROPOUT: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch input."})
    LORA_TARGET_MODULES: list = field(default_factory=lambda: list(GPT2_LORA_TARGETS), metadata={"help": "Module names LoRA adapts (GPT-2: attention `c_attn`, `c_proj` and MLP `c_fc`, `c_proj`)."})
    SAVE_STEPS: int = field(default=0, metadata={"help": "Checkpoint every N steps (0: only the final model)."})
    SAVE_TOTAL_LIMIT: int = field(default=0, metadata={"help": "Keep at most this many checkpoints (0: keep all)."})
    RESUME: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in OUTPUT_DIR."})
    CPU_THREADS: int = field(default=0, metadata={"help": "torch intra-op threads (0: torch's default). 1 is fastest for tiny models on a small, shared CPU."})
    SEED: int = field(default=42, metadata={"help": "Seed of every RNG (the same on all ranks)."})
    LOGGING_STEPS: int = field(default=10, metadata={"help": "Log (console line, TensorBoard/W&B) every N steps."})
    REPORT_TO: list = field(default_factory=list, metadata={"help": "Loggers: `tensorboard`, `wandb`, ... (list or comma-separated string; empty: none)."})
    PLOT: bool = field(default=True, metadata={"help": "Write `dynamics.png` (loss, reward, LR, momentum/betas) to OUTPUT_DIR at the end."})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config (native JSON values) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
REQUIRED = tuple(name for name, f in FIELDS.items()
                 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Turn a JSON value (native or string) into ``kind``, or raise naming the key."""
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
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    if kind is list:
        if isinstance(value, list):
            return value
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
            return value
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


def parse_config(raw: dict[str, Any], base_dir: str | Path | None = None,
                 check_hardware: bool = True) -> TrainConfig:
    """Validate a config mapping and return the resolved :class:`TrainConfig`.

    ``base_dir`` is where relative ``TRAIN_FILE`` paths are also looked for
    (the config file's folder) when they do not exist relative to the working
    directory.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a JSON object of KEY: value pairs, got {type(raw).__name__}")
    unknown = [key for key in raw if key not in FIELDS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key).upper(), FIELDS, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown config key {key!r}.{hint} Valid keys: {', '.join(FIELDS)}")
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise ConfigError(f"config is missing required key(s): {', '.join(missing)}")
    values = {key: _coerce(key, value, _field_type(key)) for key, value in raw.items()}
    config = TrainConfig(**values)
    _validate(config, base_dir)
    if check_hardware:
        check_machine(config)
    return config


_STRING_OR_COMMENT = re.compile(r'("(?:\\.|[^"\\])*")|//[^\n]*')


def strip_comments(text: str) -> str:
    """Drop ``// ...`` line comments outside strings (the seed's example config has one)."""
    return _STRING_OR_COMMENT.sub(lambda m: m.group(1) or "", text)


def load_config(path: str | Path, check_hardware: bool = True) -> TrainConfig:
    """Read and validate a JSON config file (``//`` comments allowed; see :func:`parse_config`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = json.loads(strip_comments(path.read_text()))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    return parse_config(raw, base_dir=path.parent, check_hardware=check_hardware)


def _validate(c: TrainConfig, base_dir: str | Path | None) -> None:
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
    c.TRAIN_FILE = str(_resolve_train_file(c.TRAIN_FILE, base_dir))


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
    # torch's SGD / RMSprop / AdamW keep their prefix: bare, those names mean the Online optimizers.
    c.OPTIM = ("torch." if matches[0].lower() in ONLINE_OPTIMIZERS else "") + matches[0]


def _resolve_train_file(name: str, base_dir: str | Path | None) -> Path:
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
