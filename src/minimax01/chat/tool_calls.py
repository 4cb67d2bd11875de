"""The tool-call parser interface: what the server and the CLI need from a model family's native tool-call
format, whatever its syntax. Implementations: `function_call.FunctionCallParser` (MiniMax-Text-01),
`m1_tool_calls.ToolCallsParser` (MiniMax-M1); the family -> parser choice is `tool_parsers.tool_parser_for`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol, Union


@dataclass
class ToolCall:
    """One parsed tool call. `arguments` is the JSON text exactly as the model wrote it."""

    name: str
    arguments: str  # JSON string
    id: str

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI `tool_calls[]` entry (also accepted back by messages.normalize_messages)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


#: A streaming event: a piece of content text or a completed tool call.
Event = Union[str, ToolCall]


def new_call_id() -> str:
    """A fresh OpenAI-style tool-call id."""
    return "call_" + uuid.uuid4().hex[:24]


class StreamingToolCallParser(Protocol):
    """Incremental parsing of one generated output: feed text deltas, get content pieces and completed calls.

    Text that may still turn into a call is held back until it is decided, so no part of a call is emitted as
    content. For any split of a text, the events add up to what the family's `parse` returns for the whole.
    """

    def feed(self, delta: str) -> list[Event]:
        """Adds generated text; returns what can be emitted now."""
        ...

    def finish(self) -> list[Event]:
        """Ends the output: everything held back is decided (an unterminated call becomes content)."""
        ...


class ToolCallParser(Protocol):
    """One model family's native tool-call format."""

    #: How earlier calls and results are handed to the chat template (messages.ToolHistory).
    tool_history: str

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """(content, tool calls) of a whole output; a malformed or truncated call stays content, never raises."""
        ...

    def streaming(self) -> StreamingToolCallParser:
        """A fresh incremental parser for one output."""
        ...

    def forced_prefix(self, name: str | None) -> str:
        """Output text that leaves the model no choice but to continue a call: of any tool (`name` None) or of
        the tool `name` (OpenAI tool_choice "required" / named). The parser is fed it before the generated text."""
        ...

    def call_frame(self, name: str) -> tuple[str, str]:
        """(text before, text after) the arguments JSON in one complete call of `name` as the model writes it:
        the frame of a grammar that guarantees a call (`forced_prefix` of the same call is a prefix of `before`)."""
        ...
