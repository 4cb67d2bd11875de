"""Malformed requests against a real server process (default body cap, no API key): every one is answered with a
4xx and an OpenAI-style error body, never a 5xx, and the keep-alive connection it came on stays usable (the
next request on the same socket, GET /health, answers 200)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import pytest
from test_server import MODEL, start_server, tiny_checkpoint, user

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_server(tiny_checkpoint(tmp_path_factory), tmp_path_factory.mktemp("log") / "server.log")


@pytest.fixture
def conn(server: str) -> Iterator[HTTPConnection]:
    """A fresh keep-alive connection per test, so that one broken connection fails one test only."""
    c = HTTPConnection(server.removeprefix("http://"), timeout=120)
    c.connect()
    yield c
    c.close()


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": user("hi"), "max_tokens": 2, **kw}


def completion(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **kw}


def post(conn: HTTPConnection, path: str, body: bytes | Any) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def check_rejected(conn: HTTPConnection, path: str, body: bytes | Any) -> dict[str, Any]:
    """Posts `body`; asserts a 4xx with an error body and a live /health on the same socket; returns the error."""
    sock = conn.sock
    status, reply = post(conn, path, body)
    assert 400 <= status < 500, (status, reply)
    err = reply["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert isinstance(err["message"], str) and 0 < len(err["message"]) < 400, err
    conn.request("GET", "/health")
    health = conn.getresponse()
    assert (health.status, health.read()) == (200, b'{"status":"ok"}')
    assert conn.sock is sock is not None, "the server closed the keep-alive connection"
    return err


DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON text, far deeper than any recursive reader goes
NASTY = [  # (id, path, raw body): each was a 500 before (RecursionError, ValueError, TypeError)
    ("body nested 100000 deep", CHAT, b'{"model": "tiny-test", "messages": ' + DEEP.encode() + b"}"),
    ("body nested 500 deep", CHAT, json.dumps(chat(user=json.loads("[" * 500 + "]" * 500))).encode()),
    ("max_tokens of 5000 digits", CHAT,
     b'{"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}"),
    ("lone surrogate in prompt", COMPLETIONS, b'{"model": "tiny-test", "prompt": "a\\ud83d b", "max_tokens": 2}'),
    ("lone surrogate in chat content", CHAT,
     b'{"model": "tiny-test", "messages": [{"role": "user", "content": "\\ud83d"}], "max_tokens": 2}'),
    ("lone surrogate in tool description", CHAT,
     json.dumps(chat(tools=[{"type": "function", "function": {"name": "f", "description": "\ud83d"}}])).encode()),
    ("nested tool call arguments", CHAT, json.dumps(chat(messages=[
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": DEEP}}]},
        {"role": "user", "content": "hi"}])).encode()),
    ("nested tool message", CHAT, json.dumps(chat(messages=[
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": DEEP}])).encode()),
]


@pytest.mark.parametrize("path, body", [b[1:] for b in NASTY], ids=[b[0] for b in NASTY])
def test_nasty_body_is_4xx_and_keeps_the_connection(conn: HTTPConnection, path: str, body: bytes) -> None:
    check_rejected(conn, path, body)


def test_error_messages_do_not_echo_long_values(conn: HTTPConnection) -> None:
    err = check_rejected(conn, CHAT, chat(stop=[f"stop-string-{i}" for i in range(998)] + [""]))
    assert err["param"] == "stop" and "stop[998]" in err["message"] and len(err["message"]) < 200, err
    err = check_rejected(conn, CHAT, chat(seed=int("7" * 4000)))
    assert err["param"] == "seed" and len(err["message"]) < 200, err
