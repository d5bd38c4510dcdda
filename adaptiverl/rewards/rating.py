"""The rating page: a small web server over the file queue of :class:`HumanFeedbackReward`.

``adaptiverl rate QUEUE_DIR`` serves it for a run with ``mode="queue"``; ``mode="web"`` starts it
inside training. The page lists the samples still waiting for an answer (prompt, completion,
step, time left), takes +1 / -1 / skip by button or key, follows new batches without a reload and
shows what was rated so far. It reads ``requests.jsonl`` and writes ``answers.jsonl`` exactly as
the terminal client does: an answer is appended, flushed and fsynced before the page is told
"saved", and the trainer reads it from there (its conflict rule, :func:`count_first_answers`: the
first answer for a sample counts, whoever gave it).

Safe by default:

* bound to 127.0.0.1; bound to any other address it requires a random access token (or the one
  given), which is printed once in the page's URL after ``#`` (a fragment: browsers never send it,
  so it is in no request line or log) and travels in the ``X-Rating-Token`` header of every API
  call; per-request logging is off;
* answers are JSON POSTs (a cross-site form cannot send one), on loopback only for a ``Host`` of
  the loopback address (no DNS rebinding); request bodies are capped at :data:`MAX_BODY` bytes;
  an answer for an id that is not in ``requests.jsonl`` is refused (404), one whose trainer has
  stopped waiting too (410);
* the page sets text with ``textContent`` only, under a Content-Security-Policy that runs no
  inline script: a completion ``<script>...`` or ``<img onerror=...>`` stays text.

Werkzeug (Pallets) parses HTTP and serves the threads.
"""

from __future__ import annotations

import hmac
import json
import secrets
import socket
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from adaptiverl.rewards.human import JsonlTail, append_jsonl, count_first_answers, parse_rating

LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_HEADER = "X-Rating-Token"
MAX_BODY = 4096         # bytes of one answer request
MAX_RATER = 64          # characters of a rater's name
MAX_TEXT = 20_000       # characters of a prompt or completion sent to the page
RECENT = 30             # answered samples listed on the page
STATIC = {"/": ("rating.html", "text/html; charset=utf-8"),
          "/rating.js": ("rating.js", "text/javascript; charset=utf-8"),
          "/rating.css": ("rating.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
RATING_WORDS = {1.0: "good", -1.0: "bad", None: "skip"}


def is_loopback(host: str) -> bool:
    return host in LOOPBACK


class _QuietHandler(WSGIRequestHandler):
    """No line per request in the training log (errors are still reported)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class QueueState:
    """The queue as the page sees it: requests, the answer that counts for each, all answers."""

    def __init__(self, queue_dir: Path) -> None:
        self._requests_tail = JsonlTail(queue_dir / "requests.jsonl", ("id", "prompt", "completion"))
        self._answers_tail = JsonlTail(queue_dir / "answers.jsonl", ("id",))
        self.requests: dict[str, dict[str, Any]] = {}
        self.counted: dict[str, dict[str, Any]] = {}  # id -> the answer that counts
        self.answers = 0                              # answer lines, counting or not

    @property
    def answers_path(self) -> Path:
        return self._answers_tail.path

    def refresh(self) -> None:
        restarted, records = self._requests_tail.read()
        if restarted:
            self.requests.clear()
        for rec in records:
            self.requests[str(rec["id"])] = rec
        restarted, records = self._answers_tail.read()
        if restarted:
            self.counted.clear()
            self.answers = 0
        self.answers += len(records)
        count_first_answers(records, self.counted)

    def expired(self, request: dict[str, Any], now: float) -> bool:
        deadline = request.get("deadline")
        return isinstance(deadline, (int, float)) and deadline <= now

    def view(self) -> dict[str, Any]:
        """What the page shows (see rating.js)."""
        now = time.time()
        pending, done = [], []
        tally = {"good": 0, "bad": 0, "skip": 0, "timeout": 0}
        for key, req in self.requests.items():
            answer = self.counted.get(key)
            if answer is None and not self.expired(req, now):
                pending.append({"id": key, "step": req.get("step"), "prompt": str(req["prompt"])[:MAX_TEXT],
                                "completion": str(req["completion"])[:MAX_TEXT], "deadline": req.get("deadline")})
                continue
            if answer is None:
                word, rating, rater = "timeout", None, None
            else:
                valid, rating = parse_rating(answer.get("rating"))
                word = RATING_WORDS[rating] if valid else "skip"
                rater = answer.get("rater")
            tally[word] += 1
            done.append({"id": key, "step": req.get("step"), "completion": str(req["completion"])[:200],
                         "outcome": word, "reward": rating, "rater": rater if isinstance(rater, str) else None})
        rated = tally["good"] + tally["bad"]
        return {"now": now, "pending": pending, "recent": done[-RECENT:][::-1], "counts": tally,
                "answers": self.answers,
                "mean_reward": (tally["good"] - tally["bad"]) / rated if rated else None}


class RatingServer:
    """The rating page for ``queue_dir``, served by Werkzeug on ``host:port`` (0: a free port)."""

    def __init__(self, queue_dir: str | Path, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None) -> None:
        self.queue_dir = Path(queue_dir)
        if self.queue_dir.exists() and not self.queue_dir.is_dir():
            raise ValueError(f"queue folder {str(self.queue_dir)!r} is a file")
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.token = token if token else (None if is_loopback(host) else secrets.token_urlsafe(24))
        self.state = QueueState(self.queue_dir)
        self._lock = threading.Lock()  # one reader/writer of the queue files at a time in this process
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise OSError(f"cannot serve the rating page on {host}:{port}: {exc.strerror or exc}") from None
        try:
            self._httpd = make_server(host, port, self._wsgi, threaded=True, request_handler=_QuietHandler,
                                      fd=sock.fileno())
        finally:
            sock.close()  # the server holds its own duplicate of the socket
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address; with the token (after ``#``) where one is required."""
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"#token={self.token}" if self.token else "")

    def start(self) -> RatingServer:
        """Serve in a background thread (for ``mode="web"``); returns self."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rating-page", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (``adaptiverl rate``)."""
        self._httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    # ---- requests --------------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        request.max_content_length = MAX_BODY
        try:
            response = self._route(request)
        except HTTPException as exc:
            response = _json({"error": exc.description}, exc.code or 500)
        response.headers.update(SECURITY_HEADERS)
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        if is_loopback(self.host) and request.host not in self._loopback_hosts():
            return _json({"error": f"unexpected Host {request.host!r}"}, 403)
        if request.path in STATIC and request.method in ("GET", "HEAD"):
            name, mime = STATIC[request.path]
            return Response((resources.files("adaptiverl.rewards") / "static" / name).read_bytes(), mimetype=mime)
        if request.path not in ("/api/state", "/api/answer"):
            return _json({"error": "not found"}, 404)
        if self.token is not None and not hmac.compare_digest(
                request.headers.get(TOKEN_HEADER, "").encode(), self.token.encode()):
            return _json({"error": "missing or wrong access token"}, 401)
        if request.path == "/api/state":
            if request.method != "GET":
                return _json({"error": "GET only"}, 405)
            with self._lock:
                self.state.refresh()
                return _json(self.state.view())
        if request.method != "POST":
            return _json({"error": "POST only"}, 405)
        return self._answer(request)

    def _loopback_hosts(self) -> set[str]:
        return {f"{name}:{self.port}" for name in ("127.0.0.1", "localhost", "[::1]")}

    def _answer(self, request: Request) -> Response:
        if request.mimetype != "application/json":
            return _json({"error": "an answer is a JSON body (Content-Type: application/json)"}, 415)
        if (request.content_length or 0) > MAX_BODY:
            raise RequestEntityTooLarge()
        try:
            body = json.loads(request.get_data(cache=False))
        except ValueError:
            return _json({"error": "the body is not JSON"}, 400)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return _json({"error": 'expected {"id": "...", "rating": 1 | -1 | "skip", "rater": "..."}'}, 400)
        rating = body.get("rating")
        if rating not in (1, -1, "skip") or isinstance(rating, bool):
            return _json({"error": f"rating must be 1, -1 or \"skip\", got {rating!r}"}, 400)
        rater = body.get("rater") or None
        if rater is not None and (not isinstance(rater, str) or len(rater) > MAX_RATER):
            return _json({"error": f"rater must be a name of at most {MAX_RATER} characters"}, 400)
        key = body["id"]
        with self._lock:
            self.state.refresh()
            req = self.state.requests.get(key)
            if req is None:
                return _json({"error": "unknown sample id"}, 404)
            if key not in self.state.counted and self.state.expired(req, time.time()):
                return _json({"error": "the trainer stopped waiting for this sample"}, 410)
            record = {"id": key, "rating": rating, "time": time.time(), "via": "web"}
            if rater is not None:
                record["rater"] = rater
            append_jsonl(self.state.answers_path, [record])  # flushed and fsynced: only then "saved"
            self.state.refresh()
            first = self.state.counted[key]
        return _json({"saved": True, "counted": first == record, "reward": parse_rating(first.get("rating"))[1],
                      "rater": first.get("rater")})


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")
