"""Connection-level behaviour of the HTTP layer (RequestGuard + http_server), on a real server on 127.0.0.1: an
unexpected error is a 500 that keeps the keep-alive connection usable; idle, trickling or short-bodied clients are
disconnected after the read timeout; open connections are capped. Every wait is bounded by a generous socket
timeout, never by how fast the machine is."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from minimax01.parallel.launch import free_port
from minimax01.server.http_server import HttpLimits, server_config
from minimax01.server.middleware import RequestGuard


def _app_with_a_bug(read_timeout: float) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestGuard, max_body_bytes=1024, count=lambda endpoint, status: None,
                       read_timeout=read_timeout)

    @app.get("/v1/bug")
    async def bug() -> JSONResponse:
        raise KeyError("a bug in a route")

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.post("/v1/echo")
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"length": len(await request.body())})

    return app


@contextlib.contextmanager
def running(limits: HttpLimits) -> Iterator[tuple[str, int]]:
    """The test app on 127.0.0.1 behind the real HTTP server stack (server_config), in a thread."""
    config = server_config(_app_with_a_bug(limits.read_timeout), "127.0.0.1", free_port(), limits, "critical")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):  # bounded by count: up to 60 s for the thread to bind
        if server.started:
            break
        thread.join(0.1)
    assert server.started
    try:
        yield "127.0.0.1", config.port
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def buggy_server() -> Iterator[str]:
    with running(HttpLimits()) as (host, port):
        yield f"{host}:{port}"


@pytest.fixture(scope="module")
def short_timeouts() -> Iterator[tuple[str, int]]:
    with running(HttpLimits(read_timeout=1.0, keep_alive_timeout=1.0)) as address:
        yield address


def get(conn: HTTPConnection, path: str) -> tuple[int, Any]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_unexpected_error_is_500_and_keeps_the_connection(buggy_server: str) -> None:
    conn = HTTPConnection(buggy_server, timeout=60)
    try:
        status, body = get(conn, "/v1/bug")
        sock = conn.sock
        assert status == 500 and body["error"]["type"] == "server_error"
        assert body["error"]["message"] == "internal error: KeyError"  # the type only, no details
        assert get(conn, "/health") == (200, {"status": "ok"}) and conn.sock is sock is not None
    finally:
        conn.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket.timeout, 60 s, fails the test)."""
    sock.settimeout(60)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_idle_connection_is_closed_after_the_read_timeout(short_timeouts: tuple[str, int]) -> None:
    with socket.create_connection(short_timeouts) as sock:
        assert read_until_closed(sock) == b""  # nothing was asked, nothing is answered: just closed


def test_partial_head_is_answered_408(short_timeouts: tuple[str, int]) -> None:
    with socket.create_connection(short_timeouts) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: a")  # never finished
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"


def test_trickled_head_does_not_extend_the_deadline(short_timeouts: tuple[str, int]) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    cut = False
    with socket.create_connection(short_timeouts) as sock:
        sock.settimeout(0.25)
        for byte in head:  # one byte every 0.25 s at least: 50 s in all, far beyond the 1 s deadline
            try:
                sock.send(bytes([byte]))
                sock.recv(65536)  # returns only with a 408 or at the end of the stream: the server cut us off
                cut = True
            except socket.timeout:
                continue
            except ConnectionError:  # the server closed while bytes were still arriving (a TCP reset)
                cut = True
            if cut:
                break
    assert cut, "the server waited for the whole trickled head"


def test_body_shorter_than_content_length_is_408(short_timeouts: tuple[str, int]) -> None:
    with socket.create_connection(short_timeouts) as sock:
        sock.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        answer = read_until_closed(sock)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower(), head
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_idle_keep_alive_connection_is_closed(short_timeouts: tuple[str, int]) -> None:
    with socket.create_connection(short_timeouts) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(sock)  # the response, then the close after the keep-alive timeout
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"status":"ok"}'), answer


def test_connections_over_the_cap_get_503() -> None:
    with running(HttpLimits(max_connections=3)) as address:
        held = [socket.create_connection(address) for _ in range(3)]
        try:
            with socket.create_connection(address) as extra:
                answer = read_until_closed(extra)
            head, body = answer.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 503 "), head
            assert json.loads(body)["error"]["code"] == "too_many_connections"
            held[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_closed(held[0]).startswith(b"HTTP/1.1 200 ")  # those within the cap are served
        finally:
            for sock in held:
                sock.close()


def test_sigterm_ends_streams_at_the_shutdown_timeout_and_exits_0(tmp_path_factory: pytest.TempPathFactory) -> None:
    import signal
    import subprocess
    import sys

    import httpx
    import test_server
    from test_server import MODEL, SLOW, tiny_checkpoint, user

    from minimax01.server.serve import SHUTTING_DOWN

    port, log = free_port(), tmp_path_factory.mktemp("log") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, test_server.__file__, "--model", str(tiny_checkpoint(tmp_path_factory)),
                                 "--port", str(port), "--shutdown-timeout", "2"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # bounded by count: up to ~2 min for the model to load
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        # SLOW: every step takes >= 20 ms, so 400 tokens outlast the 2 s deadline on any machine.
        body = {"model": MODEL, "messages": user(f"{SLOW} story"), "max_tokens": 400, "ignore_eos": True,
                "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as resp, \
                socket.create_connection(("127.0.0.1", port)) as half_sent:
            lines = resp.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # the stream is running
            half_sent.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            proc.send_signal(signal.SIGTERM)
            events = [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["message"] == SHUTTING_DOWN, events[-3:]
        assert len(events) < 400  # ended by the deadline, not by max_tokens
        assert proc.wait(120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
