"""LM-as-judge rewards (TRL 1.16 dropped its judges, so these are ours).

Two backends share the prompt templates and the reply parsing:

* :class:`LocalJudgeReward`: a local transformers causal LM. ``mode="yes_prob"`` scores
  ``P(yes) / (P(yes) + P(no))`` from the next-token distribution after the template, summing the
  probabilities of the first tokens of the ``yes_words`` / ``no_words`` variants (the
  "probability of a yes-like answer" judge of e.g. G-Eval, Liu et al. 2023, which weights scores by
  token probabilities). ``mode="grade"`` generates greedily and parses the grade ``g`` (0..10, see
  :func:`parse_grade`) as ``max(g - 1, 0) / 9`` in [0, 1]; no grade -> ``None``.
* :class:`HTTPJudgeReward`: an OpenAI-compatible ``/chat/completions`` server (vLLM, llama.cpp,
  TGI, OpenAI...). Base URL and model come from config; the API key only from the environment
  variable named by ``api_key_env``, read at request time, sent as a bearer header and never
  stored, logged or put in a repr or error. Requests run concurrently (an ``asyncio.Semaphore``
  of ``max_concurrency``), and transient failures (connection errors, per-read timeouts, HTTP 429
  and 5xx) are retried ``max_retries`` times with exponential backoff ``backoff * 2**attempt``.
  Limits against a slow, broken or hostile server: each sample has **one deadline** of
  ``timeout`` seconds from the moment it holds a connection slot, covering connecting, sending,
  every byte of the reply, the retries and their backoff (a server dripping a byte at a time
  cannot hold it longer), so a batch of ``n`` returns within ``ceil(n / max_concurrency) *
  timeout`` plus scheduling; a reply may hold at most ``max_reply_bytes`` bytes on the wire and
  as many once decompressed (``gzip`` / ``deflate`` are inflated by us with that cap, so a gzip
  bomb or an endless chunked stream stops at the cap; other encodings are refused). It is an
  ``async`` reward function, so TRL gathers it with its other
  async rewards. A failure raises :class:`JudgeError` naming the sample, or with
  ``on_error="none"`` gives that sample ``None`` (warned once). A server may quote the request's
  Authorization header in an error reply, so every excerpt of a reply is redacted (the key, and
  any piece of it of :data:`MIN_KEY_PIECE` characters or more) *before* it is cut to length, and
  the :class:`JudgeError` is raised outside any ``except`` block, chaining no exception that
  could hold the raw reply.

Templates are ``str.format`` strings with the fields ``{prompt}`` and ``{completion}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import torch

from adaptiverl.rewards.base import (
    AsyncRewardFunction,
    RewardFunction,
    check_model_ref,
    pick_device,
)

logger = logging.getLogger(__name__)

YES_NO_TEMPLATE = (
    "Question: {prompt}\nAnswer: {completion}\n"
    "Is the answer correct and helpful? Reply yes or no.\nReply:"
)
GRADE_TEMPLATE = (
    "Rate the answer to the question from 1 (useless) to 10 (excellent). Reply with the number only.\n\n"
    "Question: {prompt}\nAnswer: {completion}\nRating:"
)
_NUMBER = r"(?<![\d.])(\d+(?:\.\d+)?)(?![\d])"
#: "7/10", "7 / 10", "7 out of 10": a grade with its scale.
_FRACTION_RE = re.compile(_NUMBER + r"\s*(?:/|out\s+of)\s*(\d+)(?![\d.]\d)", re.IGNORECASE)
#: Scale descriptions whose numbers are no grade: "on a scale of 1 to 10", "from 1-10", "out of 10".
_SCALE_RE = re.compile(r"(?:(?:on\s+)?a\s+scale\s+)?(?:of|from)\s+[01]\s*(?:to|-|\u2013)\s*10(?!\d)"
                       r"|(?<![\d.])[01]\s*(?:-|\u2013|to)\s*10(?!\d)|(?:out\s+of|/)\s*10(?!\d)",
                       re.IGNORECASE)
_FIRST_NUMBER_RE = re.compile(_NUMBER)
_YES_RE = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
#: Where the first clause of a yes/no reply ends.
_CLAUSE_END_RE = re.compile(r"[.,;:!?\n]")
#: Pieces of the API key this long or longer are redacted from replies (a server may echo a
#: shortened key); a key shorter than this is redacted whole.
MIN_KEY_PIECE = 6
#: Characters of a server reply quoted in an error message.
EXCERPT_CHARS = 200
#: Default cap on a reply's bytes, on the wire and once decompressed (a chat completion of a few
#: tokens is about 1 KB).
MAX_REPLY_BYTES = 1 << 20


class JudgeError(RuntimeError):
    """The judge could not score a sample (server down, HTTP error, unparseable reply)."""


class _UnreadableReply(Exception):
    """A reply over the byte cap or in an encoding that cannot be read (its message quotes none of it)."""


def check_template(template: str, owner: str) -> str:
    if "{completion}" not in template:
        raise ValueError(f"{owner}: template must contain the field {{completion}}")
    try:
        template.format(prompt="", completion="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{owner}: template may only use the fields {{prompt}} and {{completion}} "
                         f"(double other braces): {exc!r}") from None
    return template


def redact(text: str, secret: str | None, min_piece: int = MIN_KEY_PIECE) -> str:
    """``text`` with every run of characters covered by an occurrence of a piece of ``secret`` at
    least ``min_piece`` long (the whole secret if it is shorter) replaced by ``***``."""
    if not secret:
        return text
    width = min(min_piece, len(secret))
    covered = bytearray(len(text))
    for piece in {secret[i:i + width] for i in range(len(secret) - width + 1)}:
        start = text.find(piece)
        while start != -1:
            covered[start:start + width] = b"\x01" * width
            start = text.find(piece, start + 1)
    out, i = [], 0
    while (start := covered.find(1, i)) != -1:
        end = covered.find(0, start)
        end = len(text) if end == -1 else end
        out += [text[i:start], "***"]
        i = end
    out.append(text[i:])
    return "".join(out)


def parse_grade(text: str) -> float | None:
    """The grade ``g`` (0..10) of a reply as ``max(g - 1, 0) / 9`` in [0, 1], else ``None``.

    In this order: the first grade written with its scale (``"7/10"``, ``"0 out of 10"``; over any
    other scale, ``"3/5"``, the reply is ``None``); otherwise the first number once the scale's
    own description is removed (``"On a scale of 1 to 10, I give it 3."`` -> 3, ``"Out of 10,
    this is a 4"`` -> 4). That number must lie in 0..10 (decimals allowed), else ``None``: a
    reply such as ``"42"`` is no grade. ``0`` is below the template's scale of 1..10 and counts
    as its bottom, 0.0.
    """
    fraction = _FRACTION_RE.search(text)
    if fraction is not None:
        grade, scale = float(fraction.group(1)), int(fraction.group(2))
        if scale != 10:
            return None
    else:
        number = _FIRST_NUMBER_RE.search(_SCALE_RE.sub(" ", text))
        if number is None:
            return None
        grade = float(number.group(1))
    return max(grade - 1.0, 0.0) / 9.0 if 0.0 <= grade <= 10.0 else None


def parse_yes_no(text: str) -> float | None:
    """1.0 for a reply starting with "yes", 0.0 for "no", else ``None``.

    A reply that names the other answer too within its first clause (up to the first ``. , ; :
    ! ?`` or line break: ``"Yes and no"``, ``"yes/no"``, ``"No or yes"``) is ambiguous: ``None``.
    ``"Yes, there is no error"`` is a yes.
    """
    m = _YES_RE.match(text)
    if m is None:
        return None
    answer = m.group(1).lower()
    rest = text[m.end():]
    end = _CLAUSE_END_RE.search(rest)
    other = "no" if answer == "yes" else "yes"
    if re.search(rf"\b{other}\b", rest[:end.start() if end else len(rest)], re.IGNORECASE):
        return None
    return 1.0 if answer == "yes" else 0.0


class LocalJudgeReward(RewardFunction):
    """A local causal LM as judge (see the module docstring)."""

    default_name = "judge"

    def __init__(self, model: str, mode: str = "yes_prob", template: str | None = None,
                 yes_words: Sequence[str] = ("yes", "Yes", " yes", " Yes"),
                 no_words: Sequence[str] = ("no", "No", " no", " No"),
                 max_new_tokens: int = 4, batch_size: int = 8, device: str | None = None,
                 name: str | None = None) -> None:
        super().__init__(name)
        if mode not in ("yes_prob", "grade"):
            raise ValueError(f"mode must be 'yes_prob' or 'grade', got {mode!r}")
        default = YES_NO_TEMPLATE if mode == "yes_prob" else GRADE_TEMPLATE
        self.template = check_template(template or default, f"reward {self.__name__!r}")
        self.model, self.mode = check_model_ref(model), mode
        self.yes_words, self.no_words = list(yes_words), list(no_words)
        self.max_new_tokens, self.batch_size, self.device = max_new_tokens, batch_size, device
        self._loaded: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model)
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            net = AutoModelForCausalLM.from_pretrained(self.model).to(pick_device(self.device)).eval()
            self._loaded = (net, tok)
        return self._loaded

    @staticmethod
    def _first_ids(tok: Any, words: list[str]) -> list[int]:
        """Ids of the first token of each word variant."""
        encoded = tok(words, add_special_tokens=False)["input_ids"]
        return sorted({ids[0] for ids in encoded if ids})

    @torch.inference_mode()
    def score(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        net, tok = self._load()
        texts = [self.template.format(prompt=p, completion=c) for p, c in zip(prompts, completions, strict=True)]
        out: list[float | None] = []
        yes_ids, no_ids = self._first_ids(tok, self.yes_words), self._first_ids(tok, self.no_words)
        for start in range(0, len(texts), self.batch_size):
            enc = tok(texts[start:start + self.batch_size], return_tensors="pt", padding=True).to(net.device)
            if self.mode == "yes_prob":
                probs = torch.softmax(net(**enc).logits[:, -1, :].float(), dim=-1)
                p_yes, p_no = probs[:, yes_ids].sum(-1), probs[:, no_ids].sum(-1)
                out.extend((p_yes / (p_yes + p_no).clamp_min(1e-12)).cpu().tolist())
            else:
                gen = net.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                   pad_token_id=tok.pad_token_id)
                replies = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                out.extend(parse_grade(r) for r in replies)
        return out


class HTTPJudgeReward(AsyncRewardFunction):
    """A judge behind an OpenAI-compatible chat-completions endpoint (see the module docstring)."""

    default_name = "http_judge"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 mode: str = "grade", template: str | None = None, system_prompt: str | None = None,
                 timeout: float = 30.0, max_retries: int = 3, backoff: float = 0.5,
                 max_concurrency: int = 8, max_tokens: int = 8, on_error: str = "raise",
                 max_reply_bytes: int = MAX_REPLY_BYTES, name: str | None = None) -> None:
        super().__init__(name)
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got "
                             f"{base_url!r}")
        if mode not in ("grade", "yes_no"):
            raise ValueError(f"mode must be 'grade' or 'yes_no', got {mode!r}")
        if on_error not in ("raise", "none"):
            raise ValueError(f"on_error must be 'raise' or 'none', got {on_error!r}")
        if not timeout > 0 or max_retries < 0 or backoff < 0 or max_concurrency < 1:
            raise ValueError("need timeout > 0, max_retries >= 0, backoff >= 0 and max_concurrency >= 1")
        if isinstance(max_reply_bytes, bool) or not isinstance(max_reply_bytes, int) or max_reply_bytes < 1:
            raise ValueError(f"max_reply_bytes must be an int >= 1, got {max_reply_bytes!r}")
        default = GRADE_TEMPLATE if mode == "grade" else YES_NO_TEMPLATE
        self.template = check_template(template or default, f"reward {self.__name__!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.mode = model, api_key_env, mode
        self.system_prompt, self.timeout = system_prompt, float(timeout)
        self.max_retries, self.backoff, self.max_concurrency = max_retries, float(backoff), max_concurrency
        self.max_tokens, self.on_error, self.max_reply_bytes = max_tokens, on_error, max_reply_bytes
        self._warned = False

    def __repr__(self) -> str:
        return (f"HTTPJudgeReward(name={self.__name__!r}, url={self.url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r})")

    def _key(self) -> str | None:
        """The API key, read from the environment at each use and never stored."""
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _excerpt(self, text: str) -> str:
        """A reply's text for an error message: redacted of the key first, then cut to length."""
        return repr(redact(text, self._key())[:EXCERPT_CHARS])

    def _payload(self, prompt: str, completion: str) -> dict[str, Any]:
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": self.template.format(prompt=prompt, completion=completion)})
        return {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens}

    def _read(self, status: int, text: str) -> float | str:
        """The score in a final (non-retried) reply, or the problem with it as a redacted message.

        Problems are returned, not raised, so that no exception holding the raw reply (a
        ``JSONDecodeError`` keeps the whole document) is ever chained to the ``JudgeError``.
        """
        if status != 200:
            return f"HTTP {status} from {self.url}: {self._excerpt(text)}"
        try:
            body = json.loads(text)
        except ValueError:
            return f"reply from {self.url} is not JSON: {self._excerpt(text)}"
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return f"reply without choices[0].message.content: {self._excerpt(str(body))}"
        if not isinstance(content, str):
            return f"reply content is {type(content).__name__}, not text: {self._excerpt(str(content))}"
        value = parse_grade(content) if self.mode == "grade" else parse_yes_no(content)
        if value is None:
            return (f"cannot parse a {'grade 1-10' if self.mode == 'grade' else 'yes/no'} from the reply "
                    f"{self._excerpt(content)}")
        return value

    async def _one(self, client: Any, sem: asyncio.Semaphore, j: int, prompt: str, completion: str) -> float | None:
        """One sample: its attempts under one deadline of ``timeout`` seconds, counted from the
        moment it holds a connection slot (connect, send, every byte of the reply, retries and
        their backoff included)."""
        last_problem = [""]
        async with sem:
            try:
                async with asyncio.timeout(self.timeout):
                    outcome = await self._attempts(client, prompt, completion, last_problem)
            except TimeoutError:
                outcome = (f"no complete reply from {self.url} within timeout={self.timeout:g}s"
                           + (f" (last problem: {last_problem[0]})" if last_problem[0] else ""))
        return self._fail(j, outcome) if isinstance(outcome, str) else outcome

    async def _attempts(self, client: Any, prompt: str, completion: str, last_problem: list[str]) -> float | str:
        """The score, or the final problem; transient failures retried with backoff."""
        import httpx

        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                async with client.stream("POST", self.url, json=self._payload(prompt, completion),
                                         headers=self._headers()) as resp:
                    if resp.status_code == 429 or resp.status_code >= 500:
                        last_problem[0] = f"HTTP {resp.status_code} from {self.url}"
                        continue
                    body = await self._body(resp)
            except httpx.TransportError as exc:
                last_problem[0] = f"{type(exc).__name__} contacting {self.url}"
                continue
            except _UnreadableReply as exc:
                return str(exc)
            return self._read(resp.status_code, body)
        return f"{last_problem[0]} (gave up after {self.max_retries + 1} attempts)"

    async def _body(self, resp: Any) -> str:
        """The reply's text, read as it arrives with at most ``max_reply_bytes`` on the wire and
        as many once decompressed (a gzip bomb stops at the cap, never inflating further); a
        :class:`_UnreadableReply` naming the problem otherwise."""
        cap = self.max_reply_bytes
        coding = resp.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise _UnreadableReply(f"unsupported Content-Encoding {coding[:40]!r} in the reply from {self.url}")
        inflate = None if coding in ("", "identity") else zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)
        too_large = _UnreadableReply(f"the reply from {self.url} exceeds max_reply_bytes={cap}")
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise too_large
        received, out = 0, bytearray()
        try:
            async for chunk in resp.aiter_raw():
                received += len(chunk)
                if received > cap:
                    raise too_large
                out += chunk if inflate is None else inflate.decompress(chunk, cap + 1 - len(out))
                if len(out) > cap or (inflate is not None and inflate.unconsumed_tail):
                    raise too_large
            if inflate is not None:
                out += inflate.flush(cap + 1 - len(out))
        except zlib.error:
            raise _UnreadableReply(f"the reply from {self.url} is not valid {coding} data") from None
        if len(out) > cap:
            raise too_large
        return out.decode(resp.charset_encoding or "utf-8", errors="replace")

    def _fail(self, j: int, problem: str) -> None:
        """Raise or warn about ``problem`` (never called inside an ``except`` block)."""
        message = redact(f"judge {self.__name__!r} failed on sample {j}: {problem}", self._key())
        if self.on_error == "raise":
            raise JudgeError(message)
        if not self._warned:
            self._warned = True
            warnings.warn(f"{message}; such samples get None (on_error='none')", RuntimeWarning, stacklevel=3)
        logger.info(message)
        return None

    async def ascore(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        import httpx

        sem = asyncio.Semaphore(self.max_concurrency)
        limits = httpx.Limits(max_connections=self.max_concurrency)
        headers = {"Accept-Encoding": "gzip, deflate"}  # the encodings _body can inflate under its cap
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits, headers=headers) as client:
            return list(await asyncio.gather(*(self._one(client, sem, j, p, c)
                                               for j, (p, c) in enumerate(zip(prompts, completions, strict=True)))))
