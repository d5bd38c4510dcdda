"""The training config: one name per setting (TRL's), the seed's upper-case keys as aliases.

A config is a JSON (``//`` comments allowed) or YAML mapping. Every setting has one name, TRL's
where TRL has the setting (``learning_rate``, ``per_device_train_batch_size``, ``use_peft``,
``dataset_name``) and a TRL-style one where it is ours (``optimizer``, ``rewards``); the keys the
seed promised (``LRATE``, ``BATCH_SIZE``, ``FULLTUNE`` ...) are aliases of those names, resolved
in one step, :func:`normalize`, when a mapping is read::

    {"MODEL": "gpt2", "TRAIN_FILE": "data.json", "BATCH_SIZE": "2", "LRATE": "5e-5", ...}
    {"model_name_or_path": "gpt2", "dataset_name": "data/", "per_device_train_batch_size": 2,
     "learning_rate": 5e-5, "top_p": 0.9, "loss_type": "dr_grpo", ...}

Any other field of the mode's trainer arguments (``GRPOConfig`` for ``rl``, ``RLOOConfig`` for
``rloo``, ``SFTConfig`` for ``sft``) or of TRL's ``ModelConfig`` may be set by its own name; it
lands in ``trainer_args`` / ``model_args``. On the command line the same names are flags of a
:class:`trl.TrlParser` over those dataclasses plus our own arguments, and override the file::

    python train.py configs/quickstart.json --learning_rate 1e-3 --max_steps 50

Values may be strings (``"2"``, ``"false"``, ``"5e-5"``) or native values. :class:`TrainConfig`
validates itself on construction, so a config built in Python is held to exactly the same rules
as one read from a file: unknown keys (with the closest valid key), types, non-finite numbers,
allowed values, the data. Every error is one line naming the key as it was written.
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
import textwrap
from collections.abc import Callable
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
MAX_SEED = 2**32 - 1  # numpy's RandomState, which transformers.set_seed seeds, takes no more
# torch.optim classes a trainer cannot drive: refused by name, with the reason.
UNSUPPORTED_TORCH_OPTIMIZERS = {
    "SparseAdam": "needs sparse gradients (nn.Embedding(sparse=True)); a transformer's are dense",
    "LBFGS": "needs a closure that re-evaluates the loss, which the HF Trainer does not pass",
}
# Trainer arguments that may name a file beside the config.
PATH_TRAINER_ARGS = ("chat_template_path",)
# The sections of `train.py --help`, in order.
SECTIONS = ("model", "data", "optimizer", "schedule", "rl", "precision", "lora", "output", "other")


class ConfigError(ValueError):
    """A config key is unknown, mistyped or impossible on this machine."""


def setting(default: Any = dataclasses.MISSING, *, help: str, section: str,
            alias: str | tuple[str, ...] = (), inverted: bool = False,
            factory: Callable[[], Any] | None = None) -> Any:
    """A :class:`TrainConfig` field: its help text, its ``train.py --help`` section and its aliases.

    ``alias`` names the seed's spelling (the first one is what ``train_config.json`` is written
    with); ``inverted`` marks a boolean alias meaning the opposite (``FULLTUNE`` = not ``use_peft``).
    """
    aliases = (alias,) if isinstance(alias, str) else tuple(alias)
    metadata = {"help": help, "section": section, "aliases": aliases, "inverted": inverted}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(init=False)
class TrainConfig:
    """Every key a training config may hold, under its one name; the seed's keys are aliases.

    ``TrainConfig(MODEL="gpt2", TRAIN_FILE="data.jsonl", OPTIM="AdamW")`` and
    ``TrainConfig(model_name_or_path="gpt2", train_file="data.jsonl", optimizer="AdamW")`` are
    the same config; values are coerced (``"2"`` -> 2, ``"false"`` -> False) and validated on
    construction (a :class:`ConfigError` names the key as written). An alias also reads and writes
    the attribute (``c.LRATE`` is ``c.learning_rate``).
    """

    model_name_or_path: str = setting(alias="MODEL", section="model", help="Hub id or local folder loaded with `from_pretrained` (e.g. `gpt2`, `./models/tiny-gpt2`).")
    mode: str = setting("rl", alias="MODE", section="model", help="`rl` (TRL GRPOTrainer), `rloo` (TRL RLOOTrainer) or `sft` (TRL SFTTrainer: `text`, `messages` or prompt/completion data).")
    train_file: str | None = setting(None, alias="TRAIN_FILE", section="data", help="One JSON, JSONL, CSV or Parquet file (no eval split; use dataset_name for one): a `prompt` column for rl/rloo (plus columns rewards read, e.g. `reference`); `text`, `messages` or `prompt` + `completion` for sft.")
    dataset_name: str | None = setting(None, section="data", help="TRL's ScriptArguments name: a local dataset folder (data files named by split, e.g. `train.jsonl` + `test.jsonl`, or one written by `save_to_disk`), a JSON/JSONL/CSV/Parquet file, or a hub dataset name where a hub is reachable. Relative paths: from the working directory, then from the config file.")
    dataset_config: str | None = setting(None, section="data", help="The dataset's configuration name (`load_dataset(dataset_name, dataset_config)`).")
    dataset_train_split: str = setting("train", section="data", help="The split to train on.")
    dataset_test_split: str = setting("test", section="data", help="The split evaluated when `eval_strategy` is `steps` or `epoch` (`eval_steps`, `per_device_eval_batch_size` as in TRL).")
    max_length: int = setting(512, alias=("MAXSEQ", "max_seq_length"), section="data", help="sft: tokens per example (SFTConfig's `max_length`). rl/rloo: prompt tokens + max_completion_length (prompts are truncated to fit).")
    optimizer: str = setting("adamw", alias="OPTIM", section="optimizer", help="`sgd`, `rmsprop`, `adamw` (OnlineSGD/OnlineRMSProp/OnlineAdamW), `enhanced_sgd`, or any `torch.optim` class name (e.g. `Adagrad`; `torch.AdamW` for torch's own AdamW) wrapped by AdaptiveOptimizer, which adapts it only through the rules adaptive_args names (none: the plain torch optimizer).")
    optimizer_args: dict = setting(alias="OPTIM_ARGS", section="optimizer", factory=dict, help="Extra keyword arguments for the optimizer (e.g. `weight_decay`, `betas`, controller settings of the Online optimizers).")
    adaptive_args: dict = setting(alias="ADAPTIVE_ARGS", section="optimizer", factory=dict, help="Keyword arguments of AdaptiveOptimizer when optimizer names a torch optimizer (e.g. `{\"lr_rule\": \"trend+variance\"}`); no `*_rule` key: no adaptation.")
    horizon: bool | None = setting(None, alias="HORIZON", section="optimizer", help="AdaptiveCallback(horizon=...): true tells the optimizer max_steps, so its horizon schedule warms up and anneals towards it; false trains without a horizon (no anneal: for RL, where the GRPO benchmark shows an anneal losing to a constant lr); unset: AdaptiveCallback's default.")
    learning_rate: float = setting(5e-5, alias="LRATE", section="optimizer", help="Base learning rate (the scheduler's and the controller's multipliers act on it).")
    weight_decay: float = setting(0.0, alias="WEIGHT_DECAY", section="optimizer", help="Weight decay passed to the optimizer.")
    max_grad_norm: float = setting(1.0, alias="MAX_GRAD_NORM", section="optimizer", help="Gradient clipping norm; 0 disables clipping.")
    per_device_train_batch_size: int = setting(2, alias="BATCH_SIZE", section="schedule", help="Per-device batch size. rl/rloo: completions per device per step; BATCH_SIZE x processes x GRAD_ACCUM must be a multiple of NUM_GENERATIONS.")
    gradient_accumulation_steps: int = setting(1, alias="GRAD_ACCUM", section="schedule", help="Gradient accumulation steps.")
    num_train_epochs: float = setting(1.0, alias="EPOCHS", section="schedule", help="Training epochs (ignored when max_steps > 0).")
    max_steps: int = setting(-1, alias="STEPS", section="schedule", help="Optimizer steps; -1 trains for num_train_epochs.")
    lr_scheduler_type: str = setting("constant", alias="LR_SCHEDULER", section="schedule", help="HF scheduler name: `constant`, `linear`, `cosine`, `constant_with_warmup`, ...")
    warmup_steps: int = setting(0, alias="WARMUP_STEPS", section="schedule", help="Scheduler warm-up steps.")
    seed: int = setting(42, alias="SEED", section="schedule", help="Seed of every RNG (the same on all ranks), 0 to 2**32 - 1.")
    cpu_threads: int = setting(0, alias="CPU_THREADS", section="schedule", help="torch intra-op threads (0: torch's default). 1 is fastest for tiny models on a small, shared CPU.")
    rewards: list = setting(alias="REWARDS", section="rl", factory=list, help="rl/rloo: reward specs of `adaptiverl.rewards.build_rewards` (each a dict with `type`, `weight`, ...); `type` may be a registered name, `module:function`, or `file.py:function` (relative to the config file).")
    reward_modules: list = setting(alias="REWARD_MODULES", section="rl", factory=list, help="Python files (relative to the config file) or module names imported before the rewards are built, so that their `@register_reward(\"name\")` names can be used as `type`.")
    num_generations: int = setting(2, alias="NUM_GENERATIONS", section="rl", help="rl/rloo: completions sampled per prompt (2 by default, so that the seed's BATCH_SIZE 2 forms one group).")
    max_completion_length: int = setting(32, alias="MAX_COMPLETION_LENGTH", section="rl", help="rl/rloo: new tokens per completion.")
    temperature: float = setting(1.0, alias="TEMPERATURE", section="rl", help="rl/rloo: sampling temperature.")
    beta: float = setting(0.0, alias="BETA", section="rl", help="rl/rloo: KL coefficient against the reference model (0 skips loading one).")
    log_completions: bool = setting(False, alias="LOG_COMPLETIONS", section="rl", help="rl/rloo: print a sample of prompts, completions and rewards at logging steps.")
    bf16: bool = setting(False, alias="BF16", section="precision", help="bfloat16 mixed precision (CPU or a GPU that supports it).")
    fp16: bool = setting(False, alias="FP16", section="precision", help="float16 mixed precision (needs a CUDA GPU).")
    load_in_4bit: bool = setting(False, alias="LOAD_4BIT", section="precision", help="Load the model 4-bit quantized through bitsandbytes (CUDA only; needs use_peft).")
    load_in_8bit: bool = setting(False, alias="LOAD_8BIT", section="precision", help="Load the model 8-bit quantized through bitsandbytes (CUDA only; needs use_peft).")
    use_peft: bool = setting(False, alias="FULLTUNE", inverted=True, section="lora", help="Train LoRA adapters through peft instead of every weight (the seed's FULLTUNE is its opposite: FULLTUNE true = use_peft false).")
    lora_r: int = setting(8, alias="LORA_R", section="lora", help="LoRA rank r of the adapter matrices.")
    lora_alpha: int = setting(16, alias="LORA_ALPHA", section="lora", help="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = setting(0.05, alias="LORA_DROPOUT", section="lora", help="Dropout on the LoRA branch input.")
    lora_target_modules: list = setting(alias="LORA_TARGET_MODULES", section="lora", factory=lambda: list(GPT2_LORA_TARGETS), help="Module names LoRA adapts (GPT-2: attention `c_attn`, `c_proj` and MLP `c_fc`, `c_proj`).")
    output_dir: str = setting("checkpoints", alias="OUTPUT_DIR", section="output", help="Checkpoints, logs, the resolved config, the model card and the plot go here.")
    save_steps: int = setting(0, alias="SAVE_STEPS", section="output", help="Checkpoint every N steps (0: only the final model).")
    save_total_limit: int = setting(0, alias="SAVE_TOTAL_LIMIT", section="output", help="Keep at most this many checkpoints (0: keep all).")
    resume: bool = setting(False, alias="RESUME", section="output", help="Continue from the newest complete checkpoint in output_dir (an incomplete one, e.g. from a crash during a save, is skipped with a warning).")
    overwrite_output_dir: bool = setting(False, alias="OVERWRITE_OUTPUT_DIR", section="output", help="Start a fresh run in an output_dir that holds an earlier run (its checkpoint-* folders are removed); without it such a run is refused.")
    logging_steps: int = setting(10, alias="LOGGING_STEPS", section="output", help="Log (console line, TensorBoard/W&B) every N steps.")
    report_to: list = setting(alias="REPORT_TO", section="output", factory=list, help="Loggers: `tensorboard`, `wandb`, ... (list or comma-separated string; empty: none).")
    plot: bool = setting(True, alias="PLOT", section="output", help="Write `dynamics.png` (loss, reward, LR, momentum/betas) to output_dir at the end.")
    trainer_args: dict = setting(alias="TRAINER_ARGS", section="other", factory=dict, help="Any other field of the mode's trainer arguments (GRPOConfig, RLOOConfig, SFTConfig) by its own name, e.g. `{\"top_p\": 0.9, \"loss_type\": \"dr_grpo\"}`; such keys may also be written at the top level.")
    model_args: dict = setting(alias="MODEL_ARGS", section="other", factory=dict, help="Any other field of TRL's ModelConfig (e.g. `dtype`, `model_revision`, `attn_implementation`, `use_rslora`); such keys may also be written at the top level.")

    def __init__(self, **given: Any) -> None:
        self._build(*normalize(given))

    def _build(self, values: dict[str, Any], spelled: dict[str, str]) -> None:
        """Fill the fields from normalized ``values`` (``spelled``: how each key was written)."""
        missing = [name for name in REQUIRED if name not in values]
        if missing:
            raise ConfigError("config is missing required key(s): " +
                              ", ".join(f"{alias_of(name)} ({name})" for name in missing))
        object.__setattr__(self, "_spelled", spelled)
        for name, f in FIELDS.items():
            if name in values:
                value = _coerce(self.key(name), values[name], _field_type(name))
            else:
                value = f.default_factory() if f.default is dataclasses.MISSING else f.default
            object.__setattr__(self, name, value)
        _validate(self)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not attributes: the seed's aliases.
        canonical = ALIASES.get(name)
        if canonical is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = getattr(self, canonical)
        return not value if name in INVERTED else value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ALIASES:
            name, value = ALIASES[name], (not value if name in INVERTED else value)
        object.__setattr__(self, name, value)

    def key(self, name: str) -> str:
        """How the config names setting ``name``: as the user wrote it, else its seed alias."""
        return self.__dict__.get("_spelled", {}).get(name) or alias_of(name)

    def to_dict(self) -> dict[str, Any]:
        """The settings under the seed's spelling where one exists (what ``train_config.json`` holds
        and its readers use), the TRL name otherwise; reading it back gives the same config."""
        return {alias_of(name): (not value if FIELDS[name].metadata["inverted"] else value)
                for name, value in dataclasses.asdict(self).items()}

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
REQUIRED = ("model_name_or_path",)
#: alias -> the setting's one name (the seed's upper-case keys, and older names of ours).
ALIASES = {alias: name for name, f in FIELDS.items() for alias in f.metadata["aliases"]}
INVERTED = {alias for alias, name in ALIASES.items() if FIELDS[name].metadata["inverted"]}
# Trainer fields that would be silently ignored or that train() sets itself: refused by name.
RESERVED_TRAINER_FIELDS = {
    "optim": "adaptiverl builds the optimizer: pick it with OPTIM (`optimizer`)",
    "optim_args": "give optimizer arguments in OPTIM_ARGS (`optimizer_args`)",
}
# Deprecated trainer names folded into their successors (transformers warns on the old ones).
DEPRECATED_TRAINER_FIELDS = {"gradient_checkpointing": "activation_checkpointing",
                             "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def alias_of(name: str) -> str:
    """The seed's spelling of setting ``name`` (its first alias), or ``name`` itself."""
    aliases = FIELDS[name].metadata["aliases"]
    return aliases[0] if aliases else name


def trainer_arguments_class(mode: str) -> type:
    """``GRPOConfig`` (rl), ``RLOOConfig`` (rloo) or ``SFTConfig`` (sft)."""
    import trl

    return {"rl": trl.GRPOConfig, "rloo": trl.RLOOConfig, "sft": trl.SFTConfig}[mode]


@functools.cache
def _trainer_fields(mode: str) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(trainer_arguments_class(mode)) if f.init)


@functools.cache
def _model_fields() -> frozenset[str]:
    from trl import ModelConfig

    return frozenset(f.name for f in dataclasses.fields(ModelConfig) if f.init)


def trainer_settings(c: TrainConfig) -> dict[str, Any]:
    """The config's settings that are fields of its mode's trainer arguments, by name."""
    return {name: getattr(c, name) for name in FIELDS if name in _trainer_fields(c.mode)}


def model_settings(c: TrainConfig) -> dict[str, Any]:
    """The config's settings that are fields of TRL's ModelConfig, by name."""
    return {name: getattr(c, name) for name in FIELDS if name in _model_fields()}


def own_settings(mode: str) -> list[str]:
    """Our settings that neither the mode's trainer arguments nor ModelConfig have."""
    theirs = _trainer_fields(mode) | _model_fields()
    return [name for name in FIELDS if name not in theirs]


def config_parser(mode: str = "rl"):
    """A :class:`trl.TrlParser` over our arguments, ``mode``'s trainer arguments and ModelConfig.

    Our arguments come first, in their own group; its errors are :class:`ConfigError` (one line
    naming the flag) instead of ``sys.exit``.
    """
    from trl import ModelConfig, TrlParser

    class Parser(TrlParser):
        def error(self, message: str):
            raise ConfigError(f"command line: {message}")

    parser = Parser([_adaptive_arguments(mode), trainer_arguments_class(mode), ModelConfig],
                    prog="train.py", allow_abbrev=False, usage="train.py CONFIG.{json,yaml} [--NAME VALUE ...]",
                    description="Every flag overrides the config file's value of that name; "
                                "the seed's keys work as flags too (--LRATE 1e-3).")
    for action in parser._actions:
        action.required = False
    # Our group first in --help-all (argparse prints groups in the order they were made).
    ours = [g for g in parser._action_groups if g.title == OWN_GROUP_TITLE]
    parser._action_groups = ours + [g for g in parser._action_groups if g not in ours]
    return parser


OWN_GROUP_TITLE = "adaptiverl's own settings (UPPER_CASE: the seed's alias)"


@functools.cache
def _adaptive_arguments(mode: str) -> type:
    """Our own settings as a dataclass the parser reads (help text from TrainConfig)."""
    specs = []
    for name in own_settings(mode):
        f = FIELDS[name]
        kind, _ = _field_type(name)
        default = None if f.default is dataclasses.MISSING else f.default
        aliases = "/".join(f.metadata["aliases"])
        specs.append((name, str | None if kind in (list, dict) else kind | None,
                      field(default=default, metadata={"help": (f"({aliases}) " if aliases else "")
                                                       + f.metadata["help"]})))
    cls = dataclasses.make_dataclass("AdaptiveArguments", specs)
    cls._argument_group_name = OWN_GROUP_TITLE
    return cls


def help_text(mode: str = "rl") -> str:
    """``train.py --help``: our settings by section, each with its alias; then where the rest is."""
    lines = ["usage: train.py CONFIG.{json,yaml} [--NAME VALUE ...]", "",
             "Every flag overrides the config file's value of that name; the seed's UPPER_CASE keys",
             "work too (--LRATE 1e-3). A setting's one name is TRL's; the alias is in parentheses.", ""]
    for section in SECTIONS:
        lines.append(f"{section}:")
        for name, f in FIELDS.items():
            if f.metadata["section"] == section:
                aliases = ", ".join(f.metadata["aliases"])
                default = "required" if name in REQUIRED else json.dumps(
                    f.default_factory() if f.default is dataclasses.MISSING else f.default)
                lines.append(f"  --{name}" + (f" ({aliases})" if aliases else "") + f"  [{default}]")
                lines += textwrap.wrap(f.metadata["help"], 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
        lines.append("")
    lines.append(f"Any other field of {trainer_arguments_class(mode).__name__} (MODE {mode!r}) or ModelConfig is "
                 "accepted by its own name too: `train.py --help-all` lists every flag.")
    return "\n".join(lines)


class _Bad(Exception):
    """A value that cannot become the field's type (turned into a ConfigError naming the key)."""


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_STRINGS | FALSE_STRINGS:
        return value.strip().lower() in TRUE_STRINGS
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _Bad


def _to_number(value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise _Bad
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise _Bad from None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise _Bad
    return value


def _to_int(value: Any) -> int:
    return _to_number(value, int)


def _to_float(value: Any) -> float:
    return _to_number(value, float)


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Bad


def _parsed(value: str, kind: type) -> Any:
    try:
        parsed = loads_json(value, "value")
    except ConfigError:
        raise _Bad from None
    if not isinstance(parsed, kind):
        raise _Bad
    return parsed


def _to_list(value: Any) -> list:
    if isinstance(value, list | tuple):
        return list(value)
    if not isinstance(value, str):
        raise _Bad
    text = value.strip()
    if text.startswith("["):
        return _parsed(text, list)
    return [part.strip() for part in text.split(",") if part.strip()]


def _to_dict(value: Any) -> dict:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str):
        return _parsed(value, dict)
    raise _Bad


_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, list: _to_list, dict: _to_dict}


def _coerce(key: str, value: Any, kind: tuple[type, bool]) -> Any:
    """Turn a config value (native or string) into ``kind`` = (type, optional), or raise naming the key."""
    cls, optional = kind
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))):
        return None
    try:
        result = _CONVERTERS[cls](value)
    except _Bad:
        raise ConfigError(f"config key {key!r}: expected {cls.__name__}, got {value!r} "
                          f"({type(value).__name__})") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise ConfigError(f"config key {key!r} = {value!r}: must be a finite number")
    return result


@functools.cache
def _field_type(name: str) -> tuple[type, bool]:
    """(type, optional) of a field, from its annotation (``"int"``, ``"str | None"``)."""
    annotation = FIELDS[name].type
    text = annotation if isinstance(annotation, str) else annotation.__name__
    base, _, rest = text.partition(" | ")
    return {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}[base], rest == "None"


def _closest_hint(key: str, mode: str) -> str:
    """`` Did you mean 'X'?``: our settings and aliases first (``batch_size`` -> ``BATCH_SIZE``), then
    the mode's trainer and ModelConfig fields."""
    by_upper = {name.upper(): name for name in (*ALIASES, *FIELDS)}  # a name wins over an alias
    close = difflib.get_close_matches(key.upper(), list(by_upper), n=1, cutoff=0.75)
    if close:
        found = by_upper[close[0]]
        name = ALIASES.get(found, found)
        if not key.islower():
            return f" Did you mean {alias_of(name) if found == name else found!r}?"
        return f" Did you mean {name!r}" + (f" ({found})?" if found != name else "?")
    theirs = sorted(_trainer_fields(mode) | _model_fields()) if key.islower() else []
    close = difflib.get_close_matches(key, [*FIELDS, *ALIASES, *theirs], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _mode_of(raw: dict[str, Any], mode: str | None) -> str:
    given = mode or next((raw[k] for k in ("mode", "MODE") if k in raw), "rl")
    if not isinstance(given, str) or given.lower() not in MODES:
        key = "MODE" if "MODE" in raw else "mode"
        raise ConfigError(f"config key {key!r} = {given!r}: must be one of {', '.join(MODES)}")
    return given.lower()


def _unknown_key(key: str, mode: str) -> ConfigError:
    other = [m for m in MODES if m != mode and key in _trainer_fields(m)]
    if other:
        return ConfigError(f"config key {key!r}: a field of {trainer_arguments_class(other[0]).__name__} "
                           f"(MODE {other[0]!r}), not of {trainer_arguments_class(mode).__name__}, "
                           f"which MODE {mode!r} trains with")
    return ConfigError(f"unknown config key {key!r}.{_closest_hint(key, mode)} Valid keys: "
                       f"{', '.join(alias_of(n) for n in FIELDS)}, their TRL names (train.py --help), "
                       f"or any field of {trainer_arguments_class(mode).__name__} or ModelConfig")


class _Normalized:
    """What :func:`normalize` collects: values by their one name, and how each was written."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.values: dict[str, Any] = {}
        self.groups: dict[str, dict[str, Any]] = {"trainer_args": {}, "model_args": {}}
        self.spelled: dict[str, str] = {}

    def put(self, target: dict[str, Any], name: str, value: Any, written: str) -> None:
        if name in self.spelled:
            raise ConfigError(f"config key {written!r}: the same setting is also given as "
                              f"{self.spelled[name]!r}; keep one of them")
        self.spelled[name] = written
        target[name] = value

    def group(self, key: str, value: Any) -> None:
        """``trainer_args`` / ``model_args`` (either spelling): each field joins the others given."""
        name = ALIASES.get(key, key)
        target = self.groups[name]
        for inner, item in _coerce(key, value, (dict, False)).items():
            if inner in FIELDS or inner in ALIASES:
                raise ConfigError(f"config key {key!r}: {inner!r} is a config key of its own; "
                                  "write it at the top level")
            self.put(target, inner, item, f"{key}.{inner}")
        self.spelled.setdefault(name, key)

    def add(self, key: Any, value: Any) -> None:
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r}: keys must be strings")
        name = ALIASES.get(key, key)
        if name in self.groups:
            self.group(key, value)
        elif name in FIELDS:
            if key in INVERTED:
                value = not _coerce(key, value, (bool, False))
            self.put(self.values, name, value, key)
        elif key in _trainer_fields(self.mode):
            self.put(self.groups["trainer_args"], key, value, key)
        elif key in _model_fields():
            self.put(self.groups["model_args"], key, value, key)
        else:
            raise _unknown_key(key, self.mode)


def normalize(raw: dict[str, Any], mode: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The one step that resolves spellings: ``(values by their one name, how each was written)``.

    Aliases become the setting's name (``LRATE`` -> ``learning_rate``, ``FULLTUNE`` -> not
    ``use_peft``); other fields of the mode's trainer arguments go to ``trainer_args`` and
    ModelConfig fields to ``model_args``. A setting given twice, or a key that is none of these,
    is an error naming it.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of KEY: value pairs, got {type(raw).__name__}")
    found = _Normalized(_mode_of(raw, mode))
    for key, value in raw.items():
        found.add(key, value)
    for name, inner in found.groups.items():
        if inner:
            found.values[name] = inner
    return found.values, found.spelled


def parse_config(raw: dict[str, Any], base_dir: str | Path | None = None,
                 check_hardware: bool = True) -> TrainConfig:
    """Validate a config mapping (either spelling) and return the resolved :class:`TrainConfig`.

    ``base_dir`` is the config file's folder: relative data paths are also looked for there, and
    relative reward files and ``reward_modules`` are found from it (see :func:`anchor_paths`).
    """
    values, spelled = normalize(raw)
    if base_dir is not None:
        values = anchor_paths(values, spelled, Path(base_dir))
    config = TrainConfig.__new__(TrainConfig)
    config._build(values, spelled)
    if check_hardware:
        check_machine(config)
    return config


def _relative_to(path: str, base_dir: Path, key: str, kind: str) -> str:
    """``path`` as given if it exists from the working directory, else from ``base_dir`` if it
    exists there; otherwise a ConfigError naming ``key`` and both places tried."""
    given = Path(path).expanduser()
    if given.is_absolute() or given.exists():
        return path
    beside = base_dir / given
    if beside.exists():
        return str(beside.resolve())
    raise ConfigError(f"config key {key!r}: {kind} not found: {given.resolve()} or {beside.resolve()}")


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix.lower() in DATA_SUFFIXES


def anchor_paths(values: dict[str, Any], spelled: dict[str, str], base_dir: Path) -> dict[str, Any]:
    """Relative paths of a config file resolved the way its author meant: from the working
    directory, else from the config file's folder (``train_file``, a local ``dataset_name``,
    ``file.py:function`` reward types, ``reward_modules`` files, a ``chat_template_path`` file)."""
    values = dict(values)
    for name in ("train_file", "dataset_name"):
        value = values.get(name)
        if isinstance(value, str) and value and (name == "train_file" or _looks_local(value)
                                                 or (base_dir / value).exists()):
            values[name] = _relative_to(value, base_dir, spelled.get(name, name), "file")
    rewards = values.get("rewards")
    if isinstance(rewards, list):
        values["rewards"] = [_anchor_reward(spec, base_dir, spelled.get("rewards", "rewards"))
                             for spec in rewards]
    for name, value in values.get("trainer_args", {}).items():
        beside = base_dir / str(value)
        if name in PATH_TRAINER_ARGS and not Path(str(value)).exists() and beside.exists():
            values["trainer_args"] = {**values["trainer_args"], name: str(beside.resolve())}
    modules = values.get("reward_modules")
    if isinstance(modules, list):
        key = spelled.get("reward_modules", "reward_modules")
        values["reward_modules"] = [_relative_to(m, base_dir, key, "reward module file")
                                    if isinstance(m, str) and m.endswith(".py") else m for m in modules]
    return values


def _anchor_reward(spec: Any, base_dir: Path, key: str) -> Any:
    from adaptiverl.rewards.registry import split_file_reference

    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        return spec
    reference = split_file_reference(spec["type"])
    if reference is None:
        return spec
    path, attr = reference
    return {**spec, "type": f"{_relative_to(path, base_dir, key, 'reward file')}:{attr}"}


# ---- reading files ------------------------------------------------------------------------------

_STRING_OR_COMMENT = re.compile(r'("(?:\\.|[^"\\])*")|//[^\n]*')


def strip_comments(text: str) -> str:
    """Drop ``// ...`` line comments outside strings (the seed's example config has one)."""
    return _STRING_OR_COMMENT.sub(lambda m: m.group(1) or "", text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise ConfigError(f"config key {key!r} is given twice in one mapping; keep one")
        mapping[key] = value
    return mapping


def loads_json(text: str, where: str) -> Any:
    """``json.loads`` refusing duplicate keys, and nesting too deep for Python's recursion."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON ({err})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None


def _yaml_loader():
    """PyYAML's SafeLoader without anchors/aliases (a billion-laughs config expands exponentially)
    and with duplicate keys refused."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
                mark = self.peek_event().start_mark
                raise ConfigError(f"YAML anchors and aliases (& and *) are not supported in a config "
                                  f"(line {mark.line + 1}); write the value out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            self.flatten_mapping(node)
            pairs = [(self.construct_object(k, deep=deep), self.construct_object(v, deep=deep))
                     for k, v in node.value]
            return _no_duplicates(pairs)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, Loader.construct_mapping)
    return Loader


def _load_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a JSON (``//`` comments allowed) or YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r}); "
                          "save the config as UTF-8") from None
    if path.suffix.lower() in YAML_SUFFIXES:
        raw = _load_yaml(text, path)
    else:
        try:
            raw = loads_json(strip_comments(text), str(path))
        except ConfigError as err:
            raise ConfigError(str(err) if str(err).startswith(str(path)) else f"{path}: {err}") from None
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


def _split_alias_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--ALIAS VALUE`` flags (one value each) apart from the rest, which the parser reads."""
    aliased: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.removeprefix("--").partition("=")
        if token.startswith("--") and name in ALIASES:
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"command line: --{name} needs a value")
                i += 1
                inline = argv[i]
            aliased[name] = inline
        else:
            rest.append(token)
        i += 1
    return aliased, rest


def merge_overrides(raw: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """The file's mapping with the command line's ``--NAME VALUE`` flags on top.

    Aliases (``--LRATE 1e-3``) take one value each; every other flag is parsed by the mode's
    :func:`config_parser` (TrlParser types: ``--report_to tensorboard wandb``, ``--use_peft``).
    A flag replaces the file's value of the same setting in either spelling.
    """
    aliased, rest = _split_alias_flags(argv)
    flag_mode = aliased.get("MODE") or _flag_value(rest, "mode")
    mode = _mode_of({**raw, "mode": flag_mode} if flag_mode else raw, None)
    parser = config_parser(mode)
    namespace = argparse.Namespace()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    _, unknown = parser.parse_known_args(rest, namespace=namespace)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        hint = _closest_hint(flag.lstrip("-").partition("=")[0], mode)
        raise ConfigError(f"command line: unknown argument {flag!r}.{hint} "
                          "Run `train.py --help` for every flag")
    merged, spelled = normalize(raw, mode)
    flags, _ = normalize({**aliased, **vars(namespace)}, mode)
    for name, value in flags.items():
        if name in ("trainer_args", "model_args"):
            merged[name] = {**merged.get(name, {}), **value}
        else:
            merged[name] = value
    return respell(merged, spelled)


def respell(values: dict[str, Any], spelled: dict[str, str]) -> dict[str, Any]:
    """Normalized ``values`` as a raw mapping again, each key spelled as it was written."""
    return {spelled.get(name, name): (not value if spelled.get(name) in INVERTED else value)
            for name, value in values.items()}


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, token in enumerate(argv):
        if token == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(f"--{name}="):
            return token.partition("=")[2]
    return None


# ---- validation -----------------------------------------------------------------------------------

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


# (settings, the check, what it says): the plain range rules.
RANGE_RULES = (
    (("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "num_generations",
      "max_completion_length", "logging_steps", "lora_r", "lora_alpha"), lambda v: v >= 1, "must be >= 1"),
    (("save_steps", "save_total_limit", "warmup_steps", "cpu_threads", "max_grad_norm", "weight_decay",
      "beta"), lambda v: v >= 0, "must be >= 0"),
    (("learning_rate", "num_train_epochs", "temperature"), lambda v: v > 0, "must be > 0"),
    (("max_steps",), lambda v: v == -1 or v > 0, "must be a positive number of steps, or -1 to train for EPOCHS"),
    (("lora_dropout",), lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    (("seed",), lambda v: 0 <= v <= MAX_SEED, f"must be in [0, {MAX_SEED}] (2**32 - 1, numpy's seed range)"),
    (("output_dir",), lambda v: v.strip() != "", "must name a folder (empty would write into the working directory)"),
    (("lora_target_modules",), lambda v: bool(v) and all(isinstance(m, str) for m in v),
     "must be a non-empty list of module names"),
    (("report_to",), lambda v: all(isinstance(r, str) for r in v), "must be a list of logger names"),
)


def _validate(c: TrainConfig) -> None:
    """Every rule that needs only the config, in the order a reader meets the keys."""
    def fail(name: str, why: str) -> None:
        raise ConfigError(f"config key {c.key(name)!r} = {_shown(getattr(c, name))}: {why}")

    c.mode = c.mode.lower()
    if c.mode not in MODES:
        fail("mode", f"must be one of {', '.join(MODES)}")
    for names, ok, why in RANGE_RULES:
        for name in names:
            if not ok(getattr(c, name)):
                fail(name, why)
    for name in ("optimizer_args", "adaptive_args", "rewards", "trainer_args", "model_args"):
        where = _non_finite(getattr(c, name), c.key(name))
        if where is not None:
            raise ConfigError(f"config key {where!r}: must be a finite number, got a NaN or infinity")
    c.report_to = [r for r in c.report_to if r.lower() != "none"]
    _validate_switches(c, fail)
    if Path(c.output_dir).expanduser().is_file():
        fail("output_dir", "is a file; name a folder (it is created if missing)")
    _validate_scheduler(c, fail)
    _validate_optim(c, fail)
    if c.mode in ("rl", "rloo"):
        _validate_rl(c, fail)
    _validate_trl_args(c)
    _validate_data(c, fail)


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else repr(value)


def _validate_switches(c: TrainConfig, fail) -> None:
    if c.fp16 and c.bf16:
        fail("fp16", f"{c.key('fp16')} and {c.key('bf16')} are mutually exclusive: set one of them to false")
    if c.load_in_4bit and c.load_in_8bit:
        fail("load_in_4bit", f"{c.key('load_in_4bit')} and {c.key('load_in_8bit')} are mutually exclusive: "
                             "set one of them to false")
    if (c.load_in_4bit or c.load_in_8bit) and not c.use_peft:
        raise ConfigError(f"config key {c.key('use_peft')!r}: quantized weights cannot be fully fine-tuned: "
                          "train LoRA adapters (FULLTUNE false, i.e. use_peft true) or set LOAD_4BIT/LOAD_8BIT "
                          "to false")


def _validate_rl(c: TrainConfig, fail) -> None:
    if not c.rewards:
        fail("rewards", f"MODE {c.mode!r} needs at least one reward spec, e.g. "
                        '[{"type": "length", "target": 20, "weight": 1.0}]')
    if not all(isinstance(spec, dict) for spec in c.rewards):
        fail("rewards", "must be a list of JSON objects (reward specs)")
    _validate_rewards(c)
    if c.num_generations < 2:
        fail("num_generations", "GRPO/RLOO compare completions of one prompt: use at least 2")
    if c.max_completion_length >= c.max_length:
        fail("max_completion_length", f"must be smaller than {c.key('max_length')} ({c.max_length}) "
                                      "to leave room for the prompt")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if (c.per_device_train_batch_size * world * c.gradient_accumulation_steps) % c.num_generations:
        fail("per_device_train_batch_size",
             f"{c.key('per_device_train_batch_size')} x processes ({world}) x {c.key('gradient_accumulation_steps')} "
             f"({c.gradient_accumulation_steps}) must be a multiple of {c.key('num_generations')} "
             f"({c.num_generations}): each prompt's completions are scored as one group")


def _validate_scheduler(c: TrainConfig, fail) -> None:
    from transformers.trainer_utils import SchedulerType

    names = [s.value for s in SchedulerType]
    if c.lr_scheduler_type not in names:
        close = difflib.get_close_matches(c.lr_scheduler_type, names, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        fail("lr_scheduler_type", f"unknown scheduler.{hint} Valid: {', '.join(names)}")


def _validate_data(c: TrainConfig, fail) -> None:
    """One source of training data; evaluation asks for a test split, which only dataset_name has.
    (The files themselves are read by :mod:`adaptiverl.trainer.data` before any model loads.)"""
    if (c.train_file is None) == (c.dataset_name is None):
        raise ConfigError(f"config key {c.key('train_file')!r}: give the training data as "
                          f"{c.key('train_file')} (one file) or dataset_name (a dataset folder, file or "
                          "hub name, with splits)" + (", not both" if c.train_file is not None else ""))
    if c.train_file is not None:
        c.train_file = str(_check_data_file(c.train_file, c.key("train_file")))
    strategy = str(c.trainer_args.get("eval_strategy", "no")).lower()
    if strategy != "no" and c.dataset_name is None:
        raise ConfigError(f"config key 'eval_strategy' = {strategy!r}: there is no eval data; give "
                          f"dataset_name with a {c.dataset_test_split!r} split (dataset_test_split), "
                          "or set eval_strategy to 'no'")


def _validate_trl_args(c: TrainConfig) -> None:
    """trainer_args / model_args: names of the right dataclass, string values typed as TrlParser would."""
    if not c.trainer_args and not c.model_args:
        return
    for old, new in DEPRECATED_TRAINER_FIELDS.items():
        if old in c.trainer_args:
            if new in c.trainer_args:
                raise ConfigError(f"config key '{c.key('trainer_args')}.{old}': deprecated alias of {new!r}, "
                                  "which is also given; keep one")
            c.trainer_args[new] = c.trainer_args.pop(old)
    actions = {a.dest: a for a in config_parser(c.mode)._actions}
    for group, allowed, owner in (("trainer_args", _trainer_fields(c.mode), trainer_arguments_class(c.mode).__name__),
                                  ("model_args", _model_fields(), "ModelConfig")):
        values = getattr(c, group)
        for name in list(values):
            _check_trl_name(name, group, allowed, owner)
            values[name] = _typed(c.__dict__.get("_spelled", {}).get(name, name), values[name],
                                  actions.get(name))


def _check_trl_name(name: str, group: str, allowed: frozenset[str], owner: str) -> None:
    if name in ALIASES or name in FIELDS:
        raise ConfigError(f"config key {name!r}: a config key of its own; write it at the top level")
    if name in RESERVED_TRAINER_FIELDS and group == "trainer_args":
        raise ConfigError(f"config key {name!r}: not used by adaptiverl; {RESERVED_TRAINER_FIELDS[name]}")
    if name not in allowed:
        hint = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
        raise ConfigError(f"config key {name!r}: not a field of {owner}."
                          + (f" Did you mean {hint[0]!r}?" if hint else ""))


def _typed(key: str, value: Any, action: argparse.Action | None) -> Any:
    """A string value converted with the parser's own type for the field (what TrlParser does)."""
    if action is None or not isinstance(value, str) or action.type in (None, str):
        converted = value
    elif value.strip().lower() in ("none", "null"):
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


def _validate_rewards(c: TrainConfig) -> None:
    """Import ``reward_modules``, then build the composite once: spec errors (unknown type or key,
    bad weight, missing model folder) surface here, naming the component, before any model loads.
    Building loads no model."""
    from adaptiverl.rewards import RewardSpecError, build_rewards
    from adaptiverl.rewards.registry import import_reward_module

    for module in c.reward_modules:
        try:
            import_reward_module(module)
        except RewardSpecError as exc:
            raise ConfigError(f"config key {c.key('reward_modules')!r}: {exc}") from None
    try:
        build_rewards(c.rewards)
    except RewardSpecError as exc:
        raise ConfigError(f"config key {c.key('rewards')!r}: {exc}") from exc


def _torch_optimizer_names() -> list[str]:
    import torch

    return [n for n in dir(torch.optim)
            if isinstance(getattr(torch.optim, n), type)
            and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != "Optimizer"]


def _validate_optim(c: TrainConfig, fail) -> None:
    name = c.optimizer
    _validate_betas(c)
    if not name.startswith("torch.") and name.lower() in (*ONLINE_OPTIMIZERS, "enhanced_sgd"):
        c.optimizer = name.lower()
        if c.adaptive_args:
            fail("adaptive_args", f"only applies when {c.key('optimizer')} names a torch optimizer, "
                                  f"not {c.optimizer!r}")
        return
    torch_names = _torch_optimizer_names()
    matches = [n for n in torch_names if n.lower() == name.removeprefix("torch.").lower()]
    if not matches:
        valid = [*ONLINE_OPTIMIZERS, "enhanced_sgd", *torch_names]
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        fail("optimizer", f"unknown optimizer.{hint} Valid: {', '.join(valid)} "
                          "(prefix a torch name with 'torch.' to pick torch's own SGD/RMSprop/AdamW)")
    if matches[0] in UNSUPPORTED_TORCH_OPTIMIZERS:
        fail("optimizer", f"torch.optim.{matches[0]} cannot train here: "
                          f"{UNSUPPORTED_TORCH_OPTIMIZERS[matches[0]]}")
    # torch's SGD / RMSprop / AdamW keep their prefix: bare, those names mean the Online ones.
    c.optimizer = ("torch." if matches[0].lower() in ONLINE_OPTIMIZERS else "") + matches[0]
    # A torch optimizer adapts only through the rules named: none named is the plain optimizer,
    # written out so the resolved config says so (AdaptiveOptimizer's own default is a rule).
    if not any(k in c.adaptive_args for k in RULE_KEYS):
        c.adaptive_args = {**c.adaptive_args, "lr_rule": None}


def _validate_betas(c: TrainConfig) -> None:
    """``betas`` in optimizer_args: two numbers in [0, 1) (torch checks only at the first step)."""
    if "betas" not in c.optimizer_args:
        return
    betas = c.optimizer_args["betas"]
    ok = (isinstance(betas, list | tuple) and len(betas) == 2
          and all(isinstance(b, int | float) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas))
    if not ok:
        raise ConfigError(f"config key {c.key('optimizer_args')!r}: betas = {betas!r} must be two numbers "
                          "in [0, 1), e.g. [0.9, 0.999]")


def _check_data_file(name: str, key: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"config key {key!r}: file not found: {path.resolve()}")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise ConfigError(f"config key {key!r} = {name!r}: unsupported file type {path.suffix!r}; "
                          f"use one of {', '.join(DATA_SUFFIXES)}")
    return path.resolve()


def check_machine(c: TrainConfig) -> None:
    """Fail early, with the key's name, if this machine cannot do what the config asks.

    Precision and quantization need the right hardware; plotting and the TensorBoard / W&B
    loggers need their packages.
    """
    import importlib.util

    if c.plot and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError(f"config key {c.key('plot')!r} = true needs matplotlib: pip install 'adaptiverl[plot]' "
                          "or set it to false")
    for logger, package, extra in (("tensorboard", "tensorboard", "logging"), ("wandb", "wandb", "logging")):
        if logger in (r.lower() for r in c.report_to) and importlib.util.find_spec(package) is None:
            raise ConfigError(f"config key {c.key('report_to')!r} lists {logger!r} but {package} is not "
                              f"installed: pip install 'adaptiverl[{extra}]' or remove it from the list")
    _check_precision(c)


def _check_precision(c: TrainConfig) -> None:
    import torch

    cuda = torch.cuda.is_available()
    if c.fp16 and not cuda:
        raise ConfigError(f"config key {c.key('fp16')!r} = true: float16 mixed precision needs a CUDA GPU and "
                          "none is available here; set it to false (or bf16 to true, which runs on CPU)")
    if c.bf16 and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"config key {c.key('bf16')!r} = true: this GPU ({torch.cuda.get_device_name()}) "
                          "does not support bfloat16; use fp16 instead")
    for name in ("load_in_4bit", "load_in_8bit"):
        if not getattr(c, name):
            continue
        if not cuda:
            raise ConfigError(f"config key {c.key(name)!r} = true: bitsandbytes quantization needs a CUDA GPU "
                              "and none is available here; set it to false")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(f"config key {c.key(name)!r} = true needs bitsandbytes: "
                              "pip install 'adaptiverl[quant]'") from None
