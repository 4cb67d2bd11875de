"""The OpenAI-compatible HTTP API (FastAPI): /v1/chat/completions, /v1/completions, /v1/models, /health,
/metrics. No model logic here: requests are validated, rendered to token ids (chat.py + tokenizer), handed to the
AsyncEngine, and its outputs are turned into OpenAI response objects or SSE chunks.

Tool calls: the model's native `<function_call>` blocks are parsed by `chat.StreamingToolCallParser` (the same
parser for streaming and non-streaming responses). `tool_choice`:
- "auto" (default with tools): tools are rendered, output is parsed;
- "none": tools are NOT rendered (the model does not see them) and output is returned as plain content;
- "required" / named: the prompt ends with a forced prefix, `<function_call>```typescript\\nfunctions.` (required)
  or `...functions.NAME(` (named), so the model can only continue a call; the prefix is fed to the parser before
  the generated text. Its tokens count as prompt tokens. Without constrained decoding the continuation may still
  be malformed; it is then returned as content (prefix included), never as a broken tool call.

Errors: every failure is `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from minimax01.chat import FUNCTION_CALL, Event, StreamingToolCallParser, ToolCall, normalize_tools, render_chat
from minimax01.errors import RequestError
from minimax01.sampling import SamplingParams
from minimax01.server.runner import AsyncEngine, EngineFailure, Generation, Submission
from minimax01.server.schemas import ChatCompletionRequest, CompletionRequest

# A 1M-token prompt is ~4 MB of text or ~7 MB as a JSON list of token ids.
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
# Engine requests one HTTP request may start (prompts x n): keeps one client from filling the queue alone.
MAX_CHOICES = 64
# Known endpoints are metric labels as they are; any other path is "other" (bounded label cardinality).
_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models")
# How often a non-streaming request checks whether its client is still there.
_DISCONNECT_POLL_S = 0.25
# logprobs of -inf cannot be written in JSON; OpenAI/vLLM clamp to this.
_MIN_LOGPROB = -9999.0


class APIError(Exception):
    """An error answered as OpenAI's `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _param_of(message: str) -> str | None:
    """The field a RequestError message starts with ("messages[0].content must ..." -> "messages")."""
    m = re.match(r"[A-Za-z_]+", message)
    return m.group() if m else None


def _request_error(e: RequestError, names: dict[str, str] | None = None) -> APIError:
    """400 for a RequestError; `names` renames SamplingParams fields to the API fields the client sent."""
    message = str(e)
    param = _param_of(message)
    if names and param in names:
        message = names[param] + message[len(param):]
        param = names[param]
    return APIError(400, message, param=param)


# ---------------------------------------------------------------------------------------------- ASGI middleware
class _Guard:
    """Body size cap (413 from Content-Length at once, or as soon as a chunked body exceeds it) and the
    requests_total metric (status code of every /v1 response)."""

    def __init__(self, app: Any, max_body_bytes: int, count: Callable[[str, int], None]) -> None:
        self.app, self.max_body_bytes, self.count = app, max_body_bytes, count

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        status = [500]

        async def send_counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await self._too_large()(scope, receive, send_counted)
                return
            received = 0

            async def limited_receive() -> dict[str, Any]:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise self._too_large_error()
                return message

            await self.app(scope, limited_receive, send_counted)
        finally:
            if path.startswith("/v1/"):
                self.count(path if path in _ENDPOINTS else "other", status[0])

    def _too_large_error(self) -> APIError:
        return APIError(413, f"request body exceeds {self.max_body_bytes} bytes", code="request_too_large")

    def _too_large(self) -> JSONResponse:
        return self._too_large_error().response()


# ---------------------------------------------------------------------------------------------- helpers
async def _read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"request body is not valid JSON: {e}") from None


def _validate(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors = e.errors()
        err = errors[0]
        param = str(err["loc"][0]) if err["loc"] else None
        alternatives = [x for x in errors if x["loc"] and str(x["loc"][0]) == param and len(x["loc"]) > 1]
        if len(alternatives) > 1:  # a union field: pydantic reports one error per accepted type
            kinds = ", ".join(dict.fromkeys(str(x["loc"][1]) for x in alternatives))
            raise APIError(400, f"{param}: invalid type or value; expected one of: {kinds}", param=param) from None
        loc = ".".join(str(x) for x in err["loc"])
        raise APIError(400, f"{loc or 'body'}: {err['msg']}", param=param) from None


def _clamp_lp(x: float) -> float:
    return max(float(x), _MIN_LOGPROB)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet (GPT-2 scheme): printable bytes map to themselves, the others to
    U+0100 upwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


@dataclass
class _Ctx:
    runner: AsyncEngine
    tokenizer: Any
    model_name: str
    max_model_len: int
    vocab_size: int
    api_key: str | None

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a lone token may hold part of a UTF-8 character)."""
        piece = self.tokenizer.id_to_token(token_id) or ""
        table = _byte_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
        return piece.encode("utf-8")  # special tokens added as whole strings

    def token_str(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")


def _sampling_params(req: Any, ctx: _Ctx, prompt_len: int, max_tokens: int | None, logprobs: int | None,
                     seed: int | None, names: dict[str, str]) -> SamplingParams:
    """SamplingParams of one choice; prompt length and max_tokens are checked against max_model_len.
    `names`: the API names of the max_new_tokens / logprobs fields (for error messages)."""
    if prompt_len >= ctx.max_model_len:
        raise APIError(400, f"the prompt has {prompt_len} tokens; this model's maximum context length is "
                            f"{ctx.max_model_len} tokens (prompt + completion)",
                       param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                       code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = ctx.max_model_len - prompt_len
    elif max_tokens >= 1 and prompt_len + max_tokens > ctx.max_model_len:
        field_name = names["max_new_tokens"]
        raise APIError(400, f"{field_name}={max_tokens} plus the {prompt_len}-token prompt exceeds the maximum "
                            f"context length {ctx.max_model_len}; use at most {ctx.max_model_len - prompt_len}",
                       param=field_name, code="context_length_exceeded")
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    params = SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k, min_p=req.min_p, repetition_penalty=req.repetition_penalty,
        presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        seed=seed, max_new_tokens=max_tokens, stop=stop, logprobs=logprobs, ignore_eos=req.ignore_eos,
    )
    try:
        params.validate()
    except RequestError as e:
        raise _request_error(e, names) from None
    return params


def _seeds(seed: int | None, n: int) -> list[int | None]:
    # Choice i gets seed + i: n independent, reproducible samples.
    return [None if seed is None else seed + i for i in range(n)]


# ---------------------------------------------------------------------------------------------- per choice
@dataclass
class _Choice:
    """Accumulates one choice's outputs; `update()` turns an engine output into content / tool-call events."""

    index: int
    parser: StreamingToolCallParser | None
    finish_reason: str | None = None
    completion_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)

    def start(self, prefix: str) -> list[Event]:
        """Feeds the forced tool-call prefix (tool_choice required/named) to the parser."""
        return self._record(self.parser.feed(prefix)) if (prefix and self.parser) else []

    def update(self, out: Any) -> list[Event]:
        if out.finish_reason == "error":
            raise EngineFailure("the engine failed while generating this request")
        self.token_ids.extend(out.new_token_ids)
        if out.logprobs is not None:
            self.logprobs.extend(out.logprobs)
            self.top_logprobs.extend(out.top_logprobs or [[] for _ in out.logprobs])
        self.completion_tokens = out.completion_tokens
        events: list[Event] = []
        if self.parser is not None:
            events = self.parser.feed(out.new_text)
            if out.finished:
                events += self.parser.finish()
        elif out.new_text:
            events = [out.new_text]
        if out.finished:
            reason = out.finish_reason or "stop"
            self.finish_reason = reason
        events = self._record(events)
        if out.finished and self.tool_calls and self.finish_reason == "stop":
            self.finish_reason = "tool_calls"
        return events

    def _record(self, events: list[Event]) -> list[Event]:
        for e in events:
            (self.tool_calls if isinstance(e, ToolCall) else self.content).append(e)  # type: ignore[arg-type]
        return events


def _chat_logprobs(ctx: _Ctx, ids: list[int], lps: list[float], tops: list[list[tuple[int, float]]]) -> Any:
    def entry(token_id: int, lp: float) -> dict[str, Any]:
        return {"token": ctx.token_str(token_id), "logprob": _clamp_lp(lp), "bytes": list(ctx.token_bytes(token_id))}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in top]}
                        for t, lp, top in zip(ids, lps, tops)]}


def _completion_logprobs(ctx: _Ctx, ids: list[int], lps: list[float], tops: list[list[tuple[int, float]]],
                         offset: int) -> tuple[dict[str, Any], int]:
    tokens = [ctx.token_str(t) for t in ids]
    offsets = []
    for s in tokens:
        offsets.append(offset)
        offset += len(s)
    top = [{ctx.token_str(i): _clamp_lp(v) for i, v in t} for t in tops]
    return {"tokens": tokens, "token_logprobs": [_clamp_lp(x) for x in lps], "top_logprobs": top,
            "text_offset": offsets}, offset


async def _until_disconnect(request: Request, work: asyncio.Future[Any]) -> Any:
    """Awaits `work`, cancelling it (which aborts its engine requests) if the client goes away."""
    while True:
        done, _ = await asyncio.wait({work}, timeout=_DISCONNECT_POLL_S)
        if done:
            return work.result()
        if await request.is_disconnected():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise APIError(499, "client disconnected", code="client_disconnected")


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _sse_stream(chunks: AsyncIterator[dict[str, Any]], generation: Generation) -> AsyncIterator[str]:
    """SSE framing; an error after the headers went out is sent as a final `{"error": ...}` event."""
    try:
        async for chunk in chunks:
            yield _sse(chunk)
    except EngineFailure as e:
        yield _sse(APIError(500, str(e), type="server_error").body())
    finally:
        generation.abort()  # no-op once every request finished; frees the slots when the client went away
    yield "data: [DONE]\n\n"


def _stream_response(chunks: AsyncIterator[dict[str, Any]], generation: Generation) -> StreamingResponse:
    # The background abort also covers a disconnect before the body iterator ever started.
    return StreamingResponse(_sse_stream(chunks, generation), media_type="text/event-stream",
                             headers=_SSE_HEADERS, background=BackgroundTask(generation.abort))


async def _collect(request: Request, generation: Generation, update: Callable[[int, Any], None]) -> None:
    """Feeds every output to `update`; aborts the generation if the client disconnects first."""
    async def run() -> None:
        async for i, out in generation:
            update(i, out)

    try:
        await _until_disconnect(request, asyncio.ensure_future(run()))
    finally:
        generation.abort()


# ---------------------------------------------------------------------------------------------- request checks
def _check_auth(request: Request, ctx: _Ctx) -> None:
    if ctx.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), ctx.api_key.encode()):
        raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")


async def _parse(request: Request, ctx: _Ctx, model: type[BaseModel]) -> Any:
    """Auth, body, schema and model name of a generation request (in the order a client would fix them)."""
    _check_auth(request, ctx)
    req = _validate(model, await _read_json(request))
    if req.model != ctx.model_name:
        raise APIError(404, f"the model {req.model!r} does not exist; this server serves {ctx.model_name!r}",
                       param="model", code="model_not_found")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")
    return req


def _tool_plan(req: ChatCompletionRequest) -> tuple[list[dict[str, Any]] | None, bool, str]:
    """(tools to render, whether to parse tool calls, forced output prefix) for the request's tool_choice."""
    try:
        tools = normalize_tools(req.tools)
    except RequestError as e:
        raise _request_error(e) from None
    choice = req.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    elif choice != "none" and not tools:
        raise APIError(400, "tool_choice requires tools", param="tool_choice")
    if choice == "none":
        return None, False, ""
    if choice == "auto":
        return tools, True, ""
    if choice == "required":
        return tools, True, f"{FUNCTION_CALL}```typescript\nfunctions."
    name = choice.function.name
    if name not in {t["name"] for t in tools or []}:
        raise APIError(400, f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
    return tools, True, f"{FUNCTION_CALL}```typescript\nfunctions.{name}("


def _include_usage(req: Any) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


def _usage(prompt_tokens: int, choices: list[_Choice]) -> dict[str, int]:
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


# ---------------------------------------------------------------------------------------------- chat
def _chat_delta(events: list[Event], first_call: int) -> dict[str, Any]:
    """The `delta` of a chat chunk; tool calls are numbered from `first_call` (calls already sent)."""
    delta: dict[str, Any] = {}
    text = "".join(e for e in events if isinstance(e, str))
    calls = [e for e in events if isinstance(e, ToolCall)]
    if text:
        delta["content"] = text
    if calls:
        delta["tool_calls"] = [{"index": first_call + k, **call.to_openai()} for k, call in enumerate(calls)]
    return delta


def _chat_message(c: _Choice) -> dict[str, Any]:
    content = "".join(c.content)
    msg: dict[str, Any] = {"role": "assistant", "content": content if (content or not c.tool_calls) else None}
    if c.tool_calls:
        msg["tool_calls"] = [t.to_openai() for t in c.tool_calls]
    return msg


async def _chat(request: Request, ctx: _Ctx) -> Response:
    req: ChatCompletionRequest = await _parse(request, ctx, ChatCompletionRequest)
    tools, parse_tools, prefix = _tool_plan(req)

    def tokenize() -> list[int]:
        return ctx.tokenizer.encode(render_chat(req.messages, tools, add_generation_prompt=True) + prefix)

    try:  # off the event loop: a long prompt must not stall the other streams
        prompt_ids = await asyncio.to_thread(tokenize)
    except RequestError as e:
        raise _request_error(e) from None
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    max_tokens, max_field = req.max_tokens, "max_tokens"
    if req.max_completion_tokens is not None:  # OpenAI's newer name wins
        max_tokens, max_field = req.max_completion_tokens, "max_completion_tokens"
    names = {"max_new_tokens": max_field, "logprobs": "top_logprobs"}
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    subs = [Submission(prompt_ids, _sampling_params(req, ctx, len(prompt_ids), max_tokens, logprobs, seed, names),
                       f"{rid}-{i}") for i, seed in enumerate(_seeds(req.seed, req.n))]
    choices = [_Choice(i, StreamingToolCallParser() if parse_tools else None) for i in range(req.n)]
    base = {"id": rid, "created": int(time.time()), "model": ctx.model_name}
    gen = await ctx.runner.submit(subs)

    if not req.stream:
        for c in choices:
            c.start(prefix)
        await _collect(request, gen, lambda i, out: choices[i].update(out))
        return JSONResponse({**base, "object": "chat.completion", "choices": [
            {"index": c.index, "message": _chat_message(c),
             "logprobs": _chat_logprobs(ctx, c.token_ids, c.logprobs, c.top_logprobs) if logprobs is not None else None,
             "finish_reason": c.finish_reason} for c in choices], "usage": _usage(len(prompt_ids), choices)})

    include_usage = _include_usage(req)

    def chunk(c: _Choice, delta: dict[str, Any], lp: Any = None, finish: str | None = None) -> dict[str, Any]:
        out = {**base, "object": "chat.completion.chunk",
               "choices": [{"index": c.index, "delta": delta, "logprobs": lp, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        for c in choices:
            yield chunk(c, {"role": "assistant", "content": ""})
            if events := c.start(prefix):
                yield chunk(c, _chat_delta(events, 0))
        async for i, out in gen:
            c = choices[i]
            calls_sent = len(c.tool_calls)
            delta = _chat_delta(c.update(out), calls_sent)
            lp = _chat_logprobs(ctx, out.new_token_ids, out.logprobs, out.top_logprobs) if out.logprobs else None
            if delta or lp:
                yield chunk(c, delta, lp)
            if out.finished:
                yield chunk(c, {}, None, c.finish_reason)
        if include_usage:
            yield {**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage(len(prompt_ids), choices)}

    return _stream_response(chunks(), gen)


# ---------------------------------------------------------------------------------------------- completions
async def _completion_prompts(req: CompletionRequest, ctx: _Ctx) -> list[list[int]]:
    """Token ids of every prompt (a string, a list of ids, or a list of either)."""
    raw = req.prompt
    items = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)
    prompts = [await asyncio.to_thread(ctx.tokenizer.encode, item) if isinstance(item, str) else list(item)
               for item in items]
    if not prompts or not all(prompts):
        raise APIError(400, "prompt must not be empty", param="prompt")
    for ids in prompts:
        bad = next((t for t in ids if not 0 <= t < ctx.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"prompt token id {bad} is outside the vocabulary [0, {ctx.vocab_size})",
                           param="prompt")
    if len(prompts) * req.n > MAX_CHOICES:
        raise APIError(400, f"{len(prompts)} prompts x n={req.n} exceeds {MAX_CHOICES} choices per request",
                       param="prompt")
    return prompts


async def _completions(request: Request, ctx: _Ctx) -> Response:
    req: CompletionRequest = await _parse(request, ctx, CompletionRequest)
    if req.echo:
        raise APIError(400, "echo is not supported", param="echo")
    if req.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    prompts = await _completion_prompts(req, ctx)
    rid = f"cmpl-{uuid.uuid4().hex}"
    names = {"max_new_tokens": "max_tokens"}
    # Choice p * n + i: prompt p, seed + i.
    subs = [Submission(ids, _sampling_params(req, ctx, len(ids), req.max_tokens, req.logprobs, seed, names),
                       f"{rid}-{p * req.n + i}")
            for p, ids in enumerate(prompts) for i, seed in enumerate(_seeds(req.seed, req.n))]
    choices = [_Choice(i, None) for i in range(len(subs))]
    prompt_tokens = sum(len(ids) for ids in prompts)
    base = {"id": rid, "created": int(time.time()), "model": ctx.model_name}
    gen = await ctx.runner.submit(subs)

    if not req.stream:
        await _collect(request, gen, lambda i, out: choices[i].update(out))
        return JSONResponse({**base, "object": "text_completion", "choices": [
            {"index": c.index, "text": "".join(c.content),
             "logprobs": (_completion_logprobs(ctx, c.token_ids, c.logprobs, c.top_logprobs, 0)[0]
                          if req.logprobs is not None else None),
             "finish_reason": c.finish_reason} for c in choices], "usage": _usage(prompt_tokens, choices)})

    include_usage = _include_usage(req)
    offsets = [0] * len(subs)  # text_offset of each choice's next token

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async for i, out in gen:
            text = "".join(choices[i].update(out))
            lp = None
            if out.logprobs:
                lp, offsets[i] = _completion_logprobs(ctx, out.new_token_ids, out.logprobs, out.top_logprobs,
                                                      offsets[i])
            if text or lp or out.finished:
                chunk = {**base, "object": "text_completion", "choices": [
                    {"index": i, "text": text, "logprobs": lp,
                     "finish_reason": choices[i].finish_reason if out.finished else None}]}
                if include_usage:
                    chunk["usage"] = None
                yield chunk
        if include_usage:
            yield {**base, "object": "text_completion", "choices": [], "usage": _usage(prompt_tokens, choices)}

    return _stream_response(chunks(), gen)


# ---------------------------------------------------------------------------------------------- app factory
def create_app(engine_runner: AsyncEngine, model_name: str, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, tokenizer: Any = None) -> FastAPI:
    """The ASGI app serving `engine_runner` under the model id `model_name`.

    `tokenizer` defaults to the engine's own. With `api_key`, /v1/* requires `Authorization: Bearer <key>`
    (/health and /metrics stay open for probes and scrapers).
    """
    engine = engine_runner.engine
    tok = tokenizer if tokenizer is not None else engine.tokenizer
    if tok is None:
        raise ValueError("the server needs a tokenizer (pass one or give the engine one)")
    ctx = _Ctx(engine_runner, tok, model_name, engine.max_model_len, engine.config.vocab_size, api_key)
    metrics = engine_runner.metrics
    app = FastAPI(title="minimax01", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, max_body_bytes=max_body_bytes,
                       count=lambda ep, status: metrics.requests.inc(endpoint=ep, status=str(status)))

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return APIError(e.status_code, str(e.detail), code=code).response()

    @app.exception_handler(RequestError)  # raised by the engine's add_request: checks the server does not repeat
    async def _engine_request_error(_: Request, e: RequestError) -> JSONResponse:
        return _request_error(e).response()

    @app.exception_handler(EngineFailure)
    async def _engine_error(_: Request, e: EngineFailure) -> JSONResponse:
        return APIError(500, str(e), type="server_error").response()

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, e: Exception) -> JSONResponse:
        return APIError(500, f"internal error: {type(e).__name__}", type="server_error").response()

    @app.get("/health")
    async def health() -> Response:
        if not engine_runner.alive:
            return APIError(503, "the engine thread is not running", type="server_error").response()
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        _check_auth(request, ctx)
        return JSONResponse({"object": "list", "data": [{
            "id": ctx.model_name, "object": "model", "created": int(time.time()), "owned_by": "minimax01",
            "max_model_len": ctx.max_model_len}]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _chat(request, ctx)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _completions(request, ctx)

    return app
