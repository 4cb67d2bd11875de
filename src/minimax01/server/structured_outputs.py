"""The grammar a request's output must match: from `response_format` (`json_object`, `json_schema`) or from
`tool_choice` "required" / named (one native tool call whose arguments match the tool's parameters). Built and
checked here, so that a bad schema is a 400 naming the field before anything reaches the engine; the engine
masks the tokens (structured/, sampling.py)."""

from __future__ import annotations

from typing import Any

from minimax01.chat.tool_calls import ToolCallParser
from minimax01.errors import RequestError
from minimax01.server.api_error import APIError
from minimax01.server.schemas import ResponseFormat
from minimax01.structured import (
    ToolCallFrame,
    check_grammar,
    json_object_grammar,
    json_schema_grammar,
    tool_call_grammar,
)

# OpenAI's function calling: a tool without `parameters` takes none, so its only arguments are `{}`.
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def _checked(build: Any, param: str) -> str:
    try:
        grammar = build()
        check_grammar(grammar)
    except (RequestError, ValueError) as e:  # llguidance raises ValueError for what it cannot read at all
        raise APIError(400, f"{param}: {e}", param=param) from None
    return grammar


def response_format_grammar(fmt: ResponseFormat | None, reasoning: tuple[str, str] | None = None) -> str | None:
    """The grammar of `response_format`, None for plain text; `reasoning`: the markers of the reasoning block the
    model may write first (the served family's reasoning parser's), None when the output is all answer."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_object_grammar(reasoning)
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(400, "response_format: type 'json_schema' needs json_schema.schema", param="response_format")
    schema = fmt.json_schema.schema_
    return _checked(lambda: json_schema_grammar(schema, reasoning), "response_format")


def tool_choice_grammar(tools: list[dict[str, Any]], name: str | None, parser: ToolCallParser) -> str:
    """One call of the tool `name` (None: of any of `tools`), written in the parser's native format, after the
    parser's forced prefix for that choice (which ends the prompt)."""
    prefix = parser.forced_prefix(name)
    frames = []
    for tool in tools:
        if name is not None and tool["name"] != name:
            continue
        before, after = parser.call_frame(tool["name"])
        assert before.startswith(prefix), "a forced prefix must be the start of every call it allows"
        frames.append(ToolCallFrame(before[len(prefix):], dict(tool.get("parameters") or _NO_PARAMETERS), after))
    return _checked(lambda: tool_call_grammar(frames), "tools")
