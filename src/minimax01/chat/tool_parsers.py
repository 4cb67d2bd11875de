"""Which tool-call parser a model family's output needs. The server and the CLI take their parser from here,
so a family with another format (e.g. MiniMax-M1's `<tool_calls>`) is one more entry, not a change to them."""

from __future__ import annotations

from collections.abc import Callable

from minimax01.chat.function_call import FunctionCallParser
from minimax01.chat.tool_calls import ToolCallParser
from minimax01.errors import ConfigError

DEFAULT_MODEL_FAMILY = "minimax-text-01"

#: model family -> its parser class (any factory of a ToolCallParser).
TOOL_CALL_PARSERS: dict[str, Callable[[], ToolCallParser]] = {
    "minimax-text-01": FunctionCallParser,
}


def tool_parser_for(family: str = DEFAULT_MODEL_FAMILY) -> ToolCallParser:
    """The tool-call parser of `family`; ConfigError naming the known families for any other."""
    factory = TOOL_CALL_PARSERS.get(family)
    if factory is None:
        raise ConfigError(f"no tool-call parser for model family {family!r}; known: {', '.join(TOOL_CALL_PARSERS)}")
    return factory()
