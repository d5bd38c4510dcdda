"""Rule-based text rewards: regex, substring and length.

Regex safety: user patterns run on the ``regex`` package (a backtracking engine compatible with
``re``) with its per-match ``timeout=``. A catastrophic pattern such as ``(a|aa)+$`` on
``"a" * 40 + "!"`` needs ~2**40 steps under backtracking. ``timeout`` bounds the whole call (the
batch), shared fairly: each match may use the time left divided by the samples left (at least
:data:`MIN_MATCH_SECONDS`), so a catastrophic sample is abandoned after its share and cannot starve
the others (a cheap match takes microseconds and hands its unused share on). A call therefore
takes at most about ``timeout + len(completions) * MIN_MATCH_SECONDS``. An abandoned sample gets ``on_timeout`` (``None`` by
default, i.e. "no opinion"). We chose a time limit over a non-backtracking engine (RE2) because it keeps the
full ``re`` syntax (look-arounds, back-references) that format rewards use.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import regex

from adaptiverl.rewards.base import RewardFunction

#: The least time a match is given, even when the call's budget is spent (the engine reads its
#: clock from the first step: a benign match under a 1 us limit can time out).
MIN_MATCH_SECONDS = 1e-3
_FLAG_LETTERS = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL, "x": regex.VERBOSE}


class RegexReward(RewardFunction):
    """``score_match`` if the pattern is found (``mode="search"``) or matches the whole completion
    (``mode="fullmatch"``), else ``score_miss``. With ``count=True`` the reward is
    ``score_match * min(#matches, max_count)`` (``score_miss`` for none).

    One call takes at most about ``timeout`` seconds, whatever the batch (module docstring); a
    timed-out sample scores ``on_timeout`` (``"none"`` -> ``None``, ``"miss"`` -> ``score_miss``,
    ``"raise"`` -> ``TimeoutError``).
    """

    default_name = "regex"

    def __init__(self, pattern: str, mode: str = "search", score_match: float = 1.0,
                 score_miss: float = 0.0, count: bool = False, max_count: int | None = None,
                 flags: str = "", timeout: float = 1.0, on_timeout: str = "none",
                 name: str | None = None) -> None:
        super().__init__(name)
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be a string, got {type(pattern).__name__}")
        if mode not in ("search", "fullmatch"):
            raise ValueError(f"mode must be 'search' or 'fullmatch', got {mode!r}")
        if on_timeout not in ("none", "miss", "raise"):
            raise ValueError(f"on_timeout must be 'none', 'miss' or 'raise', got {on_timeout!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_count is not None and max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        bad = set(flags) - set(_FLAG_LETTERS)
        if bad:
            raise ValueError(f"flags: unknown letter(s) {sorted(bad)}; use any of 'imsx'")
        self.pattern, self.mode, self.flags = pattern, mode, flags
        self.score_match, self.score_miss = float(score_match), float(score_miss)
        self.count, self.max_count = count, max_count
        self.timeout, self.on_timeout = float(timeout), on_timeout
        self.timeouts = 0
        self._compile()

    def _compile(self) -> None:
        flag_bits = 0
        for letter in self.flags:
            flag_bits |= _FLAG_LETTERS[letter]
        try:
            self._regex = regex.compile(self.pattern, flag_bits)
        except regex.error as exc:
            raise ValueError(f"pattern {self.pattern!r} does not compile: {exc}") from None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_regex", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._compile()

    def _one(self, text: str, limit: float) -> float:
        if self.count:
            n = sum(1 for _ in self._regex.finditer(text, timeout=limit))
            if self.max_count is not None:
                n = min(n, self.max_count)
            return self.score_match * n if n else self.score_miss
        matcher = self._regex.search if self.mode == "search" else self._regex.fullmatch
        return self.score_match if matcher(text, timeout=limit) else self.score_miss

    def score(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        out: list[float | None] = []
        deadline = time.monotonic() + self.timeout
        for i, text in enumerate(completions):
            try:
                share = (deadline - time.monotonic()) / (len(completions) - i)
                out.append(self._one(text, max(share, MIN_MATCH_SECONDS)))
            except TimeoutError:
                self.timeouts += 1
                if self.on_timeout == "raise":
                    raise TimeoutError(f"reward {self.__name__!r}: pattern {self.pattern!r} exceeded "
                                       f"its share of timeout={self.timeout:g}s on sample {i}") from None
                if self.timeouts == 1:
                    warnings.warn(f"reward {self.__name__!r}: pattern {self.pattern!r} exceeded "
                                  f"its share of timeout={self.timeout:g}s on sample {i} (catastrophic "
                                  "backtracking?); such "
                                  "samples score on_timeout and are counted in `.timeouts`",
                                  RuntimeWarning, stacklevel=2)
                out.append(None if self.on_timeout == "none" else self.score_miss)
        return out


class SubstringReward(RewardFunction):
    """Substring presence: ``mode="any"`` (at least one), ``"all"`` (every one) give
    ``score_match`` / ``score_miss``; ``mode="fraction"`` gives ``score_match * (found / total)``."""

    default_name = "substring"

    def __init__(self, substrings: str | Sequence[str], mode: str = "any", case_sensitive: bool = True,
                 score_match: float = 1.0, score_miss: float = 0.0, name: str | None = None) -> None:
        super().__init__(name)
        subs = [substrings] if isinstance(substrings, str) else list(substrings)
        if not subs or not all(isinstance(s, str) and s for s in subs):
            raise ValueError(f"substrings must be one or more non-empty strings, got {substrings!r}")
        if mode not in ("any", "all", "fraction"):
            raise ValueError(f"mode must be 'any', 'all' or 'fraction', got {mode!r}")
        self.substrings = subs if case_sensitive else [s.lower() for s in subs]
        self.mode, self.case_sensitive = mode, case_sensitive
        self.score_match, self.score_miss = float(score_match), float(score_miss)

    def score(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        out: list[float | None] = []
        for text in completions:
            hay = text if self.case_sensitive else text.lower()
            found = sum(s in hay for s in self.substrings)
            if self.mode == "fraction":
                out.append(self.score_match * found / len(self.substrings))
            elif found == len(self.substrings) or (self.mode == "any" and found):
                out.append(self.score_match)
            else:
                out.append(self.score_miss)
        return out


class LengthReward(RewardFunction):
    """Reward for a completion length ``L`` in ``unit`` (``"chars"``, ``"words"`` or ``"tokens"``).

    The distance ``d`` is ``|L - target|`` with a ``target``, otherwise how far ``L`` lies outside
    ``[min_length, max_length]`` (0 inside). The reward is ``exp(-d / softness)`` in (0, 1], 1 when
    the length is right (a soft penalty; ``softness`` defaults to a quarter of the target or bound),
    or with ``hard=True`` simply 1 if ``d == 0`` else 0.

    Tokens are counted with ``tokenizer`` (name or path) if given, else from the ``completion_ids``
    that TRL passes.
    """

    default_name = "length"

    def __init__(self, target: int | None = None, min_length: int | None = None,
                 max_length: int | None = None, unit: str = "chars", softness: float | None = None,
                 hard: bool = False, tokenizer: str | None = None, name: str | None = None) -> None:
        super().__init__(name)
        if unit not in ("chars", "words", "tokens"):
            raise ValueError(f"unit must be 'chars', 'words' or 'tokens', got {unit!r}")
        if target is None and min_length is None and max_length is None:
            raise ValueError("give a target, a min_length or a max_length")
        if target is not None and (min_length is not None or max_length is not None):
            raise ValueError("give either target or min_length/max_length, not both")
        for key, val in (("target", target), ("min_length", min_length), ("max_length", max_length)):
            if val is not None and (not isinstance(val, int) or val < 0):
                raise ValueError(f"{key} must be a non-negative integer, got {val!r}")
        if min_length is not None and max_length is not None and min_length > max_length:
            raise ValueError(f"min_length {min_length} > max_length {max_length}")
        scale_ref = target if target is not None else (max_length if max_length is not None else min_length)
        self.softness = float(softness) if softness is not None else max(1.0, 0.25 * float(scale_ref or 0))
        if not self.softness > 0:
            raise ValueError(f"softness must be > 0, got {softness}")
        self.target, self.min_length, self.max_length = target, min_length, max_length
        self.unit, self.hard, self.tokenizer = unit, hard, tokenizer
        self._tok: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    def _lengths(self, completions: list[str], completion_ids: Any) -> list[int]:
        if self.unit == "chars":
            return [len(c) for c in completions]
        if self.unit == "words":
            return [len(c.split()) for c in completions]
        if self.tokenizer is not None:
            if self._tok is None:
                from transformers import AutoTokenizer

                self._tok = AutoTokenizer.from_pretrained(self.tokenizer)
            return [len(ids) for ids in self._tok(completions, add_special_tokens=False)["input_ids"]]
        if completion_ids is None:
            raise ValueError(f"reward {self.__name__!r}: unit='tokens' needs completion_ids (TRL passes "
                             "them) or a tokenizer= name/path")
        return [len(ids) for ids in completion_ids]

    def distance(self, length: int) -> int:
        if self.target is not None:
            return abs(length - self.target)
        if self.min_length is not None and length < self.min_length:
            return self.min_length - length
        if self.max_length is not None and length > self.max_length:
            return length - self.max_length
        return 0

    def score(self, prompts: list[str], completions: list[str], completion_ids: Any = None,
              **kwargs: Any) -> list[float | None]:
        out: list[float | None] = []
        for length in self._lengths(completions, completion_ids):
            d = self.distance(length)
            out.append((1.0 if d == 0 else 0.0) if self.hard else math.exp(-d / self.softness))
        return out
