"""ServerContext: what every route needs to know about the model being served."""

from __future__ import annotations

from dataclasses import dataclass

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
