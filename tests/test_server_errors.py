"""Bad input against a real server process (started with --api-key and a 4 KiB body cap): every malformed request
gets a 4xx with an OpenAI-style error body, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_server import MAX_MODEL_LEN, MODEL, WEATHER_TOOL, start_server, tiny_checkpoint, user

KEY = "sk-test-123"
BODY_CAP = 4096
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    yield from start_server(tiny_checkpoint(tmp_path_factory), log, "--api-key", KEY, "--max-body-bytes",
                            str(BODY_CAP))


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as c:
        yield c


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": user("hi"), "max_tokens": 2, **kw}


def completion(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **kw}


def check_error(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) and err["message"]
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err


BAD_BODIES = [  # (id, path, body, expected param)
    ("array body", CHAT, [1, 2], None),
    ("messages missing", CHAT, {"model": MODEL}, "messages"),
    ("messages not a list", CHAT, chat(messages="hi"), "messages"),
    ("empty messages", CHAT, chat(messages=[]), "messages"),
    ("message without role", CHAT, chat(messages=[{"content": "x"}]), "messages"),
    ("unknown role", CHAT, chat(messages=[{"role": "robot", "content": "x"}]), "messages"),
    ("image content", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages"),
    ("temperature string", CHAT, chat(temperature="hot"), "temperature"),
    ("temperature too high", CHAT, chat(temperature=2.5), "temperature"),
    ("temperature negative", CHAT, chat(temperature=-0.1), "temperature"),
    ("top_p zero", CHAT, chat(top_p=0), "top_p"),
    ("max_tokens float", CHAT, chat(max_tokens=1.5), "max_tokens"),
    ("max_tokens bool", CHAT, chat(max_tokens=True), "max_tokens"),
    ("max_tokens negative", CHAT, chat(max_tokens=-5), "max_tokens"),
    ("max_tokens zero", COMPLETIONS, completion(max_tokens=0), "max_tokens"),
    ("max_tokens huge", CHAT, chat(max_tokens=10**12), "max_tokens"),
    ("max_completion_tokens huge", CHAT, chat(max_completion_tokens=MAX_MODEL_LEN), "max_completion_tokens"),
    ("n zero", CHAT, chat(n=0), "n"),
    ("n huge", CHAT, chat(n=1000), "n"),
    ("stream not bool", CHAT, chat(stream="yes"), "stream"),
    ("stream_options without stream", CHAT, chat(stream_options={"include_usage": True}), "stream_options"),
    ("stop not strings", CHAT, chat(stop=[1]), "stop"),
    ("empty stop string", CHAT, chat(stop=[""]), "stop"),
    ("seed string", CHAT, chat(seed="1"), "seed"),
    ("presence_penalty", CHAT, chat(presence_penalty=3), "presence_penalty"),
    ("repetition_penalty", CHAT, chat(repetition_penalty=0), "repetition_penalty"),
    ("top_k", CHAT, chat(top_k=-2), "top_k"),
    ("min_p", CHAT, chat(min_p=1.5), "min_p"),
    ("top_logprobs without logprobs", CHAT, chat(top_logprobs=2), "top_logprobs"),
    ("top_logprobs too many", CHAT, chat(logprobs=True, top_logprobs=50), "top_logprobs"),
    ("logit_bias", CHAT, chat(logit_bias={"5": 10}), "logit_bias"),
    ("response_format unsupported type", CHAT, chat(response_format={"type": "yaml"}), "response_format"),
    ("response_format invalid schema", COMPLETIONS,
     completion(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "x"}}}),
     "response_format"),
    ("tools not a list", CHAT, chat(tools={"a": 1}), "tools"),
    ("tool name invalid", CHAT, chat(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools"),
    ("tool parameters not object", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]), "tools"),
    ("tool defined twice", CHAT, chat(tools=[WEATHER_TOOL, WEATHER_TOOL]), "tools"),
    ("tool_choice without tools", CHAT, chat(tool_choice="required"), "tool_choice"),
    ("tool_choice unknown name", CHAT,
     chat(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "other"}}), "tool_choice"),
    ("tool_choice bad string", CHAT, chat(tools=[WEATHER_TOOL], tool_choice="always"), "tool_choice"),
    ("tool result for unknown call", CHAT,
     chat(messages=[{"role": "tool", "tool_call_id": "x", "content": "1"}]), "messages"),
    ("prompt wrong type", COMPLETIONS, completion(prompt=5), "prompt"),
    ("empty prompt", COMPLETIONS, completion(prompt=""), "prompt"),
    ("empty token prompt", COMPLETIONS, completion(prompt=[]), "prompt"),
    ("token id out of vocab", COMPLETIONS, completion(prompt=[1, 10**6]), "prompt"),
    ("negative token id", COMPLETIONS, completion(prompt=[-1]), "prompt"),
    ("suffix", COMPLETIONS, completion(suffix="end"), "suffix"),
    ("prompt_logprobs too many", COMPLETIONS, completion(prompt_logprobs=21), "prompt_logprobs"),
    ("prompt_logprobs negative", COMPLETIONS, completion(echo=True, max_tokens=0, prompt_logprobs=-1),
     "prompt_logprobs"),
    ("echo logprobs too many", COMPLETIONS, completion(echo=True, max_tokens=0, logprobs=21), "logprobs"),
    ("max_tokens negative with echo", COMPLETIONS, completion(echo=True, max_tokens=-1), "max_tokens"),
    ("too many choices", COMPLETIONS, completion(prompt=["a"] * 10, n=10), "prompt"),
    ("mixed prompt list", COMPLETIONS, completion(prompt=["a", [5]]), "prompt"),
    ("completion logprobs too many", COMPLETIONS, completion(logprobs=99), "logprobs"),
]


@pytest.mark.parametrize("path, body, param", [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
def test_bad_body_is_400(http: httpx.Client, path: str, body: Any, param: str | None) -> None:
    check_error(http.post(path, json=body), 400, param)


def test_prompt_longer_than_max_model_len(http: httpx.Client) -> None:
    long = "word " * MAX_MODEL_LEN  # at least one token per word
    check_error(http.post(CHAT, json=chat(messages=user(long))), 400, "messages", "context_length_exceeded")
    check_error(http.post(COMPLETIONS, json=completion(prompt=[5] * MAX_MODEL_LEN)), 400, "prompt",
                "context_length_exceeded")
    check_error(http.post(COMPLETIONS, json=completion(prompt=[5] * 10, max_tokens=MAX_MODEL_LEN - 9)), 400,
                "max_tokens", "context_length_exceeded")


def test_unknown_model_is_404(http: httpx.Client) -> None:
    check_error(http.post(CHAT, json=chat(model="gpt-4")), 404, "model", "model_not_found")


@pytest.mark.parametrize("content, what", [(b'{"model": ', "invalid JSON"), (b"\xff\xfe{}", "non-UTF-8"),
                                           (b"", "empty body")])
def test_undecodable_body_is_400(http: httpx.Client, content: bytes, what: str) -> None:
    check_error(http.post(CHAT, content=content, headers={"Content-Type": "application/json"}), 400)


def test_body_over_cap_is_413(http: httpx.Client) -> None:
    big = chat(messages=user("x" * BODY_CAP))
    check_error(http.post(CHAT, json=big), 413, code="request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is enforced while reading
        yield b'{"model": "tiny-test", "messages": [{"role": "user", "content": "'
        for _ in range(BODY_CAP // 512 + 1):
            yield b"y" * 512
        yield b'"}]}'

    check_error(http.post(CHAT, content=chunks()), 413, code="request_too_large")


def test_routes_and_methods(http: httpx.Client) -> None:
    check_error(http.get("/v1/nothing"), 404)
    check_error(http.get(CHAT), 405)


def test_api_key(server: str) -> None:
    from openai import AuthenticationError, OpenAI

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        check_error(httpx.post(server + CHAT, json=chat(), headers=headers), 401, code="invalid_api_key")
        check_error(httpx.get(server + "/v1/models", headers=headers), 401, code="invalid_api_key")
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    ok = OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    assert ok.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=2).usage.completion_tokens >= 1
    assert httpx.get(f"{server}/health").status_code == 200  # probes need no key


def test_server_still_serves_and_counts_errors(server: str, http: httpx.Client) -> None:
    r = http.post(CHAT, json=chat(max_tokens=3, seed=1))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    metrics = httpx.get(f"{server}/metrics").text
    assert f'minimax01_requests_total{{endpoint="{CHAT}",status="400"}}' in metrics
    assert f'minimax01_requests_total{{endpoint="{CHAT}",status="413"}}' in metrics
    assert 'minimax01_free_slots 8' in metrics
