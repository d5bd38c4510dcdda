"""Training and evaluation data, the way ``trl sft`` / ``trl grpo`` take it, checked before any model loads.

Two sources (exactly one per config):

* ``train_file`` (the seed's ``TRAIN_FILE``): one JSON, JSONL, CSV or Parquet file, no eval split;
* ``dataset_name`` with ``dataset_config``, ``dataset_train_split`` and ``dataset_test_split``
  (TRL's ``ScriptArguments``): a local folder of data files named by split (``train.jsonl``,
  ``test.jsonl``; ``datasets`` infers the splits from the names), a folder written by
  ``save_to_disk``, one data file, or a hub dataset where a hub is reachable.

The eval split is loaded when ``eval_strategy`` is not ``"no"``, as in TRL's scripts.
:func:`load_splits` checks what each mode's trainer reads, with one-line errors naming the key:
text files must be UTF-8; ``rl`` / ``rloo`` need a ``prompt`` column of text or chat messages;
``sft`` needs the ``dataset_text_field`` (``text``), ``messages``, or ``prompt`` + ``completion``
(text or messages), as TRL's ``SFTTrainer`` does; no cell of those columns may be empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptiverl.trainer.config import DATA_SUFFIXES, ConfigError, TrainConfig

TEXT_SUFFIXES = (".json", ".jsonl", ".csv")
DISK_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")  # written by save_to_disk


def source_key(c: TrainConfig) -> str:
    """The config key the data came from, with its value, for error messages."""
    if c.train_file is not None:
        return f"config key {c.key('train_file')!r} = {c.train_file!r}"
    return f"config key 'dataset_name' = {c.dataset_name!r}"


def describe(c: TrainConfig) -> str:
    """A short name of the training data for the model card."""
    if c.train_file is not None:
        return Path(c.train_file).name
    return f"{c.dataset_name}" + (f" ({c.dataset_config})" if c.dataset_config else "") + \
        f", split {c.dataset_train_split!r}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" + ("..." if len(text) > 300 else "")


def check_utf8(path: Path, where: str) -> None:
    """A JSON/JSONL/CSV file must decode as UTF-8 (read in 1 MiB pieces)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise ConfigError(f"{where}: {path.name} is not UTF-8 text (byte {offset + err.start}); "
                                  "save it as UTF-8") from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path.name} is not UTF-8 text (it ends inside a character)") from None


def _read_file(path: Path, where: str):
    from datasets import load_dataset

    builder = DATA_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise ConfigError(f"{where}: unsupported file type {path.suffix!r}; use one of {', '.join(DATA_SUFFIXES)}")
    if path.suffix.lower() in TEXT_SUFFIXES:
        check_utf8(path, where)
    try:
        return load_dataset(builder, data_files=str(path))
    except Exception as err:  # a malformed file: datasets and pyarrow raise many kinds
        raise ConfigError(f"{where}: cannot be read as {builder} ({_one_line(err)})") from None


def _read_named(c: TrainConfig, where: str):
    from datasets import load_dataset, load_from_disk

    path = Path(c.dataset_name).expanduser()
    if path.is_file():
        return _read_file(path, where)
    try:
        if path.is_dir():
            for data_file in (p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES
                              and p.name not in DISK_MARKERS):
                check_utf8(data_file, where)
            if any((path / marker).is_file() for marker in DISK_MARKERS):
                return load_from_disk(str(path))
        return load_dataset(str(path) if path.is_dir() else c.dataset_name, name=c.dataset_config)
    except ConfigError:
        raise
    except Exception as err:  # not found, offline, a bad config name: datasets raises many kinds
        hint = "" if path.exists() else " (not a local folder or file; as a hub name it needs a reachable hub)"
        raise ConfigError(f"{where}: cannot be loaded{hint}: {_one_line(err)}") from None


def _split(splits, name: str, where: str, key: str):
    from datasets import Dataset

    if isinstance(splits, Dataset):  # load_from_disk of a single Dataset: it is the train split
        splits = {"train": splits}
    if name not in splits:
        raise ConfigError(f"{where}: no split {name!r} ({key}); it has {sorted(splits)}")
    return splits[name]


def load_splits(c: TrainConfig) -> tuple[Any, Any | None]:
    """``(train, eval or None)``, read and checked for the mode; nothing is tokenized."""
    where = source_key(c)
    if c.train_file is not None:
        splits = _read_file(Path(c.train_file), where)
    else:
        splits = _read_named(c, where)
    train = _split(splits, c.dataset_train_split, where, "dataset_train_split")
    check_columns(c, train, where, c.dataset_train_split)
    evaluate = str(c.trainer_args.get("eval_strategy", "no")).lower() != "no"
    if not evaluate:
        return train, None
    if c.train_file is not None:  # config validation refuses this; a direct call may not have run it
        raise ConfigError("config key 'eval_strategy': there is no eval data; use dataset_name with a test split")
    test = _split(splits, c.dataset_test_split, f"{where} (eval_strategy needs eval data)", "dataset_test_split")
    check_columns(c, test, where, c.dataset_test_split)
    return train, test


# ---- columns ---------------------------------------------------------------------------------------

def _is_text(feature: Any) -> bool:
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _is_messages(feature: Any) -> bool:
    inner = getattr(feature, "feature", None)
    return isinstance(inner, dict) and "role" in inner and "content" in inner


def _kind(feature: Any) -> str:
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return f"lists of {_kind(inner) if not isinstance(inner, dict) else 'objects ' + str(sorted(inner))}"
    return getattr(feature, "dtype", type(feature).__name__)


def _check_column(dataset, column: str, where: str, split: str) -> None:
    feature = dataset.features[column]
    if not (_is_text(feature) or _is_messages(feature)):
        raise ConfigError(f"{where}: column {column!r} (split {split!r}) holds {_kind(feature)}, not text or "
                          "chat messages ([{\"role\": ..., \"content\": ...}])")
    nulls = dataset.data.column(column).null_count
    if nulls:
        first = next(i for i, v in enumerate(dataset[column]) if v is None)
        raise ConfigError(f"{where}: column {column!r} (split {split!r}) is empty (null) in {nulls} row(s), "
                          f"the first is row {first}")


def sft_columns(c: TrainConfig, columns: list[str]) -> list[str] | None:
    """The columns SFTTrainer trains on, in its order of preference, or None if none fit."""
    text_field = c.trainer_args.get("dataset_text_field", "text")
    for wanted in ([text_field], ["messages"], ["prompt", "completion"]):
        if all(col in columns for col in wanted):
            return wanted
    return None


def check_columns(c: TrainConfig, dataset, where: str, split: str) -> None:
    """The mode's columns exist, hold text or chat messages, and no cell is empty."""
    columns = list(dataset.column_names)
    if c.mode == "sft":
        wanted = sft_columns(c, columns)
        need = (f"a {c.trainer_args.get('dataset_text_field', 'text')!r} column, 'messages', "
                "or 'prompt' + 'completion'")
    else:
        wanted = ["prompt"] if "prompt" in columns else None
        need = "a 'prompt' column"
    if wanted is None:
        raise ConfigError(f"{where}: MODE {c.mode!r} needs {need}; split {split!r} has {columns}")
    if len(dataset) == 0:
        raise ConfigError(f"{where}: split {split!r} has no rows")
    for column in wanted:
        _check_column(dataset, column, where, split)


# ---- preparation for the trainer ---------------------------------------------------------------------

def prepare(c: TrainConfig, dataset, tokenizer):
    """rl/rloo: text prompts cut from the left to fit ``max_length - max_completion_length``
    tokens; sft: unchanged (SFTTrainer tokenizes, truncates, packs and masks as its config says)."""
    if dataset is None or c.mode == "sft" or not _is_text(dataset.features["prompt"]):
        return dataset
    max_prompt = c.max_length - c.max_completion_length

    def truncate(row):
        ids = tokenizer(row["prompt"])["input_ids"]
        if len(ids) > max_prompt:
            row["prompt"] = tokenizer.decode(ids[-max_prompt:])
        return row

    return dataset.map(truncate)


def load_prepared(c: TrainConfig, tokenizer) -> tuple[Any, Any | None]:
    """:func:`load_splits`, then :func:`prepare` on each split."""
    train, test = load_splits(c)
    return prepare(c, train, tokenizer), prepare(c, test, tokenizer)
