"""Model families and their output parsers. The server and the CLI take their parsers from here, so a family
with another format is one more entry, not a change to them.

- minimax-text-01: `<function_call>` tool calls (function_call.py), no reasoning;
- minimax-m1: `<tool_calls>` blocks (m1_tool_calls.py) and `<think>` reasoning (reasoning.py).

The family is detected from the checkpoint (`detect_model_family`); `--tool-call-parser` and
`--reasoning-parser` override each choice separately.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from minimax01.chat.function_call import FunctionCallParser
from minimax01.chat.m1_tool_calls import OPEN as M1_TOOL_CALLS_OPEN
from minimax01.chat.m1_tool_calls import ToolCallsParser
from minimax01.chat.reasoning import ReasoningParser, ThinkParser
from minimax01.chat.tool_calls import ToolCallParser
from minimax01.errors import ConfigError

TEXT_01, M1 = "minimax-text-01", "minimax-m1"
DEFAULT_MODEL_FAMILY = TEXT_01
MODEL_FAMILIES = (TEXT_01, M1)
NO_REASONING = "none"

#: tool-call parser name -> its parser class (any factory of a ToolCallParser).
TOOL_CALL_PARSERS: dict[str, Callable[[], ToolCallParser]] = {TEXT_01: FunctionCallParser, M1: ToolCallsParser}
#: reasoning parser name -> its parser class; "none": the whole output is the answer.
REASONING_PARSERS: dict[str, Callable[[], ReasoningParser] | None] = {NO_REASONING: None, M1: ThinkParser}
_FAMILY_REASONING = {TEXT_01: NO_REASONING, M1: M1}

# "MiniMaxM1ForCausalLM", "minimax_m1", "MiniMax-M1-80k": M1 as a word of the name, not any "m1" substring.
_M1_NAME = re.compile(r"(?:^|[^a-z0-9]|minimax)m1(?![0-9])", re.IGNORECASE)


def detect_model_family(config_names: Iterable[str], chat_template: str | None) -> str:
    """M1 if config.json's `architectures` / `model_type` (`config_names`) name it or the chat template writes
    M1's `<tool_calls>` format; Text-01 otherwise (M1's config can be Text-01's verbatim)."""
    if any(_M1_NAME.search(name) for name in config_names):
        return M1
    if chat_template is not None and M1_TOOL_CALLS_OPEN in chat_template:
        return M1
    return TEXT_01


def _known(name: str, table: dict[str, object], what: str) -> None:
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(table)}")


def tool_parser_for(name: str = DEFAULT_MODEL_FAMILY) -> ToolCallParser:
    """The tool-call parser `name` (a model family name); ConfigError naming the known parsers for any other."""
    _known(name, TOOL_CALL_PARSERS, "tool-call parser")
    return TOOL_CALL_PARSERS[name]()


def reasoning_parser_for(name: str) -> ReasoningParser | None:
    """The reasoning parser `name`, None for "none"; ConfigError for an unknown name."""
    _known(name, REASONING_PARSERS, "reasoning parser")
    factory = REASONING_PARSERS[name]
    return None if factory is None else factory()


@dataclass(frozen=True)
class ChatFormat:
    """The family a checkpoint was detected as and the parsers used for its output."""

    family: str
    tool_call_parser: str
    reasoning_parser: str


def chat_format(family: str, tool_call_parser: str | None = None, reasoning_parser: str | None = None) -> ChatFormat:
    """The family's own parsers, unless overridden; every name checked."""
    _known(family, dict.fromkeys(MODEL_FAMILIES), "model family")
    chosen = ChatFormat(family, tool_call_parser or family, reasoning_parser or _FAMILY_REASONING[family])
    _known(chosen.tool_call_parser, TOOL_CALL_PARSERS, "tool-call parser")
    _known(chosen.reasoning_parser, REASONING_PARSERS, "reasoning parser")
    return chosen
