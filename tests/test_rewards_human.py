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

from adaptiverl.rewards.human import HumanFeedbackReward, answer_queue, append_jsonl, parse_rating

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
        assert [(r["id"], r["rating"]) for r in reward._read_answers()] == [("r0", 1), ("r1", 1.0), ("r2", -1.0)]
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


def answer_when_asked(queue: Path, lines_for) -> threading.Thread:
    """A thread that waits for the next batch in requests.jsonl and then runs ``lines_for(ids)``."""
    before = len(log_lines(queue / "requests.jsonl"))

    def run():
        while len(log_lines(queue / "requests.jsonl")) <= before:
            time.sleep(0.02)
        time.sleep(0.05)  # the whole batch is one append
        lines_for([r["id"] for r in log_lines(queue / "requests.jsonl")[before:]])

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_answers_file_emptied_or_replaced_is_read_again_from_its_start(tmp_path):
    queue, log = tmp_path / "queue", tmp_path / "ratings.jsonl"
    reward = HumanFeedbackReward(mode="queue", queue_dir=queue, log_path=log, timeout=5.0, poll_interval=0.02)
    answers = queue / "answers.jsonl"

    def long_answers(ids):  # long lines: the reader's offset ends far beyond what comes next
        append_jsonl(answers, [{"id": i, "rating": 1, "note": "x" * 500} for i in ids])

    thread = answer_when_asked(queue, long_answers)
    assert reward(completions=["a", "b"]) == [1.0, 1.0]
    thread.join()

    def emptied_then_answered(ids):
        answers.write_text("")  # emptied by hand, then a short answer
        append_jsonl(answers, [{"id": ids[0], "rating": -1}])

    thread = answer_when_asked(queue, emptied_then_answered)
    with pytest.warns(RuntimeWarning, match="answers.jsonl was replaced, truncated or emptied"):
        assert reward(completions=["c"]) == [-1.0]
    thread.join()

    def replaced(ids):  # a new file moved over the old one (another inode), longer than the old
        fresh = queue / "fresh.jsonl"
        append_jsonl(fresh, [{"id": "old", "rating": 1, "note": "y" * 600}, {"id": ids[0], "rating": 1}])
        os.replace(fresh, answers)

    thread = answer_when_asked(queue, replaced)
    with pytest.warns(RuntimeWarning, match="replaced"):
        assert reward(completions=["d"]) == [1.0]
    thread.join()
    assert [r["outcome"] for r in log_lines(log)] == ["rated"] * 4


def test_a_log_path_that_is_a_folder_is_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match=re.escape(repr(str(tmp_path)))):
        HumanFeedbackReward(mode="queue", queue_dir=tmp_path / "q", log_path=tmp_path)


def test_the_first_answer_for_a_sample_counts_whether_read_in_one_poll_or_two(tmp_path):
    queue, log = tmp_path / "queue", tmp_path / "ratings.jsonl"
    reward = HumanFeedbackReward(mode="queue", queue_dir=queue, log_path=log, timeout=5.0, poll_interval=0.02)

    def both_at_once(ids):  # one poll sees both lines
        append_jsonl(queue / "answers.jsonl", [{"id": ids[0], "rating": -1, "rater": "ann"},
                                               {"id": ids[0], "rating": 1, "rater": "bob"}])

    thread = answer_when_asked(queue, both_at_once)
    assert reward(completions=["a"]) == [-1.0]
    thread.join()

    def one_then_other(ids):  # two polls
        append_jsonl(queue / "answers.jsonl", [{"id": ids[0], "rating": -1, "rater": "ann"}])
        time.sleep(0.3)
        append_jsonl(queue / "answers.jsonl", [{"id": ids[0], "rating": 1, "rater": "bob"}])

    thread = answer_when_asked(queue, one_then_other)
    reward.timeout = 1.5  # c stays unanswered: the batch ends at its time limit
    assert reward(completions=["b", "c"]) == [-1.0, None]
    thread.join()
    rated = [r for r in log_lines(log) if r["outcome"] == "rated"]
    assert [(r["completion"], r["rating"], r["rater"]) for r in rated] == [("a", -1.0, "ann"), ("b", -1.0, "ann")]


def test_a_lone_surrogate_is_written_and_read_back_unchanged(tmp_path):
    path = tmp_path / "x.jsonl"
    append_jsonl(path, [{"prompt": "caf\u00e9 \udcff", "completion": "ok"}])
    assert json.loads(path.read_text(encoding="utf-8")) == {"prompt": "caf\u00e9 \udcff", "completion": "ok"}
    queue = tmp_path / "queue"
    reward = HumanFeedbackReward(mode="queue", queue_dir=queue, log_path=tmp_path / "log.jsonl", timeout=0.3,
                                 poll_interval=0.05)
    assert reward(prompts=["\ud800 broken"], completions=["\udfff"]) == [None]
    assert log_lines(tmp_path / "log.jsonl")[0]["prompt"] == "\ud800 broken"


def test_interactive_mode_reads_a_stream_without_a_file_descriptor(tmp_path):
    shown = io.StringIO()
    reward = HumanFeedbackReward(mode="interactive", timeout=0.5, log_path=tmp_path / "log.jsonl",
                                 input=io.StringIO("+\nwhat\n-\n"), output=shown)
    assert reward(completions=["a", "b", "c"]) == [1.0, -1.0, None]
    assert "not understood: 'what'" in shown.getvalue()
    assert [r["outcome"] for r in log_lines(tmp_path / "log.jsonl")] == ["rated", "rated", "timeout"]


def test_answers_are_never_appended_through_a_symlink(tmp_path):
    from adaptiverl._files import OutputPathError
    from adaptiverl.rewards.human import append_jsonl

    target = tmp_path / "elsewhere.jsonl"
    target.write_text("")
    link = tmp_path / "ratings.jsonl"
    link.symlink_to(target)
    with pytest.raises(OutputPathError, match="ratings.jsonl"):
        append_jsonl(link, [{"id": "a", "rating": 1}])
    assert target.read_text() == ""
