"""Choice: what one choice of a response has accumulated from its engine outputs (tokens, logprobs, content,
tool calls, finish reason), for the final response and for the usage count."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from minimax01.chat.tool_calls import Event, StreamingToolCallParser, ToolCall
from minimax01.server.runner import STEP_FAILED, EngineFailure


@dataclass
class Choice:
    """Accumulates one choice's outputs; `update()` turns an engine output into content / tool-call events."""

    index: int
    parser: StreamingToolCallParser | None  # None: the output is plain content
    finish_reason: str | None = None
    completion_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)

    def start(self, prefix: str) -> list[Event]:
        """Feeds the forced tool-call prefix (tool_choice required/named) to the parser."""
        return self._record(self.parser.feed(prefix)) if (prefix and self.parser) else []

    def update(self, out: Any) -> list[Event]:
        if out.finish_reason == "error":
            raise EngineFailure(out.error or STEP_FAILED)
        self.token_ids.extend(out.new_token_ids)
        if out.logprobs is not None:
            self.logprobs.extend(out.logprobs)
            self.top_logprobs.extend(out.top_logprobs or [[] for _ in out.logprobs])
        self.completion_tokens = out.completion_tokens
        events: list[Event] = []
        if self.parser is not None:
            events = self.parser.feed(out.new_text)
            if out.finished:
                events += self.parser.finish()
        elif out.new_text:
            events = [out.new_text]
        if out.finished:
            reason = out.finish_reason or "stop"
            self.finish_reason = reason
        events = self._record(events)
        if out.finished and self.tool_calls and self.finish_reason == "stop":
            self.finish_reason = "tool_calls"
        return events

    def _record(self, events: list[Event]) -> list[Event]:
        for e in events:
            (self.tool_calls if isinstance(e, ToolCall) else self.content).append(e)  # type: ignore[arg-type]
        return events
