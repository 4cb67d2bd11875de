"""The grammars of structured outputs, as llguidance grammar definitions (strings): any JSON object, a JSON
schema, or a native tool call whose arguments match the tool's parameter schema.

A model that reasons first (MiniMax-M1: `<think>…</think>` at the start of its output) may keep doing so: the
JSON grammars then accept an optional reasoning block, free text up to its closing marker, before the value.

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
    # A client's own "x-guidance" options are replaced: the one layout is what lets a grammar force a value's end.
    return {**schema, "x-guidance": _JSON_LAYOUT}


def _schema_object(schema: Any, what: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise RequestError(f"{what} must be a JSON object (a JSON schema), got {type(schema).__name__}")
    return schema


def _json_grammar(schema: dict[str, Any], reasoning: tuple[str, str] | None) -> str:
    rules = [f"answer: %json {json.dumps(_with_layout(schema))}"]
    if reasoning is None:
        rules.insert(0, "start: answer")
    else:
        # One lexeme: the opening marker, any text without the closing marker, the closing marker, and up to two
        # newlines (M1's separator; the reasoning parser drops them). A rule of several lexemes instead (or a
        # `stop=` rule) makes llguidance mask the tokens that straddle the closing marker and what follows it,
        # which a tokenizer may well have ("nk>\n").
        opening, closing = (json.dumps(m) for m in reasoning)
        text = "/(.|\\n)*/"
        rules[:0] = ["start: REASONING? answer",
                     f"REASONING: {opening} ({text} & ~({text} {closing} {text})) {closing} /\\n{{0,2}}/"]
    return llguidance.grammar_from("lark", "\n".join(rules))


def json_object_grammar(reasoning: tuple[str, str] | None = None) -> str:
    """Any JSON object (`response_format` `{"type": "json_object"}`), after an optional block of free text between
    the `reasoning` markers (opening, closing) when they are given."""
    return _json_grammar({"type": "object"}, reasoning)


def json_schema_grammar(schema: Any, reasoning: tuple[str, str] | None = None) -> str:
    """A JSON value valid against `schema` (`response_format` `json_schema`), after optional reasoning as in
    `json_object_grammar`. RequestError for a non-object schema."""
    return _json_grammar(_schema_object(schema, "schema"), reasoning)


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
