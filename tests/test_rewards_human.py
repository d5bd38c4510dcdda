"""Human feedback: interactive mode through a real pseudo-terminal, and the file-queue mode."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adaptiverl.rewards.human import HumanFeedbackReward, answer_queue, parse_rating

CHILD = """
import json, sys
from adaptiverl.rewards.human import HumanFeedbackReward
reward = HumanFeedbackReward(mode="interactive", timeout=1.5, log_path=sys.argv[1])
out = reward(prompts=["Say hi", "Add 2+2", "Name a colour", "Last one"],
             completions=["hi there", "5", "blue", "..."])
print("RESULT " + json.dumps(out), flush=True)
"""


class Terminal:
    """Reads the child's pseudo-terminal output until an expected text appears."""

    def __init__(self, fd: int) -> None:
        self.fd, self.text = fd, ""

    def expect(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} never appeared; terminal shows:\n{self.text}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    self.text += os.read(self.fd, 4096).decode("utf-8", "replace")
                except OSError:  # child closed the terminal
                    break
        head, _, self.text = self.text.partition(needle)
        return head

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_parse_rating():
    assert parse_rating("+") == (True, 1.0) and parse_rating(" Bad ") == (True, -1.0)
    assert parse_rating("") == (True, None) and parse_rating(-1) == (True, -1.0)
    assert parse_rating("maybe") == (False, None) and parse_rating(5) == (False, None)


def test_interactive_mode_through_a_pty(tmp_path):
    log = tmp_path / "ratings.jsonl"
    master, slave = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(log)], stdin=slave, stdout=slave,
                             stderr=slave, env=env, close_fds=True)
    os.close(slave)
    term = Terminal(master)
    try:
        shown = term.expect("Rate")
        assert "PROMPT:\r\nSay hi" in shown and "COMPLETION:\r\nhi there" in shown
        term.send("+")
        term.expect("Rate")
        # The first rating is on disk before the run goes on (flushed at once).
        assert [r["rating"] for r in log_lines(log)] == [1.0]
        term.send("bad")
        term.expect("Rate")
        term.send("what?")
        term.expect("not understood")
        term.expect("Rate")
        term.send("s")
        term.expect("Rate")  # no answer to the last one: the time limit gives None
        term.expect("no answer in time")
        term.expect("RESULT ")
        result = json.loads(term.expect("\n"))
    finally:
        child.wait(timeout=30)
        os.close(master)
    assert child.returncode == 0
    assert result == [1.0, -1.0, None, None]
    assert log_lines(log) and [r["rating"] for r in log_lines(log)] == [1.0, -1.0, None, None]
    assert [r["outcome"] for r in log_lines(log)] == ["rated", "rated", "skipped", "timeout"]
    assert log_lines(log)[0]["prompt"] == "Say hi" and log_lines(log)[0]["completion"] == "hi there"


def test_queue_mode_with_an_annotator_in_another_thread(tmp_path):
    queue, log = tmp_path / "queue", tmp_path / "ratings.jsonl"
    reward = HumanFeedbackReward(mode="queue", queue_dir=queue, log_path=log, timeout=3.0, poll_interval=0.05)
    written = []

    def annotator():
        requests = queue / "requests.jsonl"
        while not requests.exists() or len(requests.read_text().splitlines()) < 4:
            time.sleep(0.02)
        written.append(answer_queue(queue, input=io.StringIO("+\n-\ns\n"), output=io.StringIO()))

    thread = threading.Thread(target=annotator)
    thread.start()
    out = reward(prompts=["p"] * 4, completions=["a", "b", "c", "d"])
    thread.join()
    assert out == [1.0, -1.0, None, None] and written == [3]
    assert [r["outcome"] for r in log_lines(log)] == ["rated", "rated", "skipped", "timeout"]
    requests = log_lines(queue / "requests.jsonl")
    assert [r["completion"] for r in requests] == ["a", "b", "c", "d"]
    assert all(r["step"] == 0 for r in requests)

    # A second batch: answers written by hand in the documented format, ids from the request file.
    def hand_answers():
        while len(log_lines(queue / "requests.jsonl")) < 6:
            time.sleep(0.02)
        new = log_lines(queue / "requests.jsonl")[4:]
        with (queue / "answers.jsonl").open("a") as fh:
            fh.write(json.dumps({"id": new[1]["id"], "rating": -1}) + "\n")
            fh.write(json.dumps({"id": new[0]["id"], "rating": "+1"}) + "\n")

    thread = threading.Thread(target=hand_answers)
    thread.start()
    clone = pickle.loads(pickle.dumps(reward))  # picklable, keeps the queue position
    assert clone(completions=["e", "f"]) == [1.0, -1.0]
    thread.join()
    assert len(log_lines(log)) == 6


def test_bad_configuration():
    with pytest.raises(ValueError, match="queue_dir"):
        HumanFeedbackReward(mode="queue")
    with pytest.raises(ValueError, match="mode"):
        HumanFeedbackReward(mode="telepathy")


def request(rid: str, completion: str, step: int = 0) -> str:
    return json.dumps({"id": rid, "step": step, "prompt": "p", "completion": completion, "time": 0.0})


def test_client_skips_torn_and_bad_lines_with_a_warning_and_loses_nothing_else(tmp_path):
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / "requests.jsonl").write_text(
        request("r1", "first") + "\n"
        + "{not json at all\n"                            # a bad request line
        + json.dumps({"id": "r-no-text"}) + "\n"          # a record without prompt/completion
        + request("r2", "second") + "\n"
        + request("r3", "third")[:25])                    # torn: the trainer is still writing it
    (queue / "answers.jsonl").write_text(
        json.dumps({"id": "r0", "rating": 1}) + "\n"
        + "[1, 2, 3]\n"                                   # one bad answer line
        + '{"id": "r9", "rat')                            # torn: an annotator died mid-write
    shown = io.StringIO()
    with pytest.warns(RuntimeWarning) as caught:
        written = answer_queue(queue, input=io.StringIO("+\n-\n"), output=shown)
    messages = [str(w.message) for w in caught]
    assert written == 2
    assert "first" in shown.getvalue() and "second" in shown.getvalue() and "third" not in shown.getvalue()
    for needle in (r"requests.jsonl.*line 2", r"requests.jsonl.*line 3.*'prompt'", r"requests.jsonl.*line 5.*incomplete",
                   r"answers.jsonl.*line 2", r"answers.jsonl.*line 3.*incomplete"):
        assert any(re.search(needle, m) for m in messages), (needle, messages)
    # The answers file: the old answer, the two bad lines (kept, the torn one terminated), then
    # the new answers, each on its own line, so the trainer reads all of them.
    lines = (queue / "answers.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"id": "r0", "rating": 1} and lines[2] == '{"id": "r9", "rat'
    assert [json.loads(line) for line in lines[3:]] == [{"id": "r1", "rating": 1.0}, {"id": "r2", "rating": -1.0}]
    reward = HumanFeedbackReward(mode="queue", queue_dir=queue, log_path=tmp_path / "log.jsonl")
    with pytest.warns(RuntimeWarning) as caught:
        assert reward._read_answers() == {"r0": 1, "r1": 1.0, "r2": -1.0}
    assert [re.search(r"answers.jsonl: line (\d)", str(w.message)).group(1) for w in caught] == ["2", "3"]


def test_trainer_skips_a_bad_answer_line_with_a_warning(tmp_path):
    queue, log = tmp_path / "queue", tmp_path / "ratings.jsonl"
    reward = HumanFeedbackReward(mode="queue", queue_dir=queue, log_path=log, timeout=10.0, poll_interval=0.02)

    def annotate():
        while len(log_lines(queue / "requests.jsonl")) < 2:
            time.sleep(0.02)
        ids = [r["id"] for r in log_lines(queue / "requests.jsonl")]
        with (queue / "answers.jsonl").open("a") as fh:
            fh.write(json.dumps({"id": ids[0], "rating": -1}) + "\n")
            fh.write("this line is no JSON\n")
            fh.write(json.dumps({"id": ids[1], "rating": 1}) + "\n")

    thread = threading.Thread(target=annotate)
    thread.start()
    with pytest.warns(RuntimeWarning, match=r"answers.jsonl.*line 2.*skipped"):
        assert reward(completions=["a", "b"]) == [-1.0, 1.0]
    thread.join()


TRAINER = """
import sys
from adaptiverl.rewards.human import HumanFeedbackReward
reward = HumanFeedbackReward(mode="queue", queue_dir=sys.argv[1], log_path=sys.argv[2], timeout=120,
                             poll_interval=0.02)
reward(prompts=["p0", "p1", "p2", "p3"], completions=["c0", "c1", "c2", "c3"])
"""


def test_ratings_are_on_disk_as_they_are_given_when_the_trainer_is_killed_mid_batch(tmp_path):
    queue, log = tmp_path / "queue", tmp_path / "ratings.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", TRAINER, str(queue), str(log)], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(log_lines(queue / "requests.jsonl")) < 4:
            assert child.poll() is None and time.monotonic() < deadline, "the trainer never asked"
            time.sleep(0.05)
        ids = [r["id"] for r in log_lines(queue / "requests.jsonl")]
        with (queue / "answers.jsonl").open("a") as fh:  # two of the four answered
            fh.write(json.dumps({"id": ids[2], "rating": -1}) + "\n" + json.dumps({"id": ids[0], "rating": 1}) + "\n")
        deadline = time.monotonic() + 20
        while len(log_lines(log)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        child.kill()  # SIGKILL mid-batch: nothing gets to run on the way out
        child.wait(timeout=30)
    ratings = {r["id"]: (r["completion"], r["rating"], r["outcome"]) for r in log_lines(log)}
    assert ratings == {ids[2]: ("c2", -1.0, "rated"), ids[0]: ("c0", 1.0, "rated")}
