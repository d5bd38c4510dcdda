"""HTTPJudgeReward against a real OpenAI-compatible server on 127.0.0.1 (started in a thread)."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from adaptiverl.rewards.composite import AsyncCompositeReward
from adaptiverl.rewards.judge import HTTPJudgeReward, JudgeError, parse_grade, parse_yes_no, redact

SECRET = "sk-test-SECRET-7f3a9c"
KEY_ENV = "ADAPTIVERL_TEST_JUDGE_KEY"


class JudgeServer:
    """A tiny chat-completions server. ``behaviour``: ok | 500 | flaky | garbage | words, or one of
    the ``echo_*`` shapes of a careless server quoting the request's Authorization header (after
    ``pad``) in an error: a 401 body, a 500 body, a non-JSON body, JSON without ``choices``, or a
    reply whose text is no yes/no answer."""

    def __init__(self) -> None:
        self.behaviour = "ok"
        self.pad = ""
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.failures_left = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.auth.append(self.headers.get("Authorization"))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    fail = server.behaviour == "500" or (server.behaviour == "flaky" and server.failures_left > 0)
                    if server.behaviour == "flaky" and server.failures_left > 0:
                        server.failures_left -= 1
                time.sleep(0.05)
                with server.lock:
                    server.in_flight -= 1
                if self.path != "/v1/chat/completions":
                    self._send(404, b"not found")
                elif fail:
                    self._send(500, b"internal error")
                elif server.behaviour.startswith("echo"):
                    self._echo(server.behaviour)
                elif server.behaviour == "garbage":
                    self._send(200, b"<html>this is not json")
                else:
                    user = body["messages"][-1]["content"]
                    answer = "I cannot grade" if server.behaviour == "words" else \
                        ("9" if "good" in user else "2")
                    reply = {"id": "x", "object": "chat.completion",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                          "finish_reason": "stop"}]}
                    self._send(200, json.dumps(reply).encode())

            def _echo(self, shape: str) -> None:
                auth = self.headers.get("Authorization") or ""
                # The header once, then the bare key back to back: whichever character an excerpt
                # of the reply is cut at, it falls inside the key.
                quote = f"{server.pad}bad credentials: {auth} " + auth.removeprefix("Bearer ") * 12
                if shape in ("echo", "echo_401"):
                    self._send(401, quote.encode())
                elif shape == "echo_500":
                    self._send(500, quote.encode())
                elif shape == "echo_not_json":
                    self._send(200, f"<html>{quote}".encode())
                elif shape == "echo_no_choices":
                    self._send(200, json.dumps({"error": {"message": quote}}).encode())
                elif shape == "echo_no_answer":
                    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": quote}}]}
                    self._send(200, json.dumps(reply).encode())

            def _send(self, code: int, payload: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    srv = JudgeServer()
    yield srv
    srv.close()


def judge(url: str, **kwargs) -> HTTPJudgeReward:
    defaults = {"model": "judge-model", "api_key_env": KEY_ENV, "backoff": 0.01, "max_retries": 2,
                "timeout": 5.0}
    return HTTPJudgeReward(url, **{**defaults, **kwargs})


def test_parsers():
    assert parse_grade("Rating: 10/10") == 1.0
    assert parse_grade("1") == 0.0 and parse_grade("I'd say 7.") == pytest.approx(6 / 9)
    assert parse_grade("eleven") is None and parse_grade("42") is None
    assert parse_yes_no(" Yes, it is") == 1.0 and parse_yes_no("no.") == 0.0 and parse_yes_no("maybe") is None


@pytest.mark.parametrize("reply, grade", [
    ("0/10", 0), ("I'd rate this 0 out of 10.", 0), ("Out of 10, this is a 4", 4),
    ("On a scale of 1 to 10, I give it 3.", 3), ("Rating: 10/10", 10), ("8 / 10", 8), ("7.5/10", 7.5),
    ("from 1-10: 9", 9), ("1", 1), ("Score: 6 (out of 10)", 6),
    ("3/5", None), ("42", None), ("no grade here", None),
])
def test_grade_parser_reads_the_grade_not_the_scale(reply, grade):
    expected = None if grade is None else max(grade - 1, 0) / 9
    assert parse_grade(reply) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("reply, value", [
    ("Yes and no", None), ("yes/no", None), ("No or yes?", None), ("Yes, there is no error", 1.0),
    ("No. Yes would be wrong", 0.0), ("**Yes**", 1.0), ("Nope", None),
])
def test_yes_no_parser_calls_an_answer_naming_both_ambiguous(reply, value):
    assert parse_yes_no(reply) == value


def test_redact_covers_the_key_and_its_pieces():
    key = "sk-live-KEYabcdefghij"
    assert redact(f"x{key}{key}y", key) == "x***y"  # back to back: one run
    assert redact("key sk-live-KEYab... and ...defghij end", key) == "key ***... and ...*** end"
    assert redact("sk-liv", key) == "***" and redact("sk-li", key) == "sk-li"  # pieces of 6 and more
    assert redact("a short one: ab!", "ab") == "a short one: ***!"  # a key under 6 chars: whole
    assert redact("nothing here", key) == "nothing here" and redact(key, None) == key


def test_grades_concurrently_with_key_in_header(server):
    reward = judge(server.url, max_concurrency=3)
    prompts = ["q"] * 6
    completions = ["a good answer", "bad", "good", "meh", "good stuff", "nope"]
    out = asyncio.run(reward(prompts=prompts, completions=completions))
    assert out == pytest.approx([8 / 9, 1 / 9, 8 / 9, 1 / 9, 8 / 9, 1 / 9])
    assert server.auth == [f"Bearer {SECRET}"] * 6
    assert all(r["model"] == "judge-model" for r in server.requests)
    sent = sorted(r["messages"][-1]["content"] for r in server.requests)  # concurrent: any order
    assert sent == sorted(reward.template.format(prompt="q", completion=c) for c in completions)
    assert 1 < server.max_in_flight <= 3


def test_retries_transient_errors_with_backoff(server):
    server.behaviour, server.failures_left = "flaky", 2
    out = asyncio.run(judge(server.url, max_concurrency=1)(completions=["good"]))
    assert out == pytest.approx([8 / 9]) and len(server.requests) == 3


def test_outages_give_clear_errors_without_the_key(server, caplog):
    caplog.set_level(logging.DEBUG)
    reward = judge(server.url)
    failures = []
    for behaviour, expected in (("500", "HTTP 500"), ("garbage", "not JSON"), ("words", "cannot parse"),
                                ("echo", r"HTTP 401.*Bearer \*\*\*")):
        server.behaviour = behaviour
        with pytest.raises(JudgeError, match=expected) as err:
            asyncio.run(reward(completions=["good"]))
        assert "sample 0" in str(err.value)
        failures.append(str(err.value))
    assert len([a for a in server.auth if a]) == 3 + 1 + 1 + 1  # 500 retried twice, others not retried
    # Server down: nothing listens on the port any more.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    down = judge(f"http://127.0.0.1:{dead_port}/v1")
    with pytest.raises(JudgeError, match=r"ConnectError.*gave up after 3 attempts") as err:
        asyncio.run(down(completions=["x"]))
    failures.append(str(err.value))
    for text in (*failures, repr(reward), caplog.text, str(pickle.dumps(reward)), str(vars(reward))):
        assert SECRET not in text


def test_on_error_none_and_inside_a_composite(server, caplog):
    server.behaviour = "500"
    lenient = judge(server.url, on_error="none", max_retries=0)
    with pytest.warns(RuntimeWarning, match="HTTP 500"):
        assert asyncio.run(lenient(completions=["a", "b"])) == [None, None]
    assert SECRET not in caplog.text
    server.behaviour = "ok"

    def length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    comp = AsyncCompositeReward([(judge(server.url), 2.0), (length, 0.0)])
    out = asyncio.run(comp(prompts=["q", "q"], completions=["good", "bad"]))
    assert out == pytest.approx([16 / 9, 2 / 9])
    assert comp.last_components["http_judge"] == pytest.approx(0.5)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="base_url"):
        HTTPJudgeReward("127.0.0.1:8000", model="m")
    with pytest.raises(ValueError, match="completion"):
        HTTPJudgeReward("http://x/v1", model="m", template="no fields")
    with pytest.raises(ValueError, match="prompt.*completion"):
        HTTPJudgeReward("http://x/v1", model="m", template="{completion} {other}")


# No isolated digit, so a reply quoting it parses as neither grade nor yes/no by accident.
LONG_SECRET = "sk-live-KEYabcdefghijKLMNOPqrstuvWXYZabcd"
ECHO_SHAPES = ("echo_401", "echo_500", "echo_not_json", "echo_no_choices", "echo_no_answer")


def key_pieces(secret: str, width: int = 10) -> set[str]:
    return {secret[i:i + width] for i in range(len(secret) - width + 1)}


def leaked(text: str, secret: str) -> list[str]:
    return sorted(p for p in key_pieces(secret) if p in text)


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and every exception chained to it, shown in a traceback or not."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


@pytest.mark.parametrize("on_error", ["raise", "none"])
def test_an_echoed_key_reaches_no_message_traceback_warning_or_log(server, monkeypatch, caplog, on_error):
    """Every error shape of a server that quotes the Authorization header, with the quote starting
    at two neighbouring offsets (so an excerpt cut at a fixed length ends inside the key at least
    once): no 10-character piece of the key in the error, its whole formatted traceback (chained
    parts too), any exception in the chain, any warning or any log record."""
    import traceback
    import warnings

    monkeypatch.setenv(KEY_ENV, LONG_SECRET)
    caplog.set_level(logging.DEBUG)
    seen: dict[str, str] = {}
    for shape in ECHO_SHAPES:
        for pad in ("", "#"):
            server.behaviour, server.pad = shape, pad
            reward = judge(server.url, mode="yes_no", max_retries=0, on_error=on_error)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if on_error == "raise":
                    with pytest.raises(JudgeError, match="sample 0") as err:
                        asyncio.run(reward(completions=["good"]))
                    text = "".join(traceback.format_exception(err.value))
                    text += "".join(f"{exc!s} {exc!r} {exc.args!r}" for exc in exception_chain(err.value))
                else:
                    assert asyncio.run(reward(completions=["good"])) == [None]
                    assert len(caught) == 1
                    text = ""
            text += "".join(str(w.message) for w in caught)
            seen[f"{shape}{pad}"] = text
            assert not leaked(text, LONG_SECRET), f"{shape} (pad {pad!r}) leaks the key:\n{text}"
    assert not leaked(caplog.text, LONG_SECRET)
    assert server.auth and all(a == f"Bearer {LONG_SECRET}" for a in server.auth)  # the key was sent
    # The redacted messages still say what went wrong, and quote the reply where they did before.
    for shape, needle in (("echo_401", "HTTP 401"), ("echo_500", "HTTP 500"), ("echo_not_json", "not JSON"),
                          ("echo_no_choices", "without choices"), ("echo_no_answer", "cannot parse")):
        assert needle in seen[shape]
        assert ("bad credentials: Bearer ***" in seen[shape]) == (shape != "echo_500")
