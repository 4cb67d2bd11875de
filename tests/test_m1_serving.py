"""MiniMax-M1 and Text-01 chat formats end to end: `minimax01 serve` (a real process on 127.0.0.1) over
checkpoints whose weights force their output (tests/forced_output.py), queried with the official `openai`
client. The reasoning, the answer and the tool calls are produced by the model and parsed by the server; the M1
prompt comes from the checkpoint's own template, written here from M1's published format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from forced_output import write_forced_checkpoint
from server_process import serve_cli

BOS, EOS = "<beginning_of_sentence>", "<end_of_sentence>"
M1_GEN_PROMPT = f"{BOS}ai name=MiniMax AI\n"
TEXT01_GEN_PROMPT = f"{BOS}ai name=assistant\n"
REASONING = "\nThe user asks about Paris. I could write <tool_calls> here, but only thinking.\n"
ANSWER = "Let me look: 上海 → Paris."
M1_CALLS = [("get_weather", {"city": "Paris", "opts": {"units": ["c", "f"], "days": 2}}),
            ("search_web", {"query_list": ["météo ☀"]})]
M1_OUTPUT = (f"<think>{REASONING}</think>\n{ANSWER}<tool_calls>\n"
             + "".join(json.dumps({"name": n, "arguments": a}, ensure_ascii=False) + "\n" for n, a in M1_CALLS)
             + "</tool_calls>")
TEXT01_CONTENT = "Let me check."
TEXT01_OUTPUT = TEXT01_CONTENT + '<function_call>```typescript\nfunctions.get_weather({"city": "Paris"})\n```'
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]

# M1's prompt format: plain-string content, <begin_of_document> first, tools in a tool_setting turn, calls as
# <tool_calls> lines, results in a `tool name=tools` turn. `thinking=false` (a chat_template_kwargs switch)
# closes an empty reasoning block in the prompt.
M1_TEMPLATE = (
    "{{- '<begin_of_document>' -}}"
    "{%- for message in messages if message.role == 'system' -%}"
    "{{- '" + BOS + "system ai_setting=MiniMax AI\\n' + message.content + '" + EOS + "\\n' -}}"
    "{%- endfor -%}"
    "{%- if tools -%}"
    "{{- '" + BOS + "system tool_setting=tools\\nYou are provided with these tools:\\n<tools>\\n' -}}"
    "{%- for tool in tools -%}{{- tool | tojson + '\\n' -}}{%- endfor -%}"
    "{{- '</tools>\\n\\nIf you need to call tools, please respond with <tool_calls></tool_calls> XML tags.'"
    " + '" + EOS + "\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}"
    "{{- '" + BOS + "user name=user\\n' + message.content + '" + EOS + "\\n' -}}"
    "{%- elif message.role == 'assistant' -%}"
    "{{- '" + BOS + "ai name=MiniMax AI\\n' + message.content -}}"
    "{%- if message.tool_calls -%}{{- '<tool_calls>\\n' -}}"
    "{%- for call in message.tool_calls -%}"
    "{{- {'name': call.function.name, 'arguments': call.function.arguments} | tojson + '\\n' -}}"
    "{%- endfor -%}{{- '</tool_calls>' -}}{%- endif -%}"
    "{{- '" + EOS + "\\n' -}}"
    "{%- elif message.role == 'tool' -%}"
    "{%- if loop.first or loop.previtem.role != 'tool' -%}{{- '" + BOS + "tool name=tools\\n' -}}{%- endif -%}"
    "{{- 'tool name: ' + message.name + '\\ntool result: ' + message.content + '\\n' -}}"
    "{%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '" + EOS + "\\n' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + BOS + "ai name=MiniMax AI\\n' -}}"
    "{%- if thinking is defined and not thinking -%}{{- '<think>\\n</think>\\n' -}}{%- endif -%}{%- endif -%}"
)
MODEL = "forced"


def serve(checkpoint: Path, log: Path, *flags: str) -> Iterator[Any]:
    """`minimax01 serve` on a free port; yields an openai client once /health answers."""
    from openai import OpenAI

    urls = serve_cli(checkpoint, log, "--max-model-len", "1024", "--served-model-name", MODEL, *flags)
    try:
        yield OpenAI(base_url=f"{next(urls)}/v1", api_key="unused", max_retries=0, timeout=120)
    finally:
        urls.close()  # stops the server now, not whenever the generator is collected


@pytest.fixture(scope="module")
def m1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_forced_checkpoint(tmp_path_factory.mktemp("m1") / "ckpt", M1_OUTPUT, M1_GEN_PROMPT,
                                   chat_template=M1_TEMPLATE, generation_config={"temperature": 1.0, "top_p": 0.95})


@pytest.fixture(scope="module")
def m1(m1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from serve(m1_dir, tmp_path_factory.mktemp("log") / "m1.log")


@pytest.fixture(scope="module")
def text01(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    ckpt = write_forced_checkpoint(tmp_path_factory.mktemp("t01") / "ckpt", TEXT01_OUTPUT, TEXT01_GEN_PROMPT)
    yield from serve(ckpt, tmp_path_factory.mktemp("log") / "t01.log")


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def calls_of(tool_calls: Any) -> list[tuple[str, Any]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in tool_calls]


def stream(client: Any, **kw: Any) -> dict[str, Any]:
    """The streamed pieces of one chat completion, joined per field."""
    got: dict[str, Any] = {"reasoning": "", "content": "", "calls": [], "finish": None, "chunks": 0}
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kw):
        for c in chunk.choices:
            got["chunks"] += 1
            got["reasoning"] += (c.delta.model_extra or {}).get("reasoning_content") or ""
            got["content"] += c.delta.content or ""
            got["calls"] += c.delta.tool_calls or []
            got["finish"] = c.finish_reason or got["finish"]
    return got


def test_m1_reasoning_answer_and_tool_calls(m1: Any) -> None:
    kw = {"messages": user("Weather in Paris?"), "tools": TOOLS, "max_tokens": 200}
    r = m1.chat.completions.create(model=MODEL, **kw).choices[0]  # sampled (generation_config: T 1, top_p .95)
    assert r.finish_reason == "tool_calls"
    assert r.message.model_extra["reasoning_content"] == REASONING  # the <tool_calls> in it is not a call
    assert r.message.content == ANSWER
    assert calls_of(r.message.tool_calls) == M1_CALLS
    s = stream(m1, **kw)
    assert (s["reasoning"], s["content"], s["finish"]) == (REASONING, ANSWER, "tool_calls")
    assert [d.index for d in s["calls"]] == [0, 1] and calls_of(s["calls"]) == M1_CALLS
    assert s["chunks"] > 10  # really streamed, piece by piece


def test_m1_without_tools_keeps_calls_as_content(m1: Any) -> None:
    r = m1.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=200).choices[0]
    assert r.message.model_extra["reasoning_content"] == REASONING
    assert r.message.content == M1_OUTPUT.split("</think>\n", 1)[1] and r.message.tool_calls is None


def hand_rendered_m1(tool_result: str) -> str:
    """The M1 prompt of the conversation in test_m1_prompt_from_checkpoint_template, written out by hand."""
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}, ensure_ascii=False)
    tool = json.dumps(TOOLS[0]["function"], ensure_ascii=False)
    return ("<begin_of_document>"
            f"{BOS}system ai_setting=MiniMax AI\nBe brief.{EOS}\n"
            f"{BOS}system tool_setting=tools\nYou are provided with these tools:\n<tools>\n{tool}\n</tools>\n\n"
            f"If you need to call tools, please respond with <tool_calls></tool_calls> XML tags.{EOS}\n"
            f"{BOS}user name=user\nWeather?{EOS}\n"
            f"{BOS}ai name=MiniMax AI\nOk.<tool_calls>\n{call}\n</tool_calls>{EOS}\n"
            f"{BOS}tool name=tools\ntool name: get_weather\ntool result: {tool_result}\n{EOS}\n"
            f"{BOS}ai name=MiniMax AI\n")


def test_m1_prompt_from_checkpoint_template(m1: Any, m1_dir: Path) -> None:
    from minimax01.chat.template import render_chat
    from minimax01.tokenizer import load_tokenizer

    tok = load_tokenizer(m1_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Ok."}], "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 °C"}]
    r = m1.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=1)
    expected = hand_rendered_m1("sunny, 21 °C")
    assert r.usage.prompt_tokens == len(tok.encode(expected))
    # Text-01's template (what the server used before it read the checkpoint's) gives another prompt.
    assert len(tok.encode(render_chat(messages, TOOLS))) != r.usage.prompt_tokens
    # chat_template_kwargs reach the template: thinking=false closes an empty reasoning block in the prompt.
    off = m1.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=1,
                                     extra_body={"chat_template_kwargs": {"thinking": False}})
    assert off.usage.prompt_tokens == len(tok.encode(expected + "<think>\n</think>\n"))
    bad = httpx.post(f"{m1.base_url}chat/completions", json={
        "model": MODEL, "messages": user("x"), "chat_template_kwargs": {"messages": []}})
    assert bad.status_code == 400 and "chat_template_kwargs" in bad.json()["error"]["message"]


def test_parser_flags_override_the_detected_family(m1_dir: Path, tmp_path: Path) -> None:
    # --reasoning-parser none: the reasoning stays in the content, and its <tool_calls> is still not a call.
    for client in serve(m1_dir, tmp_path / "none.log", "--reasoning-parser", "none"):
        r = client.chat.completions.create(model=MODEL, messages=user("x"), tools=TOOLS, max_tokens=200).choices[0]
        assert "reasoning_content" not in (r.message.model_extra or {})
        assert r.message.content == f"<think>{REASONING}</think>\n{ANSWER}"
        assert calls_of(r.message.tool_calls) == M1_CALLS


def test_text01_function_call_forced_by_weights(text01: Any) -> None:
    kw = {"messages": user("Weather in Paris?"), "tools": TOOLS, "max_tokens": 100, "temperature": 0}
    r = text01.chat.completions.create(model=MODEL, **kw).choices[0]
    assert (r.finish_reason, r.message.content) == ("tool_calls", TEXT01_CONTENT)
    assert "reasoning_content" not in (r.message.model_extra or {})
    assert calls_of(r.message.tool_calls) == [("get_weather", {"city": "Paris"})]
    s = stream(text01, **kw)
    assert (s["content"], s["finish"], s["reasoning"]) == (TEXT01_CONTENT, "tool_calls", "")
    assert calls_of(s["calls"]) == [("get_weather", {"city": "Paris"})]


def test_m1_reasons_then_answers_the_response_format(tmp_path: Path) -> None:
    # The grammar lets M1 think first; the answer after </think> is the constrained JSON (the weights force both
    # here, so the test checks that the grammar lets reasoning through and ends with the value).
    answer = {"city": "Paris", "days": 3}
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
              "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
    ckpt = write_forced_checkpoint(tmp_path / "ckpt", f"<think>{REASONING}</think>\n\n{json.dumps(answer)}",
                                   M1_GEN_PROMPT, chat_template=M1_TEMPLATE)
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}}
    for client in serve(ckpt, tmp_path / "json.log"):
        r = client.chat.completions.create(model=MODEL, messages=user("Weather?"), response_format=fmt,
                                           max_tokens=200, temperature=0).choices[0]
        assert r.message.model_extra["reasoning_content"] == REASONING and json.loads(r.message.content) == answer
        assert r.finish_reason == "stop"
        got = stream(client, messages=user("Weather?"), response_format=fmt, max_tokens=200, temperature=0)
        assert (got["reasoning"], json.loads(got["content"]), got["finish"]) == (REASONING, answer, "stop")
