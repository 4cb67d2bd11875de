"""POST /v1/completions: raw prompts (text or token ids), several per request, no chat template; `echo` and
`prompt_logprobs` score the prompt (lm-evaluation-harness's loglikelihood requests)."""

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
from minimax01.server.openai_format import (completion_logprobs, echo_logprobs, include_usage, join_logprobs, usage,
                                            vllm_prompt_logprobs)
from minimax01.server.request_parsing import choice_seeds, parse_request, sampling_params
from minimax01.server.structured_outputs import response_format_grammar
from minimax01.server.runner import Submission
from minimax01.server.schemas import CompletionRequest
from minimax01.server.streaming import collect, stream_response

# Engine requests one HTTP request may start (prompts x n): keeps one client from filling the queue alone.
MAX_CHOICES = 64


def _prompt_items(req: CompletionRequest) -> list[str | list[int]]:
    """Each prompt as sent: a string, a list of ids, or a list of either."""
    raw = req.prompt
    return [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)


async def _completion_prompts(req: CompletionRequest, ctx: ServerContext) -> list[list[int]]:
    """Token ids of every prompt."""
    prompts = [await asyncio.to_thread(ctx.tokenizer.encode, item) if isinstance(item, str) else list(item)
               for item in _prompt_items(req)]
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


def _prompt_scores(req: CompletionRequest) -> int | None:
    """Top logprobs the engine computes per prompt token (None: the prompt is not scored): what `echo` with
    `logprobs` and `prompt_logprobs` ask for; 0 for a prompt echoed without generating (nothing else to do)."""
    wanted = [n for n in (req.logprobs if req.echo else None, req.prompt_logprobs) if n is not None]
    if not wanted and req.max_tokens == 0:
        wanted = [0]
    return max(wanted) if wanted else None


async def completion(request: Request, ctx: ServerContext) -> Response:
    req: CompletionRequest = await parse_request(request, ctx, CompletionRequest)
    if req.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if req.max_tokens == 0 and not req.echo and req.prompt_logprobs is None:
        raise APIError(400, "max_tokens=0 is only allowed with echo or prompt_logprobs (to score the prompt)",
                       param="max_tokens")
    prompts = await _completion_prompts(req, ctx)
    # The text `echo` puts before each completion: the prompt as sent, or the decoded ids.
    echoed = [item if isinstance(item, str) else await asyncio.to_thread(ctx.tokenizer.decode, item)
              for item in _prompt_items(req)] if req.echo else []
    rid = f"cmpl-{uuid.uuid4().hex}"
    names = {"max_new_tokens": "max_tokens"}
    scores = _prompt_scores(req)
    # Choice p * n + i: prompt p, seed + i.
    # vLLM's extension: structured outputs here too. Off the event loop: a large schema takes a while to check.
    grammar = await asyncio.to_thread(response_format_grammar, req.response_format)
    subs = [Submission(ids, sampling_params(req, ctx, len(ids), req.max_tokens, req.logprobs, seed, names, scores,
                                            grammar=grammar),
                       f"{rid}-{p * req.n + i}")
            for p, ids in enumerate(prompts) for i, seed in enumerate(choice_seeds(req.seed, req.n))]
    choices = [Choice(i, OutputStream(None, None)) for i in range(len(subs))]  # plain text: no parsing
    prompt_of = [p for p in range(len(prompts)) for _ in range(req.n)]  # choice -> its prompt
    prompt_tokens = sum(len(ids) for ids in prompts)
    base = {"id": rid, "created": int(time.time()), "model": ctx.model_name}
    gen = await ctx.runner.submit(subs)

    def prompt_part(i: int, c: Choice) -> tuple[str, dict[str, Any] | None, int]:
        """What choice i starts with: the echoed prompt text, its logprobs (when asked) and the offset after it."""
        if not req.echo:
            return "", None, 0
        p = prompt_of[i]
        if req.logprobs is None or c.prompt_logprobs is None:
            return echoed[p], None, len(echoed[p])
        lp, offset = echo_logprobs(ctx.tokenizer, prompts[p], c.prompt_logprobs)
        return echoed[p], lp, offset

    def choice_extras(c: Choice) -> dict[str, Any]:
        if req.prompt_logprobs is None or c.prompt_logprobs is None:
            return {}
        return {"prompt_logprobs": vllm_prompt_logprobs(ctx.tokenizer, c.prompt_logprobs)}

    if not req.stream:
        await collect(request, gen, lambda i, out: choices[i].update(out))
        body = []
        for c in choices:
            text, lp, offset = prompt_part(c.index, c)
            if req.logprobs is not None:
                generated, _ = completion_logprobs(ctx.tokenizer, c.token_ids, c.logprobs, c.top_logprobs, offset)
                lp = join_logprobs(lp, generated) if lp is not None else generated
            body.append({"index": c.index, "text": text + "".join(c.content), "logprobs": lp,
                         "finish_reason": c.finish_reason, **choice_extras(c)})
        return JSONResponse({**base, "object": "text_completion", "choices": body,
                             "usage": usage(prompt_tokens, choices, req.n)})

    with_usage = include_usage(req)
    offsets = [0] * len(subs)  # text_offset of each choice's next token
    started = [False] * len(subs)  # the choice's first chunk (which carries the echoed prompt) is sent

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async for i, out in gen:
            text = "".join(choices[i].update(out))
            lp, extras = None, {}
            if not started[i]:
                started[i] = True
                prefix, lp, offsets[i] = prompt_part(i, choices[i])
                text, extras = prefix + text, choice_extras(choices[i])
            if out.logprobs:
                generated, offsets[i] = completion_logprobs(ctx.tokenizer, out.new_token_ids, out.logprobs,
                                                            out.top_logprobs, offsets[i])
                lp = join_logprobs(lp, generated) if lp is not None else generated
            if text or lp or out.finished:
                chunk = {**base, "object": "text_completion", "choices": [
                    {"index": i, "text": text, "logprobs": lp,
                     "finish_reason": choices[i].finish_reason if out.finished else None, **extras}]}
                if with_usage:
                    chunk["usage"] = None
                yield chunk
        if with_usage:
            yield {**base, "object": "text_completion", "choices": [], "usage": usage(prompt_tokens, choices, req.n)}

    return stream_response(chunks(), gen)
