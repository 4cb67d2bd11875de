"""POST /v1/completions: raw prompts (text or token ids), several per request, no chat template."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from minimax01.chat.reasoning import OutputStream
from minimax01.server.api_error import APIError
from minimax01.server.choice import Choice
from minimax01.server.context import ServerContext
from minimax01.server.openai_format import completion_logprobs, include_usage, usage
from minimax01.server.request_parsing import choice_seeds, parse_request, sampling_params
from minimax01.server.runner import Submission
from minimax01.server.schemas import CompletionRequest
from minimax01.server.streaming import collect, stream_response

# Engine requests one HTTP request may start (prompts x n): keeps one client from filling the queue alone.
MAX_CHOICES = 64


async def _completion_prompts(req: CompletionRequest, ctx: ServerContext) -> list[list[int]]:
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


async def completion(request: Request, ctx: ServerContext) -> Response:
    req: CompletionRequest = await parse_request(request, ctx, CompletionRequest)
    if req.echo:
        raise APIError(400, "echo is not supported", param="echo")
    if req.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    prompts = await _completion_prompts(req, ctx)
    rid = f"cmpl-{uuid.uuid4().hex}"
    names = {"max_new_tokens": "max_tokens"}
    # Choice p * n + i: prompt p, seed + i.
    subs = [Submission(ids, sampling_params(req, ctx, len(ids), req.max_tokens, req.logprobs, seed, names),
                       f"{rid}-{p * req.n + i}")
            for p, ids in enumerate(prompts) for i, seed in enumerate(choice_seeds(req.seed, req.n))]
    choices = [Choice(i, OutputStream(None, None)) for i in range(len(subs))]  # plain text: no parsing
    prompt_tokens = sum(len(ids) for ids in prompts)
    base = {"id": rid, "created": int(time.time()), "model": ctx.model_name}
    gen = await ctx.runner.submit(subs)

    if not req.stream:
        await collect(request, gen, lambda i, out: choices[i].update(out))
        return JSONResponse({**base, "object": "text_completion", "choices": [
            {"index": c.index, "text": "".join(c.content),
             "logprobs": (completion_logprobs(ctx.tokenizer, c.token_ids, c.logprobs, c.top_logprobs, 0)[0]
                          if req.logprobs is not None else None),
             "finish_reason": c.finish_reason} for c in choices], "usage": usage(prompt_tokens, choices)})

    with_usage = include_usage(req)
    offsets = [0] * len(subs)  # text_offset of each choice's next token

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async for i, out in gen:
            text = "".join(choices[i].update(out))
            lp = None
            if out.logprobs:
                lp, offsets[i] = completion_logprobs(ctx.tokenizer, out.new_token_ids, out.logprobs,
                                                     out.top_logprobs, offsets[i])
            if text or lp or out.finished:
                chunk = {**base, "object": "text_completion", "choices": [
                    {"index": i, "text": text, "logprobs": lp,
                     "finish_reason": choices[i].finish_reason if out.finished else None}]}
                if with_usage:
                    chunk["usage"] = None
                yield chunk
        if with_usage:
            yield {**base, "object": "text_completion", "choices": [], "usage": usage(prompt_tokens, choices)}

    return stream_response(chunks(), gen)
