"""Structured outputs end to end: the tiny random model behind the real server process, the official `openai`
client. Every constrained answer must parse and validate against its schema; forced tool calls must come back as
`tool_calls` (finish_reason "tool_calls") whose arguments validate against the tool's parameters. The schemas
bound free strings and numbers so that a random model ends them (tests/test_structured_outputs.py says why)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field
from test_server import MODEL, start_server, stream_chat, tiny_checkpoint, user

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 6}, "unit": {"enum": ["celsius", "fahrenheit"]}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["a", "b"],
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                       "b": {"type": "integer", "minimum": 0, "maximum": 99}}}}},
]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MAX_TOKENS = 150  # the longest output these schemas allow is well under 100 tokens


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Two tools take ~450 prompt tokens of the tiny tokenizer: room for them and a whole call.
    yield from start_server(tiny_checkpoint(tmp_path_factory), tmp_path_factory.mktemp("log") / "server.log",
                            "--max-model-len", "1024")


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def test_json_schema_chat_n_choices_and_stream(client: Any) -> None:
    kw = {"messages": user("Weather in Paris?"), "max_tokens": MAX_TOKENS,
          "response_format": json_schema_format(WEATHER)}
    r = client.chat.completions.create(model=MODEL, n=3, seed=5, temperature=1.0, **kw)
    assert len(r.choices) == 3
    for c in r.choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), WEATHER)
    greedy = client.chat.completions.create(model=MODEL, temperature=0, logprobs=True, top_logprobs=3, **kw).choices[0]
    jsonschema.validate(json.loads(greedy.message.content), WEATHER)
    # Logprobs keep working: one per token, finite, top lists only of tokens the grammar allowed.
    assert greedy.logprobs.content and all(t.logprob > -1e30 for t in greedy.logprobs.content)
    text, _, finish, _ = stream_chat(client, temperature=0, **kw)
    assert (text, finish) == (greedy.message.content, "stop")


class Forecast(BaseModel):
    city: str = Field(max_length=6)
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=1, le=7)


def test_openai_parse_helper(client: Any) -> None:
    # openai >= 1.92 has it here; older versions (the dev extra allows >= 1.30) under client.beta.
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(model=MODEL, messages=user("Forecast?"), response_format=Forecast, max_tokens=MAX_TOKENS, seed=3)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Forecast) and 1 <= parsed.days <= 7 and len(parsed.city) <= 6


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "add"}}],
                         ids=["required", "named"])
def test_forced_tool_call_is_a_valid_call(client: Any, tool_choice: Any) -> None:
    kw = {"messages": user("Do something."), "tools": TOOLS, "tool_choice": tool_choice,
          "max_tokens": MAX_TOKENS}
    r = client.chat.completions.create(model=MODEL, n=2, seed=11, temperature=1.0, **kw)
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c
        call = c.message.tool_calls[0].function
        assert tool_choice == "required" or call.name == "add"
        jsonschema.validate(json.loads(call.arguments), PARAMETERS[call.name])
    text, deltas, finish, _ = stream_chat(client, seed=11, temperature=1.0, **kw)
    assert finish == "tool_calls" and text == "" and len(deltas) == 1
    assert deltas[0].function.name == r.choices[0].message.tool_calls[0].function.name


def test_completions_response_format(client: Any) -> None:
    r = client.completions.create(model=MODEL, prompt="JSON:", max_tokens=MAX_TOKENS, seed=1, n=2,
                                  extra_body={"response_format": json_schema_format(WEATHER)})
    for c in r.choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.text), WEATHER)


def test_max_tokens_cuts_a_constrained_output(client: Any) -> None:
    c = client.chat.completions.create(model=MODEL, messages=user("Weather?"), max_tokens=3,
                                       response_format=json_schema_format(WEATHER)).choices[0]
    assert c.finish_reason == "length" and c.message.content.startswith('{"')


BAD = [  # (id, body fields, param): each a 400 naming the field
    ("unsupported type", {"response_format": {"type": "xml"}}, "response_format"),
    ("json_schema without schema", {"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}},
     "response_format"),
    ("schema not an object", {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": 5}}},
     "response_format"),
    ("unknown schema type", {"response_format": json_schema_format({"type": "nope"})}, "response_format"),
    ("bad pattern", {"response_format": json_schema_format({"type": "string", "pattern": "(("})}, "response_format"),
    ("dangling $ref", {"response_format": json_schema_format({"$ref": "#/defs/x"})}, "response_format"),
    ("with a forced tool call", {"tools": TOOLS, "tool_choice": "required",
                                 "response_format": {"type": "json_object"}}, "response_format"),
    ("required without tools", {"tool_choice": "required"}, "tool_choice"),
    ("unknown tool name", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "tool_choice"),
    ("invalid tool parameters", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}}}],
        "tool_choice": "required"}, "tools"),
    ("skip_special_tokens not bool", {"skip_special_tokens": "no"}, "skip_special_tokens"),
    ("spaces_between_special_tokens not bool", {"spaces_between_special_tokens": 1}, "spaces_between_special_tokens"),
]


@pytest.mark.parametrize("fields, param", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_structured_request_is_400(server: str, fields: dict[str, Any], param: str) -> None:
    body = {"model": MODEL, "messages": user("hi"), "max_tokens": 5, **fields}
    resp = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    completion = {"model": MODEL, "prompt": "hi", "max_tokens": 5, "response_format": {"type": "xml"}}
    assert httpx.post(f"{server}/v1/completions", json=completion, timeout=60).status_code == 400
