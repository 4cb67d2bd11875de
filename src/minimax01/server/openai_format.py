"""OpenAI response pieces: logprobs (chat and completions shapes), usage, chat deltas and messages."""

from __future__ import annotations

from typing import Any

from minimax01.chat.reasoning import OutputEvent, Reasoning
from minimax01.chat.tool_calls import ToolCall
from minimax01.engine.prompt_logprobs import PromptLogprob
from minimax01.server.choice import Choice
from minimax01.tokenizer import MiniMaxTokenizer

# logprobs of -inf cannot be written in JSON; OpenAI/vLLM clamp to this.
_MIN_LOGPROB = -9999.0


def _clamp_lp(x: float) -> float:
    return max(float(x), _MIN_LOGPROB)


def _token_str(tokenizer: MiniMaxTokenizer, token_id: int) -> str:
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")


def token_key(tokenizer: MiniMaxTokenizer, token_id: int) -> str:
    """A token as completions `tokens` / `top_logprobs` keys show it: its text, or for a token that is only part
    of a UTF-8 character, `bytes:` and its bytes escaped (`bytes:\\xe4\\xbd`), as vLLM writes them, so that
    two such tokens do not both become the key "\ufffd" and overwrite each other."""
    raw = tokenizer.token_bytes(token_id)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _text_offsets(tokenizer: MiniMaxTokenizer, ids: list[int], offset: int) -> tuple[list[int], int]:
    """Where each token's text starts in the choice's text (from `offset`), and the offset after the last."""
    offsets = []
    for t in ids:
        offsets.append(offset)
        offset += len(_token_str(tokenizer, t))
    return offsets, offset


def chat_logprobs(tokenizer: MiniMaxTokenizer, ids: list[int], lps: list[float],
                  tops: list[list[tuple[int, float]]]) -> dict[str, Any]:
    """Chat `logprobs`: one entry per token with its text, raw bytes and top alternatives."""
    def entry(token_id: int, lp: float) -> dict[str, Any]:
        return {"token": _token_str(tokenizer, token_id), "logprob": _clamp_lp(lp),
                "bytes": list(tokenizer.token_bytes(token_id))}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in top]}
                        for t, lp, top in zip(ids, lps, tops)]}


def completion_logprobs(tokenizer: MiniMaxTokenizer, ids: list[int], lps: list[float],
                        tops: list[list[tuple[int, float]]], offset: int) -> tuple[dict[str, Any], int]:
    """Completions `logprobs` (parallel lists) of tokens whose text starts at character `offset` of the choice;
    returns it and the offset after the last token."""
    offsets, offset = _text_offsets(tokenizer, ids, offset)
    top = [{token_key(tokenizer, i): _clamp_lp(v) for i, v in t} for t in tops]
    return {"tokens": [token_key(tokenizer, t) for t in ids], "token_logprobs": [_clamp_lp(x) for x in lps],
            "top_logprobs": top, "text_offset": offsets}, offset


def echo_logprobs(tokenizer: MiniMaxTokenizer, prompt_ids: list[int],
                  scores: list[PromptLogprob]) -> tuple[dict[str, Any], int]:
    """Completions `logprobs` of an echoed prompt (text offsets from 0): the first token's logprob and top
    logprobs are null, as nothing predicts it; each other position's top logprobs hold its own token too, as
    OpenAI's and vLLM's do. Returns it and the offset after the prompt."""
    offsets, offset = _text_offsets(tokenizer, prompt_ids, 0)
    tops: list[dict[str, float] | None] = [None]
    for score in scores:
        top = {token_key(tokenizer, i): _clamp_lp(v) for i, v in score.top}
        top.setdefault(token_key(tokenizer, score.token_id), _clamp_lp(score.logprob))
        tops.append(top)
    return {"tokens": [token_key(tokenizer, t) for t in prompt_ids],
            "token_logprobs": [None] + [_clamp_lp(s.logprob) for s in scores], "top_logprobs": tops,
            "text_offset": offsets}, offset


def join_logprobs(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """Two completions `logprobs` (parallel lists) one after the other."""
    return {key: first[key] + then[key] for key in first}


def vllm_prompt_logprobs(tokenizer: MiniMaxTokenizer, scores: list[PromptLogprob]) -> list[dict[str, Any] | None]:
    """vLLM's `prompt_logprobs`: per prompt position (the first is null), token id -> logprob, rank and
    decoded token, for the prompt's own token and the top ones."""
    def entry(token_id: int, lp: float, rank: int | None) -> dict[str, Any]:
        return {"logprob": _clamp_lp(lp), "rank": rank, "decoded_token": token_key(tokenizer, token_id)}

    positions: list[dict[str, Any] | None] = [None]
    for score in scores:
        top = {str(i): entry(i, v, r) for r, (i, v) in enumerate(score.top, start=1)}
        top.setdefault(str(score.token_id), entry(score.token_id, score.logprob, score.rank))
        positions.append(top)
    return positions


def include_usage(req: Any) -> bool:
    """Whether a stream ends with a usage chunk (and its other chunks carry `"usage": null`)."""
    return bool(req.stream_options and req.stream_options.include_usage)


def usage(prompt_tokens: int, choices: list[Choice], n: int) -> dict[str, Any]:
    """The usage object; choices come `n` per prompt and each prompt counts once, so its cached tokens (served
    from the prefix cache) are those of its first choice."""
    completion = sum(c.completion_tokens for c in choices)
    cached = sum(c.cached_tokens for c in choices[::n])
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def chat_delta(events: list[OutputEvent], first_call: int) -> dict[str, Any]:
    """The `delta` of a chat chunk; tool calls are numbered from `first_call` (calls already sent)."""
    delta: dict[str, Any] = {}
    text = "".join(e for e in events if isinstance(e, str))
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    calls = [e for e in events if isinstance(e, ToolCall)]
    if reasoning:
        delta["reasoning_content"] = reasoning
    if text:
        delta["content"] = text
    if calls:
        delta["tool_calls"] = [{"index": first_call + k, **call.to_openai()} for k, call in enumerate(calls)]
    return delta


def chat_message(c: Choice) -> dict[str, Any]:
    """The assistant `message` of a non-streaming chat choice (content null when there are only tool calls)."""
    content = "".join(c.content)
    msg: dict[str, Any] = {"role": "assistant", "content": content if (content or not c.tool_calls) else None}
    if c.reasoning:
        msg["reasoning_content"] = "".join(c.reasoning)
    if c.tool_calls:
        msg["tool_calls"] = [t.to_openai() for t in c.tool_calls]
    return msg
