"""Malformed requests against a real server process (default body cap, no API key): every one is answered with a
4xx and an OpenAI-style error body, never a 5xx, and the keep-alive connection it came on stays usable (the
next request on the same socket, GET /health, answers 200)."""

from __future__ import annotations

import json
import re
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


NAN, INF = float("nan"), float("inf")  # sent as the bare NaN / Infinity tokens Python's JSON reader accepts
REAL_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p", "repetition_penalty")
REAL_BAD = ("x", [1], {"a": 1}, True, NAN, INF)
INT_FIELDS = ("max_tokens", "seed", "n", "top_k", "max_completion_tokens")
INT_BAD = ("x", 1.5, [1], True, NAN, -10**30)
BOOL_FIELDS = ("stream", "ignore_eos", "logprobs", "skip_special_tokens", "spaces_between_special_tokens")
BOOL_BAD = ("yes", 1, [], {})
BAD_MESSAGES = (
    None, {}, "hi", [None], [[]], [{}], [{"role": "user"}], [{"role": None, "content": "x"}],
    [{"role": "user", "content": 5}], [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}], [{"role": "user", "content": [5]}],
    [{"role": "user", "content": "x", "tool_calls": []}],
    [{"role": "assistant", "tool_calls": "x"}], [{"role": "assistant", "tool_calls": [5]}],
    [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": 5}}]}],
    [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{x"}}]}],
    [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "[1]"}}]}],
    [{"role": "assistant", "tool_calls": [{"type": "other", "function": {"name": "f"}}]}],
    [{"role": "function", "content": "1"}], [{"role": "tool", "content": "1"}],
)
BAD_TOOLS = (
    "x", [5], [{}], [{"type": "function"}], [{"type": "function", "function": {}}],
    [{"type": "function", "function": {"name": ""}}], [{"type": "function", "function": {"name": "a b"}}],
    [{"type": "function", "function": {"name": "f", "parameters": 5}}],
    [{"type": "function", "function": {"name": "f", "description": 5}}], [{"type": "retrieval"}],
)
BAD_RESPONSE_FORMATS = (
    "json", 5, [], {}, {"type": None}, {"type": "yaml"}, {"type": "json_schema"},
    {"type": "json_schema", "json_schema": "x"}, {"type": "json_schema", "json_schema": {"schema": {}}},
    {"type": "json_schema", "json_schema": {"name": "a", "schema": []}},
    {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": 5}}},
    {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string", "pattern": "[a-"}}},
    {"type": "json_schema", "json_schema": {"name": "a", "schema": {"properties": {"a": {"$ref": "#/nowhere"}}}}},
    {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "integer", "minimum": "x"}}},
    {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array", "items": 5}}},
    {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string", "minLength": 5,
                                                                    "maxLength": 2}}},
)
BAD_PROMPTS = (None, 5, 1.5, {"a": 1}, [None], [1.5], [True], [[-1]], [["a"]], [[]], [{"a": 1}], "", [""],
               [10**40], [[1, "a"]])
RAW_BODIES = (b"", b" ", b"null", b"5", b'"text"', b"[]", b"{", b'{"model": "tiny-test",}', b"{}" + b"x",
              b"\xef\xbb\xbf{}", b"\x00", b"{'model': 'tiny-test'}", b'{"model": NaN}', b"\xc3\x28",
              b'{"model": "tiny-test", "messages": [' + b"{}," * 10 + b"]}")

FUZZ: list[tuple[str, str, bytes]] = [(f"raw #{i} {body[:12]!r}", CHAT, body) for i, body in enumerate(RAW_BODIES)]
FUZZ += [(f"{f}={v!r}", CHAT, json.dumps(chat(**{f: v})).encode()) for f in REAL_FIELDS for v in REAL_BAD]
FUZZ += [(f"{f}={v!r}", CHAT, json.dumps(chat(**{f: v})).encode()) for f in INT_FIELDS for v in INT_BAD]
FUZZ += [(f"{f}={v!r}", CHAT, json.dumps(chat(**{f: v})).encode()) for f in BOOL_FIELDS for v in BOOL_BAD]
FUZZ += [(f"messages #{i}", CHAT, json.dumps(chat(messages=m)).encode()) for i, m in enumerate(BAD_MESSAGES)]
FUZZ += [(f"tools #{i}", CHAT, json.dumps(chat(tools=t)).encode()) for i, t in enumerate(BAD_TOOLS)]
FUZZ += [(f"response_format #{i} {path}", path, json.dumps(make(response_format=f)).encode())
         for i, f in enumerate(BAD_RESPONSE_FORMATS) for path, make in ((CHAT, chat), (COMPLETIONS, completion))]
FUZZ += [(f"tool_choice #{i}", CHAT, json.dumps(chat(tools=[{"type": "function", "function": t}],
                                                     tool_choice="required")).encode())
         for i, t in enumerate(({"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "x"}}}},
                                {"name": "f", "parameters": {"type": "object", "required": 5}}))]
FUZZ += [(f"prompt #{i}", COMPLETIONS, json.dumps(completion(prompt=p)).encode()) for i, p in enumerate(BAD_PROMPTS)]
FUZZ += [(f"completion logprobs={v!r}", COMPLETIONS, json.dumps(completion(logprobs=v)).encode())
         for v in ("x", -1, 1.5, NAN, 10**30)]
FUZZ += [(f"model={v!r}", COMPLETIONS, json.dumps(completion(model=v)).encode()) for v in (None, 5, "", "other")]


def test_the_fuzz_is_large_enough() -> None:
    assert len(FUZZ) + len(NASTY) >= 100 and len({name for name, _, _ in FUZZ}) == len(FUZZ)


@pytest.mark.parametrize("path, body", [f[1:] for f in FUZZ], ids=[f[0] for f in FUZZ])
def test_malformed_request_is_4xx_and_keeps_the_connection(conn: HTTPConnection, path: str, body: bytes) -> None:
    check_rejected(conn, path, body)


def test_error_messages_do_not_echo_long_values(conn: HTTPConnection) -> None:
    err = check_rejected(conn, CHAT, chat(stop=[f"stop-string-{i}" for i in range(998)] + [""]))
    assert err["param"] == "stop" and "stop[998]" in err["message"] and len(err["message"]) < 200, err
    err = check_rejected(conn, CHAT, chat(seed=int("7" * 4000)))
    assert err["param"] == "seed" and len(err["message"]) < 200, err


def test_the_server_counted_no_5xx(server: str, conn: HTTPConnection) -> None:
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    statuses = re.findall(r'minimax01_requests_total\{endpoint="[^"]+",status="(\d+)"\}', metrics)
    assert statuses and all(s.startswith("4") for s in statuses), statuses  # module order: after the fuzz
