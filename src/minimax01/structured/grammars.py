"""The grammars of structured outputs, as llguidance grammar definitions (strings): any JSON object, a JSON
schema, or a native tool call whose arguments match the tool's parameter schema.

JSON is constrained to one layout: `json.dumps`' separators (", " and ": ") and no other whitespace. With free
whitespace allowed, a grammar never forces the end of a value (a run of spaces or newlines is always a legal
continuation), and a weak or random model can pad until max_tokens; with one layout every token either advances
the value or is masked. Strings are still free text, so a string ends when the model writes its quote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import llguidance

from minimax01.errors import RequestError

# llguidance's per-schema options (the "x-guidance" key of a schema): the one JSON layout described above.
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class ToolCallFrame:
    """One tool call as the model writes it: `head`, then the arguments (a JSON value matching `parameters`), then
    `tail`. The model family's parser (chat/tool_calls.py) gives the frame; `head` is what follows the forced
    prompt prefix, so it is "" when the prefix already names the tool."""

    head: str
    parameters: dict[str, Any]
    tail: str


def _with_layout(schema: dict[str, Any]) -> dict[str, Any]:
    # A client's own "x-guidance" options are replaced: the layout is the server's guarantee of termination.
    return {**schema, "x-guidance": _JSON_LAYOUT}


def _schema_object(schema: Any, what: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise RequestError(f"{what} must be a JSON object (a JSON schema), got {type(schema).__name__}")
    return schema


def json_object_grammar() -> str:
    """Any JSON object (`response_format` `{"type": "json_object"}`)."""
    return llguidance.grammar_from("json_schema", json.dumps(_with_layout({"type": "object"})))


def json_schema_grammar(schema: Any) -> str:
    """A JSON value valid against `schema` (`response_format` `json_schema`). RequestError for a non-object."""
    return llguidance.grammar_from("json_schema", json.dumps(_with_layout(_schema_object(schema, "schema"))))


def tool_call_grammar(frames: list[ToolCallFrame]) -> str:
    """Exactly one of the calls `frames` describe (tool_choice "required": one frame per tool; named: one)."""
    if not frames:
        raise RequestError("a tool-call grammar needs at least one tool")
    rules, names = [], []
    for i, frame in enumerate(frames):
        params = _with_layout(_schema_object(frame.parameters, "a tool's parameters"))
        # Lark string literals take JSON's escapes, so json.dumps writes any head / tail text as one literal.
        parts = [json.dumps(frame.head)] if frame.head else []
        parts += [f"%json {json.dumps(params)}", json.dumps(frame.tail)]
        rules.append(f"call_{i}: {' '.join(parts)}")
        names.append(f"call_{i}")
    return llguidance.grammar_from("lark", "\n".join([f"start: {' | '.join(names)}", *rules]))


def check_grammar(grammar: str) -> None:
    """RequestError with llguidance's message when `grammar` is not usable (an invalid or unsupported schema)."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise RequestError(f"invalid schema: {'; '.join(messages) or 'rejected by the grammar compiler'}")
