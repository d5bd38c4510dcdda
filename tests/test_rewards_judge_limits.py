"""HTTPJudgeReward against a hostile or broken server on 127.0.0.1: one deadline per sample and a
cap on the reply's bytes, on the wire and decompressed (issue 18, item 3).

The server is a raw socket server started in the test (a thread per connection). Every loop it
runs is bounded (a byte count or the client hanging up), so it stops by itself.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import tracemalloc
import zlib

import httpx  # noqa: F401  (imported here so that its import time is not counted as the server's)
import pytest

from adaptiverl.rewards.judge import HTTPJudgeReward, JudgeError

GOOD = (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "8"}, '
        b'"finish_reason": "stop"}]}')


def _gzip_bomb(inflated_mb: int) -> bytes:
    """A gzip stream of ``inflated_mb`` MiB of zeros (about 1 KB per MiB on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(inflated_mb)) + packer.flush()


class HostileServer:
    """``behaviour``: drip (one body byte per 0.3 s, at most 20), endless (chunked 64 KiB chunks,
    at most 256 MiB), bomb (a gzip body inflating to 200 MiB), good (a normal reply)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.bomb = _gzip_bomb(200) if behaviour == "bomb" else b""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.sent = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            try:
                self._read_request(conn)
                getattr(self, f"_{self.behaviour}")(conn)
            except OSError:  # the client hung up: this connection is done
                pass

    @staticmethod
    def _read_request(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 1 << 16:
            data += conn.recv(4096)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(4096)

    def _drip(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(20):
            conn.sendall(b" ")
            self.sent += 1
            time.sleep(0.3)

    def _endless(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % (1 << 16) + b" " * (1 << 16) + b"\r\n"
        for _ in range(4096):
            conn.sendall(chunk)
            self.sent += 1 << 16

    def _bomb(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(self.bomb) + self.bomb)
        self.sent += len(self.bomb)

    def _good(self, conn: socket.socket) -> None:
        gz = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        body = gz.compress(GOOD) + gz.flush()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def hostile(request):
    server = HostileServer(request.param)
    yield server
    server.close()


def _grade(url: str, n: int = 1, **kwargs) -> tuple[list | Exception, float]:
    reward = HTTPJudgeReward(url, model="m", api_key_env=None, **kwargs)
    start = time.perf_counter()
    try:
        out: list | Exception = asyncio.run(reward(prompts=["q"] * n, completions=["a"] * n))
    except JudgeError as exc:
        out = exc
    return out, time.perf_counter() - start


@pytest.mark.parametrize("hostile", ["drip"], indirect=True)
def test_a_dripping_server_is_cut_at_the_deadline_retries_included(hostile):
    out, elapsed = _grade(hostile.url, timeout=1.0, max_retries=3, backoff=0.1)
    assert isinstance(out, JudgeError) and "within timeout=1s" in str(out)
    assert 0.9 < elapsed < 1.9, elapsed
    assert hostile.sent <= 5


@pytest.mark.parametrize("hostile", ["endless"], indirect=True)
def test_an_endless_chunked_stream_stops_at_the_byte_cap(hostile):
    out, elapsed = _grade(hostile.url, timeout=10.0, max_reply_bytes=1 << 20)
    assert isinstance(out, JudgeError) and "exceeds max_reply_bytes=1048576" in str(out)
    assert elapsed < 3.0, elapsed
    time.sleep(0.2)  # the server notices the hang-up at its next send
    assert hostile.sent < 16 << 20


@pytest.mark.parametrize("hostile", ["bomb"], indirect=True)
def test_a_gzip_bomb_is_not_inflated_past_the_cap(hostile):
    assert len(hostile.bomb) < 1 << 20  # under the wire cap: only the decompressed cap stops it
    tracemalloc.start()
    try:
        out, elapsed = _grade(hostile.url, timeout=10.0, max_reply_bytes=1 << 20, on_error="none")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == [None] and elapsed < 5.0
    assert peak < 24 << 20, f"peak {peak / 2**20:.0f} MiB while reading a 200 MiB bomb"


@pytest.mark.parametrize("hostile", ["good"], indirect=True)
def test_a_normal_gzip_reply_is_read_under_the_limits(hostile):
    out, elapsed = _grade(hostile.url, n=4, timeout=5.0, max_reply_bytes=4096)
    assert out == [pytest.approx(7 / 9)] * 4 and elapsed < 3.0


def test_max_reply_bytes_is_validated():
    with pytest.raises(ValueError, match="max_reply_bytes"):
        HTTPJudgeReward("http://127.0.0.1:1/v1", model="m", max_reply_bytes=0)
