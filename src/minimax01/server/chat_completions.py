"""POST /v1/chat/completions: messages rendered with the served chat template (the checkpoint's, unless
`--chat-template` replaced it; `chat_template_kwargs` from the body are passed to it), the output parsed for
reasoning (`reasoning_content`, when the family has a reasoning parser) and tool calls.

Tool calls: the served model family's parser (`ServerContext.tool_parser`) reads the model's native calls, the
same parser for streaming and non-streaming responses. `tool_choice`:
- "auto" (default with tools): tools are rendered, output is parsed;
- "none": tools are NOT rendered (the model does not see them) and output is returned as plain content;
- "required" / named: the prompt ends with the parser's forced prefix (for MiniMax-Text-01
  `<function_call>```typescript\\nfunctions.`, or `...functions.NAME(` for a named tool), and the output is
  constrained by a grammar (server/structured_outputs.py) to the rest of one call whose arguments match the
  tool's parameter schema, so the response always carries that call (finish_reason "tool_calls" unless max_tokens
  cut it). The prefix is fed to the parser before the generated text; its tokens count as prompt tokens.
While tool calls are parsed, the text keeps special tokens unspaced whatever `skip_special_tokens` /
`spaces_between_special_tokens` say: Text-01's `<function_call>` is a special token.

`response_format` (`json_object` / `json_schema`) constrains the answer; a family with a reasoning parser (M1)
may first write its reasoning block, unconstrained up to the closing marker, which comes back as
`reasoning_content`. It cannot be combined with a forced tool call.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from minimax01.chat.messages import normalize_tools
from minimax01.chat.reasoning import OutputStream
from minimax01.chat.template import render_chat
from minimax01.errors import RequestError
from minimax01.server.api_error import APIError, request_error
from minimax01.server.choice import Choice
from minimax01.server.context import ServerContext
from minimax01.server.openai_format import chat_delta, chat_logprobs, chat_message, include_usage, usage
from minimax01.server.request_parsing import choice_seeds, parse_request, sampling_params
from minimax01.server.runner import Submission
from minimax01.server.schemas import ChatCompletionRequest, NamedToolChoice
from minimax01.server.structured_outputs import response_format_grammar, tool_choice_grammar
from minimax01.server.streaming import collect, stream_response


def _tool_plan(req: ChatCompletionRequest, ctx: ServerContext) -> tuple[list[dict[str, Any]] | None, bool, str]:
    """(tools to render, whether to parse tool calls, forced output prefix) for the request's tool_choice."""
    try:
        tools = normalize_tools(req.tools)
    except RequestError as e:
        raise request_error(e) from None
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
        return tools, True, ctx.tool_parser.forced_prefix(None)
    name = choice.function.name
    if name not in {t["name"] for t in tools or []}:
        raise APIError(400, f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
    return tools, True, ctx.tool_parser.forced_prefix(name)


def _output_grammar(req: ChatCompletionRequest, ctx: ServerContext, tools: list[dict[str, Any]] | None) -> str | None:
    """The grammar of a forced tool call (tool_choice "required" / named) or of `response_format`, if any."""
    choice = req.tool_choice
    fmt = response_format_grammar(req.response_format,
                                  ctx.reasoning_parser.markers if ctx.reasoning_parser is not None else None)
    if not tools or not (choice == "required" or isinstance(choice, NamedToolChoice)):
        return fmt
    if fmt is not None:
        raise APIError(400, "response_format cannot be combined with tool_choice 'required' or a named tool (the "
                            "output is then a tool call)", param="response_format")
    return tool_choice_grammar(tools, choice.function.name if isinstance(choice, NamedToolChoice) else None,
                               ctx.tool_parser)


async def chat_completion(request: Request, ctx: ServerContext) -> Response:
    req: ChatCompletionRequest = await parse_request(request, ctx, ChatCompletionRequest)
    tools, parse_tools, prefix = _tool_plan(req, ctx)
    grammar = await asyncio.to_thread(_output_grammar, req, ctx, tools)  # a large schema takes a while to check

    def tokenize() -> list[int]:
        prompt = render_chat(req.messages, tools, add_generation_prompt=True, chat_template=ctx.chat_template,
                             tool_history=ctx.tool_parser.tool_history, template_kwargs=req.chat_template_kwargs)
        return ctx.tokenizer.encode(prompt + prefix)

    try:  # off the event loop: a long prompt must not stall the other streams
        prompt_ids = await asyncio.to_thread(tokenize)
    except RequestError as e:
        raise request_error(e) from None
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    max_tokens, max_field = req.max_tokens, "max_tokens"
    if req.max_completion_tokens is not None:  # OpenAI's newer name wins
        max_tokens, max_field = req.max_completion_tokens, "max_completion_tokens"
    names = {"max_new_tokens": max_field, "logprobs": "top_logprobs"}
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    subs = [Submission(prompt_ids, sampling_params(req, ctx, len(prompt_ids), max_tokens, logprobs, seed, names,
                                                   grammar=grammar, raw_text=parse_tools),
                       f"{rid}-{i}") for i, seed in enumerate(choice_seeds(req.seed, req.n))]
    choices = [Choice(i, OutputStream(ctx.reasoning_parser.streaming() if ctx.reasoning_parser else None,
                                      ctx.tool_parser.streaming() if parse_tools else None)) for i in range(req.n)]
    base = {"id": rid, "created": int(time.time()), "model": ctx.model_name}
    gen = await ctx.runner.submit(subs)

    if not req.stream:
        for c in choices:
            c.start(prefix)
        await collect(request, gen, lambda i, out: choices[i].update(out))
        return JSONResponse({**base, "object": "chat.completion", "choices": [
            {"index": c.index, "message": chat_message(c),
             "logprobs": (chat_logprobs(ctx.tokenizer, c.token_ids, c.logprobs, c.top_logprobs)
                          if logprobs is not None else None),
             "finish_reason": c.finish_reason} for c in choices], "usage": usage(len(prompt_ids), choices, req.n)})

    with_usage = include_usage(req)

    def chunk(c: Choice, delta: dict[str, Any], lp: Any = None, finish: str | None = None) -> dict[str, Any]:
        out = {**base, "object": "chat.completion.chunk",
               "choices": [{"index": c.index, "delta": delta, "logprobs": lp, "finish_reason": finish}]}
        if with_usage:
            out["usage"] = None
        return out

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        for c in choices:
            yield chunk(c, {"role": "assistant", "content": ""})
            if events := c.start(prefix):
                yield chunk(c, chat_delta(events, 0))
        async for i, out in gen:
            c = choices[i]
            calls_sent = len(c.tool_calls)
            delta = chat_delta(c.update(out), calls_sent)
            lp = (chat_logprobs(ctx.tokenizer, out.new_token_ids, out.logprobs, out.top_logprobs)
                  if out.logprobs else None)
            if delta or lp:
                yield chunk(c, delta, lp)
            if out.finished:
                yield chunk(c, {}, None, c.finish_reason)
        if with_usage:
            yield {**base, "object": "chat.completion.chunk", "choices": [],
                   "usage": usage(len(prompt_ids), choices, req.n)}

    return stream_response(chunks(), gen)
