"""What the engine reports: a RequestOutput per request and step, and EngineStats snapshots."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from minimax01.engine.prefix_cache import PrefixCacheStats
from minimax01.engine.prompt_logprobs import PromptLogprob


@dataclass
class RequestOutput:
    """What one step produced for one request (streaming delta; concatenate to get the whole result)."""

    request_id: str
    new_token_ids: list[int]  # tokens sampled in this step (a stop token is included, its text is not)
    new_text: str  # detokenized delta ("" without tokenizer); held back while it may start a stop string
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | "error" once finished
    prompt_tokens: int
    completion_tokens: int  # generated so far, this step included
    logprobs: list[float] | None = None  # per new token (only when params.logprobs is not None)
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per new token: params.logprobs (id, logprob)
    stop_reason: str | int | None = None  # the stop string or stop token id that finished the request
    error: str | None = None  # why, when finish_reason is "error" and the engine knows (safe to show a client)
    # Scores of prompt tokens 1.. (params.prompt_logprobs), in the first output after the prompt's prefill
    prompt_logprobs: list[PromptLogprob] | None = None
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (usage.prompt_tokens_details)


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    free_slots: int
    used_kv_blocks: int
    free_kv_blocks: int
    total_kv_blocks: int
    prompt_tokens_total: int  # prompt tokens of requests whose prefill completed
    generation_tokens_total: int
    finished_requests_total: int  # aborted ones included
    preemptions_total: int
    last_step_num_seqs: int
    last_step_num_tokens: int
    prefix_cache: PrefixCacheStats | None = None  # None: prefix caching is off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
