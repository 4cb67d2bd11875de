"""Choice: what one choice of a response has accumulated from its engine outputs (tokens, logprobs, reasoning,
content, tool calls, finish reason), for the final response and for the usage count."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from minimax01.chat.reasoning import OutputEvent, OutputStream, Reasoning
from minimax01.chat.tool_calls import ToolCall
from minimax01.engine.prompt_logprobs import PromptLogprob
from minimax01.server.runner import STEP_FAILED, EngineFailure


@dataclass
class Choice:
    """Accumulates one choice's outputs; `update()` turns an engine output into reasoning / content / tool-call
    events."""

    index: int
    parser: OutputStream
    finish_reason: str | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_logprobs: list[PromptLogprob] | None = None  # scores of prompt tokens 1.., when the request asked

    def start(self, prefix: str) -> list[OutputEvent]:
        """Feeds the forced tool-call prefix (tool_choice required/named) to the parser."""
        return self._record(self.parser.feed(prefix))

    def update(self, out: Any) -> list[OutputEvent]:
        if out.finish_reason == "error":
            raise EngineFailure(out.error or STEP_FAILED)
        self.token_ids.extend(out.new_token_ids)
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.logprobs is not None:
            self.logprobs.extend(out.logprobs)
            self.top_logprobs.extend(out.top_logprobs or [[] for _ in out.logprobs])
        self.completion_tokens = out.completion_tokens
        self.cached_tokens = out.cached_tokens
        events = self.parser.feed(out.new_text)
        if out.finished:
            events += self.parser.finish()
        if out.finished:
            reason = out.finish_reason or "stop"
            self.finish_reason = reason
        events = self._record(events)
        if out.finished and self.tool_calls and self.finish_reason == "stop":
            self.finish_reason = "tool_calls"
        return events

    def _record(self, events: list[OutputEvent]) -> list[OutputEvent]:
        for e in events:
            if isinstance(e, ToolCall):
                self.tool_calls.append(e)
            elif isinstance(e, Reasoning):
                self.reasoning.append(e.text)
            else:
                self.content.append(e)
        return events
