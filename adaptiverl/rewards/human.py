"""Human feedback: +1 (good), -1 (bad) or skip (``None``) for each completion.

Two modes:

* ``mode="interactive"``: each sample's prompt and completion are shown on the terminal
  (``output`` stream, default ``sys.stdout``) and a rating is read from ``input`` (default
  ``sys.stdin``) with a per-sample time limit ``timeout``; no answer in time -> ``None``.
  Accepted answers: ``+``, ``+1``, ``1``, ``y``, ``good`` -> +1; ``-``, ``-1``, ``n``, ``bad`` -> -1;
  ``s``, ``skip`` or an empty line -> ``None``.
* ``mode="queue"``: for annotating asynchronously from another terminal or tool. Each sample is
  appended as a request ``{"id", "step", "prompt", "completion", "time"}`` to
  ``<queue_dir>/requests.jsonl``; answers ``{"id": ..., "rating": 1 | -1 | "skip"}`` are read from
  ``<queue_dir>/answers.jsonl`` until every request of the batch is answered or ``timeout``
  seconds have passed (unanswered -> ``None``). ``python -m adaptiverl.rewards.human QUEUE_DIR``
  is a small terminal client that answers pending requests.

Every outcome is appended to the JSONL ``log_path`` (prompt, completion, rating, outcome, step,
time) and flushed and fsynced at once, so a crash loses nothing already rated.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from adaptiverl.rewards.base import RewardFunction

_GOOD = {"+", "+1", "1", "y", "yes", "good"}
_BAD = {"-", "-1", "n", "no", "bad"}
_SKIP = {"", "s", "skip", "0"}


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
                 name: str | None = None) -> None:
        super().__init__(name)
        if mode not in ("interactive", "queue"):
            raise ValueError(f"mode must be 'interactive' or 'queue', got {mode!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if mode == "queue" and queue_dir is None:
            raise ValueError("mode='queue' needs queue_dir= (a folder for requests.jsonl and answers.jsonl)")
        self.mode, self.timeout, self.poll_interval, self.max_chars = mode, float(timeout), poll_interval, max_chars
        self.log_path = Path(log_path)
        self.queue_dir = Path(queue_dir) if queue_dir is not None else None
        self.input, self.output = input, output
        self.run_id = uuid.uuid4().hex[:8]
        self.calls = 0
        self._pending = b""
        self._answers_offset = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "input": None, "output": None, "_pending": b""}

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

    # ---- logging -----------------------------------------------------------
    @staticmethod
    def _append(path: Path, records: list[dict[str, Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _log(self, step: int, prompt: str, completion: str, rating: float | None, outcome: str) -> None:
        self._append(self.log_path, [{"time": time.time(), "step": step, "mode": self.mode, "prompt": prompt,
                                      "completion": completion, "rating": rating, "outcome": outcome}])

    # ---- interactive -----------------------------------------------------------
    def _readline(self, deadline: float) -> str | None:
        """One line from the input within the deadline (``None`` if none came)."""
        fd = (self.input or sys.stdin).fileno()
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
    def _read_answers(self) -> dict[str, Any]:
        answers: dict[str, Any] = {}
        if not self.answers_path.exists():
            return answers
        with self.answers_path.open("rb") as fh:
            fh.seek(self._answers_offset)
            data = fh.read()
        complete, _, _ = data.rpartition(b"\n")
        if not complete:
            return answers
        self._answers_offset += len(complete) + 1
        for line in complete.decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                answers[str(rec["id"])] = rec.get("rating")
            except (ValueError, KeyError, TypeError):
                continue
        return answers

    def _queue(self, step: int, prompts: list[str], completions: list[str]) -> list[tuple[float | None, str]]:
        ids = [f"{self.run_id}-{self.calls}-{j}" for j in range(len(completions))]
        now = time.time()
        self._append(self.requests_path, [{"id": i, "step": step, "prompt": p, "completion": c, "time": now}
                                          for i, p, c in zip(ids, prompts, completions, strict=True)])
        results: dict[str, tuple[float | None, str]] = {}
        deadline = time.monotonic() + self.timeout
        while True:
            for key, answer in self._read_answers().items():
                if key in ids and key not in results:
                    valid, rating = parse_rating(answer)
                    results[key] = (rating, "rated" if rating is not None else "skipped") if valid \
                        else (None, "invalid")
            if len(results) == len(ids) or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)
        return [results.get(i, (None, "timeout")) for i in ids]

    # ---- reward ------------------------------------------------------------------
    def score(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        state = kwargs.get("trainer_state")
        step = int(getattr(state, "global_step", self.calls) or 0) if state is not None else self.calls
        n = len(completions)
        if self.mode == "queue":
            outcomes = self._queue(step, prompts, completions)
            for (rating, outcome), p, c in zip(outcomes, prompts, completions, strict=True):
                self._log(step, p, c, rating, outcome)
        else:
            outcomes = []
            for j, (p, c) in enumerate(zip(prompts, completions, strict=True)):
                rating, outcome = self._ask(j, n, step, p, c)
                self._log(step, p, c, rating, outcome)
                outcomes.append((rating, outcome))
        self.calls += 1
        return [rating for rating, _ in outcomes]


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
        answered = {json.loads(line)["id"] for line in answers_path.read_text().splitlines() if line.strip()}
    written = 0
    for line in requests.read_text().splitlines():
        if not line.strip():
            continue
        req = json.loads(line)
        if req["id"] in answered:
            continue
        out.write(f"\n--- {req['id']} (step {req['step']}) ---\nPROMPT:\n{req['prompt']}\n"
                  f"COMPLETION:\n{req['completion']}\nRate [+] good / [-] bad / [s] skip: ")
        out.flush()
        reply = inp.readline()
        if not reply:
            break
        valid, rating = parse_rating(reply)
        HumanFeedbackReward._append(answers_path, [{"id": req["id"], "rating": rating if valid else "skip"}])
        written += 1
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m adaptiverl.rewards.human QUEUE_DIR")
    print(f"\n{answer_queue(sys.argv[1])} answers written")
