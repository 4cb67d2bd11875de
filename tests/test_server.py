"""The OpenAI-compatible server, end to end: a real uvicorn process on 127.0.0.1 and the official `openai` client.

The server process runs this file as a script (`python tests/test_server.py --model DIR --port N ...`): it loads
the tiny checkpoint exactly as `minimax01 serve` does and builds the server with `build_server`, the same code
path. The one test-only addition is a *scripted model*: a wrapper of `model.step` that, for sequences
whose prompt contains TRIGGER, overwrites the logits so that the model writes one of SCRIPTS (text and/or a
native `<function_call>` block) and then EOS. Everything downstream is real: sampling, detokenization, the streaming
tool-call parser, SSE framing, the client's parsing. Prompts without TRIGGER get the random model's own logits.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import server_process

TRIGGER = "TOOL-TRIGGER"
CRASH = "CRASH-TRIGGER"  # a prompt containing it makes the model raise (engine failure path)
SLOW = "SLOW-TRIGGER"  # steps that include such a sequence take >= 20 ms (disconnect tests must not race the model)
CONTENT = "Let me check."
CALL = '<function_call>```typescript\nfunctions.get_weather({"city": "Paris"})\n```'
SCRIPTS = (CONTENT + CALL, CALL)  # the second one continues a forced tool_choice prefix
GEN_PROMPT = "<beginning_of_sentence>ai name=assistant\n"
MODEL = "tiny-test"
MAX_MODEL_LEN = 512
MAX_NUM_SEQS = 8
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# ---------------------------------------------------------------------------------------------- server process
def install_script(model: Any, tokenizer: Any) -> None:
    """Makes `model` write SCRIPTS[k] then EOS after the generation prompt of any sequence containing TRIGGER
    (k: the first script that the text generated so far is a prefix of), and raise on a chunk containing CRASH.
    Works per logits row, from the sequence's whole token history, so it is indifferent to batching and
    chunked prefill."""
    real_step = model.step
    history: dict[int, list[int]] = {}  # slot -> token ids of the sequence in it
    eos = tokenizer.eos_token_id

    def next_token(ids: list[int]) -> int | None:
        text = tokenizer.decode(ids)
        cut = text.rfind(GEN_PROMPT)
        if cut < 0 or TRIGGER not in text[:cut]:
            return None
        generated = text[cut + len(GEN_PROMPT):]
        for script in SCRIPTS:
            if script.startswith(generated):
                rest = script[len(generated):]
                return tokenizer.encode(rest)[0] if rest else eos
        return None

    def forward_step(tokens: Any, batch: Any, store: Any, logits_index: Any = None) -> Any:
        flat = tokens.tolist()
        if CRASH in tokenizer.decode(flat):
            raise RuntimeError("injected model failure")
        logits = real_step(tokens, batch, store, logits_index)  # float32 [rows, vocab]
        for i, slot in enumerate(batch.slots):
            seq = flat[batch.cu_seqlens[i]:batch.cu_seqlens[i + 1]]
            history[slot] = history.get(slot, [])[:batch.start_pos[i]] + seq
        if any(SLOW in tokenizer.decode(history[slot]) for slot in batch.slots):
            time.sleep(0.02)
        rows = logits_index.tolist() if logits_index is not None else range(len(flat))
        for r, t in enumerate(rows):
            i = bisect.bisect_right(batch.cu_seqlens, t) - 1
            ids = history[batch.slots[i]][:batch.start_pos[i] + t - batch.cu_seqlens[i] + 1]
            token = next_token(ids)
            if token is not None:
                logits[r] = -1e4  # finite: log_softmax and the exponential race stay NaN-free
                logits[r, token] = 0.0
        return logits

    model.step = forward_step


def server_main(argv: list[str]) -> None:
    from minimax01.loading import load_for_serving
    from minimax01.server.middleware import DEFAULT_MAX_BODY_BYTES
    from minimax01.server.http_server import HttpLimits
    from minimax01.server.serve import build_server, run_server

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-key")
    ap.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    ap.add_argument("--shutdown-timeout", type=float, default=HttpLimits.shutdown_timeout)
    ap.add_argument("--max-model-len", type=int, default=MAX_MODEL_LEN)
    args = ap.parse_args(argv)
    model, tokenizer, stop_ids = load_for_serving(args.model, "fp32", "cpu")
    install_script(model, tokenizer)
    server = build_server(model, tokenizer, MODEL, api_key=args.api_key, max_num_seqs=MAX_NUM_SEQS,
                          max_model_len=args.max_model_len, max_num_batched_tokens=256, kv_block_size=16,
                          stop_token_ids=stop_ids, max_body_bytes=args.max_body_bytes,
                          limits=HttpLimits(shutdown_timeout=args.shutdown_timeout))
    run_server(server, "127.0.0.1", args.port, log_level="warning")


# ---------------------------------------------------------------------------------------------- fixtures
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint every server test serves, written once per session (both server test modules use it)."""
    from minimax01.tiny import write_tiny_checkpoint

    path = tmp_path_factory.getbasetemp() / "server-ckpt"
    if not path.is_dir():
        # 8 layers (7 lightning + 1 softmax): both attention kinds, half the time of the 16-layer default.
        write_tiny_checkpoint(path, seed=0, layers=8)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory)


def start_server(checkpoint: Path, log: Path, *extra: str) -> Iterator[str]:
    """Runs the server script; yields its base URL once /health answers; stops it afterwards."""
    yield from server_process([__file__, "--model", str(checkpoint), *extra], log, 60)


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_server(checkpoint, tmp_path_factory.mktemp("log") / "server.log")


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(checkpoint: Path) -> Any:
    from minimax01.tokenizer import load_tokenizer

    return load_tokenizer(checkpoint)


def metrics(url: str) -> dict[str, float]:
    """Unlabelled samples of /metrics plus `request_finished_total{reason}` (as `finished:<reason>`)."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if m := re.fullmatch(r"minimax01_(\w+) (\S+)", line):
            out[m.group(1)] = float(m.group(2))
        elif m := re.fullmatch(r'minimax01_request_finished_total\{reason="(\w+)"\} (\S+)', line):
            out[f"finished:{m.group(1)}"] = float(m.group(2))
    return out


def wait_idle(url: str, timeout: float = 10.0) -> dict[str, float]:
    """/metrics once no request holds a slot or KV block (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(url)
        if (m["free_slots"] == m["num_slots"] and m["free_kv_blocks"] == m["num_kv_blocks"]
                and m["num_requests_running"] == 0 and m["num_requests_waiting"] == 0):
            return m
        if time.monotonic() > deadline:
            pytest.fail(f"slots or KV blocks still in use: {m}")
        time.sleep(0.05)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def stream_chat(client: Any, **kw: Any) -> tuple[str, list[Any], str | None, Any]:
    """(content, tool-call deltas, finish_reason, usage) of a streamed chat completion."""
    text, calls, finish, usage = "", [], None, None
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            calls += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    return text, calls, finish, usage


# ---------------------------------------------------------------------------------------------- tests
def test_models_health_metrics(server: str, client: Any) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    m = metrics(server)
    assert m["num_slots"] == MAX_NUM_SEQS and m["free_slots"] == MAX_NUM_SEQS


def test_metrics_exposition_format(server: str) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(httpx.get(f"{server}/metrics").text)}
    assert families["minimax01_time_to_first_token_seconds"].type == "histogram"
    assert families["minimax01_inter_token_latency_seconds"].type == "histogram"
    assert families["minimax01_requests"].type == "counter"  # the parser drops the _total suffix
    assert families["minimax01_num_requests_waiting"].type == "gauge"
    assert families["minimax01_free_kv_blocks"].type == "gauge"


def test_cached_tokens_in_usage_and_metrics(client: Any, server: str, tokenizer: Any) -> None:
    """A prompt sent again is served from the prefix cache up to its last multiple of 256 (lcm of the lightning
    block and the 16-token KV page): usage.prompt_tokens_details.cached_tokens says so, in the JSON response and
    in the final usage chunk of a stream, and /metrics counts the hit."""
    before = metrics(server)
    ids = [(7 * i + 3) % 500 for i in range(300)]
    first = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0.0)
    assert first.usage.prompt_tokens == 300 and first.usage.prompt_tokens_details.cached_tokens == 0
    usage = [c.usage for c in client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0.0,
                                                           stream=True, stream_options={"include_usage": True})
             if c.usage is not None]
    assert len(usage) == 1 and usage[0].prompt_tokens_details.cached_tokens == 256
    from minimax01.chat.template import render_chat

    messages = user("cache " * 100)
    assert 256 < len(tokenizer.encode(render_chat(messages))) < 500
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens == 256
    after = wait_idle(server)
    assert after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"] == 512
    assert after["prefix_cache_queries"] - before["prefix_cache_queries"] == 4
    assert after["prefix_cache_snapshot_bytes"] > 0


def test_chat_non_streaming_and_streaming_agree(client: Any, tokenizer: Any) -> None:
    from minimax01.chat.template import render_chat

    kw = {"messages": user("Hello there"), "max_tokens": 10, "seed": 7, "temperature": 1.0, "top_p": 0.9,
              "logprobs": True, "top_logprobs": 3}
    r = client.chat.completions.create(model=MODEL, **kw)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.tool_calls is None
    # usage is exact: the rendered prompt's tokens, and one logprob entry per generated token.
    assert r.usage.prompt_tokens == len(tokenizer.encode(render_chat(kw["messages"])))
    assert r.usage.completion_tokens == len(choice.logprobs.content) <= 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert choice.finish_reason == ("length" if r.usage.completion_tokens == 10 else "stop")
    for entry in choice.logprobs.content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and entry.logprob <= tops[0] + 1e-6
    text, calls, finish, usage = stream_chat(client, stream_options={"include_usage": True}, **kw)
    assert (text, calls, finish) == (choice.message.content, [], choice.finish_reason)
    assert usage.model_dump() == r.usage.model_dump()
    # Same seed, same output; another seed, another output (the seed reaches the sampler).
    again = client.chat.completions.create(model=MODEL, **kw).choices[0].message.content
    other = client.chat.completions.create(model=MODEL, **{**kw, "seed": 8}).choices[0].message.content
    assert again == choice.message.content != other


def test_chat_n_choices_use_consecutive_seeds(client: Any) -> None:
    kw = {"messages": user("pick"), "max_tokens": 6, "temperature": 1.0}
    r = client.chat.completions.create(model=MODEL, n=3, seed=40, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    singles = [client.chat.completions.create(model=MODEL, seed=40 + i, **kw) for i in range(3)]
    assert [c.message.content for c in r.choices] == [s.choices[0].message.content for s in singles]
    assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    assert r.usage.prompt_tokens == singles[0].usage.prompt_tokens  # the prompt is counted once


def test_completions_text_tokens_stream_and_stop(client: Any, tokenizer: Any) -> None:
    kw = {"model": MODEL, "max_tokens": 12, "seed": 3, "temperature": 1.0, "extra_body": {"ignore_eos": True}}
    r = client.completions.create(prompt="def main():", logprobs=2, **kw)
    text = r.choices[0].text
    assert r.usage.completion_tokens == 12 == len(r.choices[0].logprobs.tokens)
    assert r.choices[0].finish_reason == "length"
    # A token-id prompt is the same request as its text.
    ids = tokenizer.encode("def main():")
    by_ids = client.completions.create(prompt=ids, **kw)
    assert by_ids.choices[0].text == text and by_ids.usage.prompt_tokens == len(ids) == r.usage.prompt_tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(prompt="def main():", stream=True, **kw)
                       if c.choices)
    assert streamed == text
    # Stop string: a piece of that output (no replacement character, found after the first few characters).
    m = re.search(r"[^\ufffd]{2}", text[3:])
    assert m, text
    stop = m.group()
    cut = client.completions.create(prompt="def main():", stop=[stop], **kw).choices[0]
    assert (cut.text, cut.finish_reason) == (text[:text.find(stop)], "stop")


def test_tool_call_non_streaming_and_streaming(client: Any) -> None:
    kw = {"messages": user(f"{TRIGGER}: weather in Paris?"), "tools": [WEATHER_TOOL], "max_tokens": 60, "seed": 1}
    r = client.chat.completions.create(model=MODEL, **kw)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == CONTENT
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    text, deltas, finish, _ = stream_chat(client, **kw)
    assert (text, finish) == (CONTENT, "tool_calls")
    (delta,) = deltas  # the parser emits a call once it is complete: one delta with everything
    assert delta.index == 0 and delta.id.startswith("call_") and delta.function.name == "get_weather"
    assert json.loads(delta.function.arguments) == {"city": "Paris"}
    assert r.usage.completion_tokens > 0

    # The result goes back as a tool message and renders (tool_call_id -> name).
    follow = kw["messages"] + [choice.message.model_dump(exclude_none=True),
                               {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    assert client.chat.completions.create(model=MODEL, messages=follow, tools=[WEATHER_TOOL],
                                          max_tokens=2, seed=1).choices[0].finish_reason in ("length", "stop")


def test_tool_choice_none_required_named(client: Any) -> None:
    kw = {"messages": user(f"{TRIGGER}: weather?"), "tools": [WEATHER_TOOL], "max_tokens": 60, "seed": 2}
    # none: the tools are not rendered and nothing is parsed: the native text comes back as content, by default
    # without its special tokens (`<function_call>`), as vLLM does; kept, spaced or not, on request.
    none = client.chat.completions.create(model=MODEL, tool_choice="none", **kw)
    auto = client.chat.completions.create(model=MODEL, **kw)
    assert none.choices[0].message.content == CONTENT + CALL.replace("<function_call>", "")
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"
    for spaced, text in ((False, CONTENT + CALL), (True, CONTENT + CALL.replace("<function_call>", " <function_call> "))):
        body = {"skip_special_tokens": False, "spaces_between_special_tokens": spaced}
        raw = client.chat.completions.create(model=MODEL, tool_choice="none", extra_body=body, **kw)
        assert raw.choices[0].message.content == text
    assert none.usage.prompt_tokens < auto.usage.prompt_tokens
    # required / named: the call prefix is forced, so the model goes straight to the call (no content).
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        r = client.chat.completions.create(model=MODEL, tool_choice=choice, **kw).choices[0]
        assert r.finish_reason == "tool_calls" and not r.message.content
        assert [(c.function.name, json.loads(c.function.arguments)) for c in r.message.tool_calls] == [
            ("get_weather", {"city": "Paris"})]
        text, deltas, finish, _ = stream_chat(client, tool_choice=choice, **kw)
        assert (text, finish, [d.function.name for d in deltas]) == ("", "tool_calls", ["get_weather"])
    # A forced call that does not complete (here: cut by max_tokens) comes back as content, prefix included.
    cut = client.chat.completions.create(model=MODEL, tool_choice="required", **{**kw, "max_tokens": 3}).choices[0]
    assert cut.finish_reason == "length" and cut.message.tool_calls is None
    forced = "<function_call>```typescript\nfunctions."
    assert cut.message.content.startswith(forced) and len(cut.message.content) > len(forced)


def test_32_concurrent_streams_match_solo_runs(server: str, client: Any) -> None:
    from openai import AsyncOpenAI

    def request(i: int) -> dict[str, Any]:
        # Different prompt lengths and sampling settings, so that the batch really is mixed.
        return {"model": MODEL, "messages": user(f"request number {i}" + " more" * (i % 5)), "max_tokens": 8,
                    "seed": 1000 + i, "temperature": 1.0, "logprobs": True,
                    "extra_body": {"ignore_eos": True, "top_k": 50 if i % 2 else 0}}

    async def run_all() -> list[tuple[list[str], str | None]]:
        aclient = AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)

        async def one(i: int) -> tuple[list[str], str | None]:
            tokens, finish = [], None
            async for chunk in await aclient.chat.completions.create(stream=True, **request(i)):
                for c in chunk.choices:
                    tokens += [t.token for t in (c.logprobs.content if c.logprobs else [])]
                    finish = c.finish_reason or finish
            return tokens, finish

        try:
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await aclient.close()

    before = metrics(server)
    together = asyncio.run(run_all())
    assert all(finish == "length" and len(tokens) == 8 for tokens, finish in together)
    m = wait_idle(server)
    assert m["finished:length"] - before.get("finished:length", 0) == 32
    assert m["generation_tokens_total"] - before["generation_tokens_total"] == 32 * 8
    assert m["time_to_first_token_seconds_count"] - before["time_to_first_token_seconds_count"] == 32
    assert m["inter_token_latency_seconds_count"] - before["inter_token_latency_seconds_count"] == 32 * 7
    for i in range(32):  # one at a time
        alone = client.chat.completions.create(**request(i)).choices[0]
        assert [t.token for t in alone.logprobs.content] == together[i][0], i


def test_disconnect_frees_the_slot(server: str) -> None:
    # SLOW: 200 tokens take >= 4 s, so the 1 s client timeout below always fires first.
    body = {"model": MODEL, "messages": user(f"{SLOW} a long story"), "max_tokens": 200, "ignore_eos": True}
    before = metrics(server)
    # Streaming: read two events, then drop the connection.
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{server}/v1/chat/completions",
                                                       json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        seen = 0
        for line in resp.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break
    # Non-streaming: the client gives up long before 200 tokens are done.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/chat/completions", json=body, timeout=1.0)
    m = wait_idle(server)
    assert m.get("finished:abort", 0) - before.get("finished:abort", 0) == 2
    assert m["generation_tokens_total"] - before["generation_tokens_total"] < 2 * 200


def test_engine_failure_is_500_and_server_recovers(server: str, client: Any) -> None:
    from openai import InternalServerError

    from minimax01.server.runner import STEP_FAILED

    with pytest.raises(InternalServerError) as failed:
        client.chat.completions.create(model=MODEL, messages=user(CRASH), max_tokens=4)
    assert failed.value.body["message"] == STEP_FAILED  # the exception's own text stays in the server log
    resp = httpx.post(f"{server}/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": user(CRASH), "max_tokens": 4, "stream": True})
    assert resp.status_code == 200  # the failure happens after the headers: an error event, then [DONE]
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["message"] == STEP_FAILED and events[-1] == "[DONE]"
    wait_idle(server)
    r = client.chat.completions.create(model=MODEL, messages=user("still there?"), max_tokens=3)
    assert r.usage.completion_tokens >= 1


if __name__ == "__main__":
    server_main(sys.argv[1:])
