"""ServerContext: what every route needs to know about the model being served."""

from __future__ import annotations

from dataclasses import dataclass

from minimax01.chat.reasoning import ReasoningParser
from minimax01.chat.tool_calls import ToolCallParser
from minimax01.server.runner import AsyncEngine
from minimax01.tokenizer import MiniMaxTokenizer


@dataclass
class ServerContext:
    runner: AsyncEngine
    tokenizer: MiniMaxTokenizer
    model_name: str  # the id clients must send in `model`
    max_model_len: int  # prompt + completion tokens
    vocab_size: int  # token ids a completions prompt may contain: [0, vocab_size)
    api_key: str | None  # None: no authentication
    tool_parser: ToolCallParser  # the served model family's native tool-call format
    reasoning_parser: ReasoningParser | None  # None: the whole output is the answer
    chat_template: str  # the checkpoint's, --chat-template's, or the built-in Text-01 one
    generation_defaults: dict[str, float]  # generation_config.json values used when a request leaves them out
