"""The reward-function contract shared by every component.

TRL 1.16 (``GRPOTrainer._calculate_rewards``, ``RLOOTrainer``) calls a reward function as::

    fn(prompts=[...], completions=[...], completion_ids=[[...], ...],
       **dataset_columns, trainer_state=TrainerState, log_extra=fn, log_metric=fn)

and expects ``list[float | None]`` of the batch's length; ``None`` ("no opinion") becomes NaN
and is skipped by TRL's ``nansum`` over reward functions. ``async def __call__`` callables are
gathered on TRL's own event loop. The metric name is ``rewards/<__name__>/mean``, so a
parameterised reward is an object with an instance attribute ``__name__``.

Prompts and completions are plain strings or conversational (lists of ``{"role", "content"}``
messages, ``content`` possibly a list of ``{"type": "text", "text": ...}`` parts).
:class:`RewardFunction` turns both into text before a component's :meth:`RewardFunction.score`
sees them, and checks what it returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Keyword arguments TRL adds that are not dataset columns.
TRL_CONTROL_KWARGS = frozenset({"trainer_state", "log_extra", "log_metric", "environments"})


def message_text(content: Any) -> str:
    """Text of one message ``content``: a string, ``None`` (a tool-call turn: no text), or a list of
    parts (strings, or dicts of which the ``text`` counts: image parts add nothing)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for k, part in enumerate(content):
            text = part.get("text", "") if isinstance(part, dict) else part
            if not isinstance(text, str):
                what = f"content part {k}" + (" text" if isinstance(part, dict) else "")
                raise TypeError(f"{what} is {type(text).__name__}, not a string")
            texts.append(text)
        return "".join(texts)
    raise TypeError(f"content is {type(content).__name__}, not a string, None or a list of parts")


def _message(message: Any, where: str) -> str:
    """The text of a message dict; a TypeError starting with ``where`` for anything else."""
    if not isinstance(message, dict):
        raise TypeError(f"{where} is {type(message).__name__}, not a dict with 'role' and 'content'")
    if "content" not in message:
        raise TypeError(f"{where} without 'content' (keys {sorted(map(str, message))})")
    try:
        return message_text(message["content"])
    except TypeError as exc:
        raise TypeError(f"{where}: {exc}") from None


def _conversation(messages: Any, where: str, default_role: str) -> list[tuple[str, str]]:
    """``(role, text)`` of each message of a list of messages; a TypeError naming ``where``, the
    message and the bad type otherwise (a string, bytes and other sequences are no conversation)."""
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"{where} is {type(messages).__name__}, not a string or a list of messages")
    out = []
    for k, message in enumerate(messages):
        text = _message(message, f"{where}: message {k}")
        out.append((str(message.get("role", default_role)), text))
    return out


def completion_text(completion: Any, where: str = "completion") -> str:
    """The generated text of one completion, plain (``str``) or conversational (list of messages,
    or one message dict).

    For a conversation, the contents of its assistant messages are joined (a completion is normally
    one assistant message; tool-calling turns add more). Anything else (``bytes``, a nested list, a
    dict without ``content``) is a TypeError naming ``where`` and the bad type, never empty text.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _message(completion, f"{where}: message")
    return "\n".join(text for role, text in _conversation(completion, where, "assistant") if role == "assistant")


def prompt_text(prompt: Any, where: str = "prompt") -> str:
    """The text of one prompt: a string as is; a conversation as ``role: content`` lines."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{role}: {text}" for role, text in _conversation(prompt, where, "user"))


class MissingColumnError(KeyError):
    """A reward needs a dataset column the batch does not have (a configuration error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def dataset_column(kwargs: dict[str, Any], key: str, n: int, owner: str) -> list[Any]:
    """The dataset column ``key`` that TRL passed as a keyword, checked to hold ``n`` values."""
    if key not in kwargs:
        present = sorted(k for k in kwargs if k not in TRL_CONTROL_KWARGS and k != "completion_ids")
        raise MissingColumnError(f"reward {owner!r} needs the dataset column {key!r}, but the batch has only "
                       f"{present}; add the column to the dataset or change the reward's column name")
    values = list(kwargs[key])
    if len(values) != n:
        raise ValueError(f"reward {owner!r}: column {key!r} has {len(values)} values for {n} completions")
    return values


def checked_rewards(name: str, values: Any, n: int, *, allow_nonfinite: bool = False) -> list[float | None]:
    """``values`` as ``list[float | None]`` of length ``n``; a clear error otherwise."""
    try:
        values = list(values)
    except TypeError:
        raise TypeError(f"reward {name!r} returned {type(values).__name__}, expected a list of floats") from None
    if len(values) != n:
        raise ValueError(f"reward {name!r} returned {len(values)} values for {n} completions "
                         "(it must return exactly one value, or None, per completion)")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, (str, bytes)):
            raise TypeError(f"reward {name!r} returned the {type(v).__name__} {v[:40]!r} for sample {i}; "
                            "expected a float or None (convert it with float() in the reward)")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"reward {name!r} returned {v!r} for sample {i}; expected a float or None") from None
        if not allow_nonfinite and not math.isfinite(x):
            raise ValueError(f"reward {name!r} returned non-finite {x} for sample {i}; "
                             "return None for 'no opinion' instead")
        out.append(x)
    return out


def default_name(obj: Any) -> str:
    """A callable's display name the way TRL's ``get_callable_name`` computes it."""
    import functools

    while isinstance(obj, functools.partial):
        obj = obj.func
    return getattr(obj, "__name__", type(obj).__name__)


class RewardFunction:
    """Base of the parameterised rewards: a picklable callable object with a stable ``__name__``.

    Subclasses implement :meth:`score` on extracted texts. ``__call__`` follows TRL's calling
    convention, extracts text from plain or conversational inputs and validates the result.
    """

    default_name: str = "reward"

    def __init__(self, name: str | None = None) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.__name__ = name or self.default_name

    def score(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        raise NotImplementedError

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] | None = None,
                 completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float | None]:
        texts, prompt_texts = self._texts(prompts, completions)
        values = self.score(prompt_texts, texts, completion_ids=completion_ids, **kwargs)
        return checked_rewards(self.__name__, values, len(texts))

    def _texts(self, prompts: Sequence[Any] | None,
               completions: Sequence[Any] | None) -> tuple[list[str], list[str]]:
        if completions is None:
            raise TypeError(f"reward {self.__name__!r} needs completions=")
        try:
            texts = [completion_text(c, f"completion {i}") for i, c in enumerate(completions)]
            prompt_texts = [""] * len(texts) if prompts is None else \
                [prompt_text(p, f"prompt {i}") for i, p in enumerate(prompts)]
        except TypeError as exc:
            raise TypeError(f"reward {self.__name__!r}: {exc}") from None
        if prompts is not None and len(prompt_texts) != len(texts):
            raise ValueError(f"reward {self.__name__!r}: {len(prompt_texts)} prompts for {len(texts)} completions")
        return texts, prompt_texts

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"


class AsyncRewardFunction(RewardFunction):
    """A reward whose scoring is a coroutine (remote calls); TRL gathers it on its event loop."""

    async def ascore(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        raise NotImplementedError

    async def __call__(self, prompts: Sequence[Any] | None = None,  # type: ignore[override]
                       completions: Sequence[Any] | None = None,
                       completion_ids: Sequence[Sequence[int]] | None = None,
                       **kwargs: Any) -> list[float | None]:
        texts, prompt_texts = self._texts(prompts, completions)
        values = await self.ascore(prompt_texts, texts, completion_ids=completion_ids, **kwargs)
        return checked_rewards(self.__name__, values, len(texts))


def check_model_ref(model: str, key: str = "model") -> str:
    """``model`` if it names a hub model or an existing local folder; a clear error for a missing
    local path (one that starts with ``/``, ``./``, ``../`` or ``~``) or a local folder without
    ``config.json``, raised when the spec is built rather than at the first reward call."""
    import os

    if not isinstance(model, str) or not model:
        raise ValueError(f"{key} must be a model name or path, got {model!r}")
    path = os.path.expanduser(model)
    if model.startswith(("/", "./", "../", "~")) and not os.path.exists(path):
        raise FileNotFoundError(f"{key}: no such model folder {model!r}")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{key}: the folder {model!r} has no config.json "
                                "(not a model saved with save_pretrained)")
    return model


def pick_device(device: str | None) -> str:
    """``device`` if given, else ``"cuda"`` when available, else ``"cpu"``."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
