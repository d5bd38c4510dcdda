"""Human feedback: +1 (good), -1 (bad) or skip (``None``) for each completion.

Three modes:

* ``mode="interactive"``: each sample's prompt and completion are shown on the terminal
  (``output`` stream, default ``sys.stdout``) and a rating is read from ``input`` (default
  ``sys.stdin``, or any text stream) with a per-sample time limit ``timeout``; no answer in time
  -> ``None``. Accepted answers: ``+``, ``+1``, ``1``, ``y``, ``good`` -> +1; ``-``, ``-1``, ``n``,
  ``bad`` -> -1; ``s``, ``skip`` or an empty line -> ``None``.
* ``mode="queue"``: for annotating asynchronously from another terminal, a browser or a tool.
  Each sample is appended as a request ``{"id", "step", "prompt", "completion", "time",
  "deadline"}`` to ``<queue_dir>/requests.jsonl``; answers ``{"id": ..., "rating": 1 | -1 |
  "skip"}`` (optionally ``"rater"``) are read from ``<queue_dir>/answers.jsonl`` until every request
  of the batch is answered or ``timeout`` seconds have passed (unanswered -> ``None``). Answer with
  ``adaptiverl rate QUEUE_DIR`` (a rating page, :mod:`adaptiverl.rewards.rating`) or with
  ``python -m adaptiverl.rewards.human QUEUE_DIR`` (a terminal client).
* ``mode="web"``: the queue, with the rating page served from inside training (``host`` and
  ``port``: 127.0.0.1 and a free port by default) and its URL printed when the first batch comes
  (or at :meth:`HumanFeedbackReward.start_server`). Bound to another address, the page requires
  an access token: random, or read from the environment variable named by ``token_env`` (never
  from the config, which is saved with the run). ``queue_dir`` defaults to a ``human_queue``
  folder beside ``log_path``. In a distributed run only rank 0 serves the page; every rank
  queues its samples in the shared ``queue_dir``.

Several raters may answer one queue. The rule for a sample answered more than once
(:func:`count_first_answers`): the first answer line in ``answers.jsonl`` counts, whoever wrote it
and however the trainer's reads fall; the later ones stay in the file and change nothing.

Every outcome is appended to the JSONL ``log_path`` (prompt, completion, rating, outcome, step,
sample, time, and the request ``id`` and the answer's ``rater`` in queue and web mode) and flushed
and fsynced as soon as it is known:
a typed rating at once, a queue answer as soon as it is read (so the log lists answers in the order
they came), a timeout when the batch gives up. A crash loses nothing already rated.

The queue files are JSONL written by more than one process, so a reader meets torn lines (a
writer still busy, or killed mid-line) and the odd bad line (an answer typed by hand): both sides
skip such a line with a warning naming the file and line and use every other one, and a writer
first ends a torn last line so its own record starts on a line of its own.
"""

from __future__ import annotations

import json
import os
import queue
import select
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, TextIO

from adaptiverl._files import open_for_append
from adaptiverl.rewards.base import RewardFunction

_GOOD = {"+", "+1", "1", "y", "yes", "good"}
_BAD = {"-", "-1", "n", "no", "bad"}
_SKIP = {"", "s", "skip", "0"}
MODES = ("interactive", "queue", "web")
WEB_QUEUE_DIR = "human_queue"  # mode="web" without queue_dir: this folder beside log_path


def _jsonl_line(record: dict[str, Any]) -> str:
    """One JSONL line: UTF-8 text as it is, or with ``\\u`` escapes where the text holds what UTF-8
    cannot encode (a lone surrogate from a tokenizer's broken byte sequence), losing nothing."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)
    return line + "\n"


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Append ``records`` to the JSONL file ``path``, flushed and fsynced; a torn last line (a
    writer killed mid-line) is ended first, so that it cannot swallow the first new record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(_jsonl_line(rec) for rec in records).encode("utf-8")
    with open_for_append(path) as fh:  # a symlink is refused, never followed
        end = fh.seek(0, os.SEEK_END)
        torn = False
        if end:
            fh.seek(end - 1)
            torn = fh.read(1) != b"\n"
        fh.write((b"\n" if torn else b"") + payload)
        fh.flush()
        os.fsync(fh.fileno())


def parse_jsonl(data: bytes, path: Path, required: tuple[str, ...], first_line: int = 1) -> list[dict[str, Any]]:
    """The JSON objects on the lines of ``data`` (read from ``path``, starting at line number
    ``first_line``) that hold every ``required`` key; each other non-blank line, and a last line
    without its newline, is skipped with a warning naming the file and the line."""
    lines = data.split(b"\n")
    records = []
    for number, raw in enumerate(lines, start=first_line):
        if not raw.strip():
            continue
        text = raw.decode("utf-8", "replace")
        if number - first_line == len(lines) - 1:
            problem = "incomplete: no newline yet, a writer is still busy or was killed mid-line"
        else:
            try:
                rec = json.loads(text)
            except ValueError as exc:
                problem = f"not JSON: {exc}"
            else:
                missing = [k for k in required if k not in rec] if isinstance(rec, dict) else None
                if missing is None:
                    problem = f"a JSON {type(rec).__name__}, not an object"
                elif missing:
                    problem = f"no key {missing[0]!r}"
                else:
                    records.append(rec)
                    continue
        excerpt = text if len(text) <= 80 else text[:77] + "..."
        warnings.warn(f"{path}: line {number} skipped ({problem}): {excerpt!r}", RuntimeWarning, stacklevel=3)
    return records


class JsonlTail:
    """Reads the records appended to a JSONL file since the last read.

    Only complete lines are read (a torn last line waits for its newline); a bad line is skipped
    with a warning (:func:`parse_jsonl`). A file that was replaced (another inode), truncated or
    emptied (shorter than what was read, or no newline where the last read ended) is read again
    from its first line, with a warning, so that what is written to it afterwards is not missed.
    """

    def __init__(self, path: Path, required: tuple[str, ...]) -> None:
        self.path, self.required = Path(path), required
        self.offset = 0  # bytes of complete lines read so far
        self.lines = 0   # and their number, for the line numbers in warnings
        self.identity: tuple[int, int] | None = None

    def read(self) -> tuple[bool, list[dict[str, Any]]]:
        """``(restarted, records)``: the new records, and whether the file was read from its
        first line again (then ``records`` holds all of it)."""
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return False, []
        with fh:
            stat = os.fstat(fh.fileno())
            identity = (stat.st_dev, stat.st_ino)
            restarted = False
            if self.offset:
                fh.seek(self.offset - 1)
                if identity != self.identity or stat.st_size < self.offset or fh.read(1) != b"\n":
                    warnings.warn(f"{self.path} was replaced, truncated or emptied: reading it again from "
                                  "its first line", RuntimeWarning, stacklevel=2)
                    self.offset = self.lines = 0
                    restarted = True
            self.identity = identity
            fh.seek(self.offset)
            data = fh.read()
        complete, newline, _ = data.rpartition(b"\n")
        if not newline:
            return restarted, []
        first_line = self.lines + 1
        self.offset += len(complete) + 1
        self.lines += complete.count(b"\n") + 1
        return restarted, parse_jsonl(complete + b"\n", self.path, self.required, first_line)


def count_first_answers(records: list[dict[str, Any]], counted: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The conflict rule, one for the trainer and the rating page: for each sample id the first
    answer line in ``answers.jsonl`` counts (whatever it says, from whichever rater); later ones
    stay in the file and change nothing. Adds the newly counting ``records`` to ``counted``
    (``{id: answer}``) and returns them, in file order."""
    new = []
    for rec in records:
        key = str(rec["id"])
        if key not in counted:
            counted[key] = rec
            new.append(rec)
    return new


def parse_rating(answer: Any) -> tuple[bool, float | None]:
    """``(valid, rating)`` for a typed or JSON answer; rating ``None`` means skip."""
    if answer is None:
        return True, None
    if isinstance(answer, bool):
        return False, None
    if isinstance(answer, (int, float)):
        return (True, float(answer)) if answer in (1, -1) else ((True, None) if answer == 0 else (False, None))
    text = str(answer).strip().lower()
    if text in _GOOD:
        return True, 1.0
    if text in _BAD:
        return True, -1.0
    if text in _SKIP:
        return True, None
    return False, None


class HumanFeedbackReward(RewardFunction):
    """+1 / -1 / skip ratings from a person (see the module docstring)."""

    default_name = "human"

    def __init__(self, mode: str = "interactive", timeout: float = 60.0,
                 log_path: str | os.PathLike[str] = "human_feedback.jsonl",
                 queue_dir: str | os.PathLike[str] | None = None, poll_interval: float = 0.2,
                 max_chars: int = 2000, input: TextIO | None = None, output: TextIO | None = None,
                 name: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 token_env: str | None = None) -> None:
        super().__init__(name)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if mode == "queue" and queue_dir is None:
            raise ValueError("mode='queue' needs queue_dir= (a folder for requests.jsonl and answers.jsonl)")
        self.log_path = Path(log_path)
        if self.log_path.is_dir():
            raise ValueError(f"log_path {str(self.log_path)!r} is a folder; name a file for the ratings, "
                             f"e.g. {str(self.log_path / 'human_feedback.jsonl')!r}")
        if mode == "web" and queue_dir is None:
            queue_dir = self.log_path.parent / WEB_QUEUE_DIR
        self.queue_dir = Path(queue_dir) if queue_dir is not None else None
        if self.queue_dir is not None and self.queue_dir.exists() and not self.queue_dir.is_dir():
            raise ValueError(f"queue_dir {str(self.queue_dir)!r} is a file, not a folder")
        self.mode, self.timeout, self.poll_interval, self.max_chars = mode, float(timeout), poll_interval, max_chars
        if token_env is not None and not os.environ.get(token_env):
            raise ValueError(f"token_env names the environment variable {token_env!r}, which is not set")
        self.host, self.port, self.token_env = host, int(port), token_env
        self.input, self.output = input, output
        self.run_id = uuid.uuid4().hex[:8]
        self.calls = 0
        self._pending = b""
        self._lines: queue.Queue[str | None] | None = None  # lines of an input without a file descriptor
        self._answers = JsonlTail(self.queue_dir / "answers.jsonl", ("id",)) if self.queue_dir else None
        self.server = None  # the rating page of mode="web", started by the first batch (or start_server)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "input": None, "output": None, "_pending": b"", "_lines": None, "server": None}

    def _queue_file(self, name: str) -> Path:
        if self.queue_dir is None:
            raise ValueError(f"reward {self.__name__!r} has no queue_dir (mode={self.mode!r})")
        return self.queue_dir / name

    @property
    def requests_path(self) -> Path:
        return self._queue_file("requests.jsonl")

    @property
    def answers_path(self) -> Path:
        return self._queue_file("answers.jsonl")

    # ---- the rating page (mode="web") ----------------------------------------------
    def start_server(self):
        """Serve the rating page over this reward's queue (once) and print its URL; the server."""
        if self.server is None:
            from adaptiverl.rewards.rating import RatingServer

            token = os.environ.get(self.token_env) if self.token_env else None
            self.server = RatingServer(self.queue_dir, host=self.host, port=self.port, token=token).start()
            out = self.output or sys.stdout
            out.write(f"human feedback: rate the samples at {self.server.url}\n")
            out.flush()
        return self.server

    def close(self) -> None:
        """Stop the rating page (mode="web"); ratings already given are on disk."""
        if self.server is not None:
            self.server.close()
            self.server = None

    # ---- logging -----------------------------------------------------------
    def _log(self, step: int, sample: int, prompt: str, completion: str, rating: float | None, outcome: str,
             request_id: str | None = None, rater: str | None = None) -> None:
        record = {"time": time.time(), "step": step, "sample": sample, "mode": self.mode, "prompt": prompt,
                  "completion": completion, "rating": rating, "outcome": outcome}
        if request_id is not None:
            record["id"] = request_id
        if rater is not None:
            record["rater"] = rater
        append_jsonl(self.log_path, [record])

    # ---- interactive -----------------------------------------------------------
    def _readline(self, deadline: float) -> str | None:
        """One line from the input within the deadline (``None`` if none came)."""
        stream = self.input or sys.stdin
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.StringIO, a wrapper: no descriptor
            return self._readline_threaded(stream, deadline)
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:  # end of input: no one will answer
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")

    def _readline_threaded(self, stream: TextIO, deadline: float) -> str | None:
        """:meth:`_readline` for a stream without a file descriptor: a helper thread reads its
        lines, so the time limit still holds when the stream blocks."""
        if self._lines is None:
            self._lines = queue.Queue()
            lines = self._lines

            def pump() -> None:
                try:
                    for line in iter(stream.readline, ""):
                        lines.put(line.rstrip("\r\n"))
                except (OSError, ValueError):  # a closed or unreadable stream: as its end
                    pass
                finally:
                    lines.put(None)  # end of input: no one will answer

            threading.Thread(target=pump, name="human-feedback-input", daemon=True).start()
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is None:
            self._lines.put(None)  # every later question meets the end too
        return line

    def _ask(self, j: int, n: int, step: int, prompt: str, completion: str) -> tuple[float | None, str]:
        out = self.output or sys.stdout
        out.write(f"\n--- sample {j + 1}/{n} (step {step}) ---\nPROMPT:\n{prompt[:self.max_chars]}\n"
                  f"COMPLETION:\n{completion[:self.max_chars]}\n")
        deadline = time.monotonic() + self.timeout
        while True:
            out.write(f"Rate [+] good / [-] bad / [s] skip ({self.timeout:g}s): ")
            out.flush()
            line = self._readline(deadline)
            if line is None:
                out.write("\n(no answer in time: skipped)\n")
                out.flush()
                return None, "timeout"
            valid, rating = parse_rating(line)
            if valid:
                return rating, "rated" if rating is not None else "skipped"
            out.write(f"(not understood: {line!r})\n")

    # ---- queue -----------------------------------------------------------------
    def _read_answers(self) -> list[dict[str, Any]]:
        """The answer records written since the last read, in file order (all of them again when
        ``answers.jsonl`` was replaced or emptied; see :class:`JsonlTail`)."""
        return self._answers.read()[1]

    def _queue(self, step: int, prompts: list[str], completions: list[str]) -> list[float | None]:
        """Queue the batch and wait for its answers, logging each as soon as it is read."""
        if self.mode == "web" and os.environ.get("RANK", "0") == "0":  # one page for all ranks' shared queue
            self.start_server()
        ids = [f"{self.run_id}-{self.calls}-{j}" for j in range(len(completions))]
        index = {rid: j for j, rid in enumerate(ids)}
        now = time.time()
        append_jsonl(self.requests_path, [
            {"id": i, "step": step, "prompt": p, "completion": c, "time": now, "deadline": now + self.timeout}
            for i, p, c in zip(ids, prompts, completions, strict=True)])
        counted: dict[str, dict[str, Any]] = {}
        ratings: dict[str, float | None] = {}
        deadline = time.monotonic() + self.timeout
        while True:
            mine = [rec for rec in self._read_answers() if str(rec["id"]) in index]
            for answer in count_first_answers(mine, counted):
                key = str(answer["id"])
                valid, rating = parse_rating(answer.get("rating"))
                outcome = "invalid" if not valid else ("rated" if rating is not None else "skipped")
                ratings[key] = rating
                j = index[key]
                rater = answer.get("rater")
                self._log(step, j, prompts[j], completions[j], rating, outcome, key,
                          rater if isinstance(rater, str) else None)
            if len(ratings) == len(ids) or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)
        for key in ids:
            if key not in ratings:
                j = index[key]
                self._log(step, j, prompts[j], completions[j], None, "timeout", key)
        return [ratings.get(key) for key in ids]

    # ---- reward ------------------------------------------------------------------
    def score(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        state = kwargs.get("trainer_state")
        step = int(getattr(state, "global_step", self.calls) or 0) if state is not None else self.calls
        n = len(completions)
        if self.mode in ("queue", "web"):
            ratings = self._queue(step, prompts, completions)
        else:
            ratings = []
            for j, (p, c) in enumerate(zip(prompts, completions, strict=True)):
                rating, outcome = self._ask(j, n, step, p, c)
                self._log(step, j, p, c, rating, outcome)
                ratings.append(rating)
        self.calls += 1
        return ratings


def answer_queue(queue_dir: str | os.PathLike[str], input: TextIO | None = None,
                 output: TextIO | None = None) -> int:
    """Terminal client for ``mode="queue"``: ask for a rating of every unanswered request.

    Returns the number of answers written to ``<queue_dir>/answers.jsonl``.
    """
    inp, out = input or sys.stdin, output or sys.stdout
    requests = Path(queue_dir) / "requests.jsonl"
    answers_path = Path(queue_dir) / "answers.jsonl"
    if not requests.exists():
        raise FileNotFoundError(f"no requests yet: {requests} does not exist")
    answered = set()
    if answers_path.exists():
        answered = {str(rec["id"]) for rec in parse_jsonl(answers_path.read_bytes(), answers_path, ("id",))}
    written = 0
    for req in parse_jsonl(requests.read_bytes(), requests, ("id", "prompt", "completion")):
        if str(req["id"]) in answered:
            continue
        out.write(f"\n--- {req['id']} (step {req.get('step', '?')}) ---\nPROMPT:\n{req['prompt']}\n"
                  f"COMPLETION:\n{req['completion']}\nRate [+] good / [-] bad / [s] skip: ")
        out.flush()
        reply = inp.readline()
        if not reply:
            break
        valid, rating = parse_rating(reply)
        append_jsonl(answers_path, [{"id": req["id"], "rating": rating if valid else "skip"}])
        written += 1
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m adaptiverl.rewards.human QUEUE_DIR")
    print(f"\n{answer_queue(sys.argv[1])} answers written")
