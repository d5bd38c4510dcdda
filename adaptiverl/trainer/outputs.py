"""OUTPUT_DIR and resuming: what a run may write there, which checkpoint it continues, when it says no.

:func:`train` (``adaptiverl.trainer.run``) calls :func:`check_output_dir` and :func:`resume_checkpoint`
in its preflight, before anything loads or is written:

* a symlink among OUTPUT_DIR's entries or a checkpoint's files is refused (the Trainer would write
  through it); adaptiverl's own files go through :mod:`adaptiverl._files` anyway;
* OUTPUT_DIR must be writable: one line naming it, not a traceback at the first save;
* a previous run in OUTPUT_DIR is never silently replaced: ``RESUME`` continues it, and
  ``OVERWRITE_OUTPUT_DIR`` starts over (its ``checkpoint-*`` folders are removed first);
* the checkpoint resumed from is complete and untorn (:func:`checkpoint_problem`), and was trained
  with the same model, mode, optimizer class, adapters and learning rate (:func:`check_resume_matches`);
* a run already at its last step is not trained further (:func:`finished_step`).

During training, :class:`SaveConfigCallback` marks each finished checkpoint, :class:`ReplaySamplerEpochs`
puts TRL's prompt sampler where an uninterrupted run has it, :func:`redact_pickled_secrets` keeps
``*_token`` arguments out of ``training_args.bin``, and :func:`known_noise_quiet` drops two
transformers false alarms (tied weights "missing" from a checkpoint, the padding heuristic).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import copyreg
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from adaptiverl._files import write_text
from adaptiverl.trainer.config import ConfigError, TrainConfig

CONFIG_FILE = "train_config.json"
STATE_FILE = "trainer_state.json"
# What HF's Trainer needs to resume (weights in one of their forms) and, written last by
# SaveConfigCallback, our resolved config: a folder missing any is a save cut short.
CHECKPOINT_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                      "adapter_model.safetensors", "pytorch_model_fsdp_*", "global_step*")  # FSDP, DeepSpeed
CHECKPOINT_FILES = (STATE_FILE, CONFIG_FILE)
# Serialized files a checkpoint holds, checked for truncation (a copy or power loss cut short).
CHECKED_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# Settings a checkpoint's state is bound to: resuming with another value cannot load or would mislead.
RESUME_BOUND_KEYS = {
    "MODEL": "its weights are that model's",
    "MODE": "its trainer state is that mode's",
    "OPTIM": "its optimizer state is that class's",
    "FULLTUNE": "its weights are full weights or LoRA adapters accordingly",
    "LORA_R": "its adapters have that rank",
    "LORA_TARGET_MODULES": "its adapters sit on those modules",
    "LRATE": "its optimizer and scheduler continue from that learning rate (a new LRATE would reach the "
             "optimizer but not the scheduler, which logs and applies the checkpoint's)",
}


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.removeprefix("checkpoint-"))


def checkpoint_folders(out: Path) -> list[Path]:
    """``checkpoint-<step>`` folders of ``out``, newest first."""
    if not out.is_dir():
        return []
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    return sorted(found, key=checkpoint_step, reverse=True)


def torn_file(path: Path) -> str | None:
    """Why ``path`` is cut short, or None: a safetensors file shorter than its header says, or a
    torch zip archive (``torch.save``'s format) whose central directory is missing or broken."""
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with path.open("rb") as fh:
        head = fh.read(8)
        if path.suffix == ".safetensors":
            if len(head) < 8:
                return "shorter than a safetensors header"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return "shorter than its safetensors header says"
            try:
                header = json.loads(fh.read(length))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError):
                return "a broken safetensors header"
            return None if size >= 8 + length + end else f"{size} bytes of the {8 + length + end} its header says"
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format (older pickles are not checked)
        try:
            with zipfile.ZipFile(path) as archive:
                last = max((i.header_offset + i.compress_size for i in archive.infolist()), default=0)
        except (zipfile.BadZipFile, OSError, ValueError):
            return "a torn torch archive (no readable zip directory)"
        if last > size:
            return "a torn torch archive"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (a file missing or torn), or None when it is complete."""
    if not any(any(folder.glob(pattern)) for pattern in CHECKPOINT_WEIGHTS):
        return "no model weights"
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    try:
        json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return f"a torn {STATE_FILE}"
    for path in sorted(folder.iterdir()):
        if path.suffix in CHECKED_SUFFIXES and path.is_file():
            why = torn_file(path)
            if why is not None:
                return f"{path.name}: {why}"
    return None


def find_resume_checkpoint(output_dir: str | Path) -> Path:
    """The newest complete ``checkpoint-<step>`` in ``output_dir``; newer incomplete or torn ones are
    skipped with a warning naming each (a crash during a save, a power loss, a copy cut short)."""
    out = Path(output_dir)
    folders = checkpoint_folders(out)
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        warnings.warn(f"RESUME: skipping incomplete checkpoint {folder} ({problem}); it was probably "
                      "cut short by a crash during the save or an interrupted copy", UserWarning, stacklevel=2)
    found = f"only incomplete ones ({', '.join(p.name for p in folders)})" if folders else "no checkpoint-* folder"
    raise ConfigError(f"config key 'RESUME' = true: {found} in OUTPUT_DIR {out.resolve()}")


def resume_checkpoint(c: TrainConfig) -> Path | None:
    """The checkpoint this run continues: ``TRAINER_ARGS.resume_from_checkpoint`` (a folder, also
    looked for inside OUTPUT_DIR), else with ``RESUME`` the newest complete one in OUTPUT_DIR."""
    given = c.TRAINER_ARGS.get("resume_from_checkpoint")
    if given in (None, "", False):
        return find_resume_checkpoint(c.OUTPUT_DIR) if c.RESUME else None
    if given is True or str(given).lower() in ("true", "last", "latest"):
        return find_resume_checkpoint(c.OUTPUT_DIR)
    candidates = [Path(str(given)).expanduser(), Path(c.OUTPUT_DIR) / str(given)]
    folder = next((p for p in candidates if p.is_dir()), None)
    key = f"config key 'resume_from_checkpoint' = {given!r}"
    if folder is None:
        raise ConfigError(f"{key}: no such checkpoint folder ({candidates[0].resolve()})")
    if not any(any(folder.glob(pattern)) for pattern in CHECKPOINT_WEIGHTS) or not (folder / STATE_FILE).is_file():
        raise ConfigError(f"{key}: not a checkpoint folder (no model weights or {STATE_FILE})")
    problem = checkpoint_problem(folder)
    if problem is not None and not problem.startswith(f"no {CONFIG_FILE}"):  # a plain HF checkpoint is fine
        raise ConfigError(f"{key}: cannot resume from it ({problem})")
    return folder


def optimizer_class_name(optim: str) -> str:
    """The class ``OPTIM`` builds (``AdaptiveOptimizer(<torch class>)`` for a torch optimizer)."""
    from adaptiverl.trainer.run import ONLINE_CLASSES

    return ONLINE_CLASSES.get(optim, f"AdaptiveOptimizer({optim.removeprefix('torch.')})")


def check_resume_matches(c: TrainConfig, checkpoint: Path) -> None:
    """Refuse, in one line naming the key and both values, to resume a checkpoint trained with another
    MODEL, MODE, OPTIM, FULLTUNE, LORA_R, LORA_TARGET_MODULES or LRATE (see :data:`RESUME_BOUND_KEYS`)."""
    try:
        saved = json.loads((checkpoint / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return  # a checkpoint written without adaptiverl: nothing to compare with
    mine = c.to_public_dict()
    for key, why in RESUME_BOUND_KEYS.items():
        if key not in saved or saved[key] == mine[key]:
            continue
        if key in ("LORA_R", "LORA_TARGET_MODULES") and c.FULLTUNE:
            continue
        old, new = saved[key], mine[key]
        if key == "MODEL" and Path(str(old)).expanduser().resolve() == Path(new).expanduser().resolve():
            continue
        if key == "OPTIM":
            old, new = f"{old!r} ({optimizer_class_name(old)})", f"{new!r} ({optimizer_class_name(new)})"
        else:
            old, new = repr(old), repr(new)
        raise ConfigError(f"config key {key!r} = {new}: {checkpoint} was trained with {key} {old} and "
                          f"{why}; resume with {key} {old}, or start a fresh run in another OUTPUT_DIR")


def read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def finished_step(c: TrainConfig, checkpoint: Path) -> int | None:
    """The step a resumed run already reached when that is its last one (STEPS, or the checkpoint's
    own ``max_steps`` when training for EPOCHS), else None. The final ``trainer_state.json`` in
    OUTPUT_DIR counts too: a run that ended after its newest checkpoint is finished as well."""
    states = [read_state(checkpoint / STATE_FILE), read_state(Path(c.OUTPUT_DIR) / STATE_FILE)]
    reached = max(int(s.get("global_step", 0) or 0) for s in states)
    target = c.STEPS if c.STEPS > 0 else int(states[0].get("max_steps", 0) or 0)
    return reached if target > 0 and reached >= target else None


def previous_run(out: Path) -> str | None:
    """What in ``out`` shows an earlier run (its config, state or checkpoints), or None."""
    if not out.is_dir():
        return None
    state = read_state(out / STATE_FILE)
    if state.get("global_step"):
        return f"a finished run of {state['global_step']} steps"
    folders = checkpoint_folders(out)
    if folders:
        return f"an unfinished run with checkpoints up to {folders[0].name}"
    if (out / CONFIG_FILE).is_file():
        return f"a run's {CONFIG_FILE} (a run that stopped before its first checkpoint)"
    return None


def symlinked_outputs(out: Path) -> list[Path]:
    """Symlinks among ``out``'s entries and its checkpoints' files: the Trainer would write through them."""
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_symlink()]
    for folder in checkpoint_folders(out):
        found += [p for p in folder.iterdir() if p.is_symlink()]
    return sorted(found)


def check_output_dir(c: TrainConfig, resuming: bool) -> None:
    """OUTPUT_DIR: no symlinks to write through, no earlier run replaced unasked, and writable.

    With ``OVERWRITE_OUTPUT_DIR`` the earlier run's ``checkpoint-*`` folders and final
    ``trainer_state.json`` are removed (after every other check passed), so that a later RESUME
    cannot continue the old run under the new config. In a distributed launch only the main
    process (``RANK`` 0) judges and removes an earlier run: it writes ``train_config.json`` as soon
    as its checks pass, which another rank still in its checks must not take for an earlier run
    (a refusal on rank 0 ends the launch).
    """
    out = Path(c.OUTPUT_DIR).expanduser()
    links = symlinked_outputs(out)
    if links:
        shown = ", ".join(str(p.relative_to(out)) for p in links[:5]) + (" ..." if len(links) > 5 else "")
        raise ConfigError(f"config key 'OUTPUT_DIR' = {c.OUTPUT_DIR!r}: holds symlinks ({shown}); training "
                          "writes files there and would write through them: remove them or pick another OUTPUT_DIR")
    earlier = None if resuming or int(os.environ.get("RANK", "0")) != 0 else previous_run(out)
    if earlier is not None and not c.OVERWRITE_OUTPUT_DIR:
        raise ConfigError(f"config key 'OUTPUT_DIR' = {c.OUTPUT_DIR!r}: holds {earlier} ({out.resolve()}), "
                          "which a fresh run would replace: continue it with RESUME true, start over with "
                          "OVERWRITE_OUTPUT_DIR true (removes its checkpoints), or pick another OUTPUT_DIR")
    check_writable(c)
    if earlier is not None:
        for folder in checkpoint_folders(out):
            shutil.rmtree(folder)
        (out / STATE_FILE).unlink(missing_ok=True)


def check_writable(c: TrainConfig) -> None:
    """OUTPUT_DIR exists (created if missing) and a file can be written there, or one line naming it."""
    out = Path(c.OUTPUT_DIR).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ConfigError(f"config key 'OUTPUT_DIR' = {c.OUTPUT_DIR!r}: cannot write there "
                          f"({err.strerror or type(err).__name__}); pick a writable folder") from None


class SaveConfigCallback(TrainerCallback):
    """Copies the resolved config into every checkpoint folder, last: its presence marks a finished save."""

    def __init__(self, config: TrainConfig) -> None:
        self.config_dict = config.to_public_dict()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_text(folder / CONFIG_FILE, json.dumps(self.config_dict, indent=2) + "\n")


def _repeat_sampler(dataloader: Any) -> Any:
    """TRL's ``RepeatSampler`` behind ``dataloader`` (accelerate may wrap its batch sampler), or None."""
    from trl.trainer.utils import RepeatSampler

    stack = [dataloader]
    while stack:
        obj = stack.pop()
        if isinstance(obj, RepeatSampler):
            return obj
        stack += [getattr(obj, name) for name in ("sampler", "batch_sampler")
                  if getattr(obj, name, None) is not None and getattr(obj, name) is not obj]
    return None


class ReplaySamplerEpochs(TrainerCallback):
    """On resume, advance TRL's prompt sampler past the epochs already trained.

    GRPO's and RLOO's ``RepeatSampler`` shuffles with its own generator, one permutation per
    epoch, and has no ``set_epoch``: a run resumed in epoch k would draw epoch 1's prompt order
    again (the Trainer restores the global RNG states and skips the batches of epoch k, not the
    sampler's generator). Iterating it once per finished epoch, as the uninterrupted run did,
    gives the same prompts, hence with the restored RNG the same completions and parameters.
    """

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if state.global_step <= 0 or train_dataloader is None:
            return
        sampler = _repeat_sampler(train_dataloader)
        if sampler is None:
            return
        batches = len(train_dataloader)
        per_epoch = max(batches // args.gradient_accumulation_steps
                        + int(batches % args.gradient_accumulation_steps > 0), 1)  # as the Trainer counts
        for _ in range(state.global_step // per_epoch):
            for _ in sampler:
                pass


@functools.cache
def _redacting_class(base: type) -> type:
    """``base`` whose pickles carry ``"<HUB_TOKEN>"`` for every set ``*_token`` field; copies keep them."""

    def __reduce_ex__(self, protocol):
        state = {k: f"<{k.upper()}>" if k.endswith("_token") and v is not None else v for k, v in vars(self).items()}
        return copyreg._reconstructor, (base, object, None), state  # unpickles as plain ``base``

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(vars(self))
        return new

    def __deepcopy__(self, memo):
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(vars(self), memo))
        return new

    return type(base.__name__, (base,), {"__reduce_ex__": __reduce_ex__, "__copy__": __copy__,
                                         "__deepcopy__": __deepcopy__, "__module__": base.__module__,
                                         "__qualname__": base.__qualname__})


def redact_pickled_secrets(args: Any) -> Any:
    """Make ``args`` (the Trainer's arguments) pickle without its ``*_token`` values.

    The Trainer writes ``torch.save(args)`` as ``training_args.bin`` into OUTPUT_DIR and every
    checkpoint; that file then holds ``"<HUB_TOKEN>"``, as ``args.to_dict()`` (and
    ``train_config.json``) do, while the object in memory keeps the token for ``push_to_hub``.
    The unpickled object is the plain arguments class.
    """
    if any(k.endswith("_token") and v is not None for k, v in vars(args).items()):
        args.__class__ = _redacting_class(type(args))
    return args


_MISSING_KEYS = re.compile(r"There were missing keys in the checkpoint model loaded: (\[.*\])")
# transformers' padding heuristic, which fires on decode steps whose one new token is EOS when the
# pad token is EOS (GRPO / RLOO generation: TRL passes the attention mask, the decode step has none).
_PAD_IS_EOS_HINT = "You may ignore this warning if your `pad_token_id`"


def tied_parameter_names(model: Any) -> set[str]:
    """Names under which a parameter appears a second time (``lm_head.weight`` tied to the embedding)."""
    seen: set[int] = set()
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.add(id(param))
    return tied


class _KnownNoise(logging.Filter):
    """Drops two transformers warnings that say nothing about a train() run (see :func:`known_noise_quiet`)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("We strongly recommend passing in an `attention_mask`") and _PAD_IS_EOS_HINT in message:
            return False
        match = _MISSING_KEYS.search(message)
        if match is None:
            return True
        try:
            missing = set(ast.literal_eval(match.group(1)))
        except (ValueError, SyntaxError):
            return True
        tied = {n.removeprefix("module.") for n in tied_parameter_names(self.model)}
        return not missing <= tied | {"base_model.model." + n for n in tied}


@contextlib.contextmanager
def known_noise_quiet(model: Any) -> Iterator[None]:
    """Hide, while training ``model``, two transformers warnings that are false alarms here.

    * "missing keys in the checkpoint ... ['lm_head.weight']" on resume when every key named is a
      tied parameter: checkpoints store a tied weight once, and the Trainer's check compares with
      ``_keys_to_ignore_on_save``, which transformers 5 models leave empty. Any other missing key
      is still reported.
    * "We strongly recommend passing in an `attention_mask`" when the pad token is the EOS token
      (set so by :func:`~adaptiverl.trainer.run.load_model_and_tokenizer`): GPT-2's check looks at
      the first and last input id, and during generation each decode step's single input is the
      token just sampled, EOS for a finished completion. TRL and the SFT collator pass real masks.
    """
    quiet = _KnownNoise(model)
    loggers = [logging.getLogger(name) for name in ("transformers.trainer", "transformers.modeling_utils")]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
