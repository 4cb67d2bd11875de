"""Connection-level behaviour of the HTTP layer, on a real uvicorn server on 127.0.0.1: an unexpected error is
a 500 that keeps the keep-alive connection usable."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from minimax01.parallel.launch import free_port
from minimax01.server.middleware import RequestGuard


def _app_with_a_bug() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestGuard, max_body_bytes=1024, count=lambda endpoint, status: None)

    @app.get("/v1/bug")
    async def bug() -> JSONResponse:
        raise KeyError("a bug in a route")

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app


@pytest.fixture(scope="module")
def buggy_server() -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(_app_with_a_bug(), host="127.0.0.1", port=free_port(),
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):  # bounded by count: up to 60 s for the thread to bind
        if server.started:
            break
        thread.join(0.1)
    assert server.started
    yield f"127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(30)


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
