"""Reasoning: MiniMax-M1 writes `<think>…</think>` before its answer. The text between the markers is the
reasoning (OpenAI-compatible servers return it as `reasoning_content`, as vLLM's reasoning parsers do), the
text after `</think>` is the answer. The reasoning is kept byte for byte (its inner newlines included, as vLLM
keeps them); the newlines right after `</think>` are the format's separator and are dropped from the answer.

`<think>` is plain text (several BPE tokens, not a special token), so the markers are found in the decoded
text and may arrive split over any number of deltas. Only an output that *starts* with `<think>` (after
whitespace) has reasoning; an unclosed one is all reasoning (cut by max_tokens).

`OutputStream` chains the reasoning parser and a tool-call parser: the tool-call parser sees only the answer, so
a call written inside the reasoning is never a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

from minimax01.chat.tool_calls import StreamingToolCallParser, ToolCall

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class Reasoning:
    """A piece of reasoning text."""

    text: str


#: What a chat output turns into: answer text, reasoning text, or a completed tool call.
OutputEvent = Union[str, Reasoning, ToolCall]


class StreamingReasoningParser(Protocol):
    def feed(self, delta: str) -> list[str | Reasoning]:
        """Adds generated text; returns the reasoning and answer pieces that are decided."""
        ...

    def finish(self) -> list[str | Reasoning]:
        """Ends the output: flushes what was held back."""
        ...


def _tail_prefix_len(text: str, marker: str) -> int:
    """Length of the longest proper prefix of `marker` that ends `text`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class ReasoningParser(Protocol):
    """One model family's reasoning format."""

    #: (opening, closing) markers of the reasoning block that may start an output (structured outputs let a
    #: model reason inside them before the constrained answer).
    markers: tuple[str, str]

    def parse(self, text: str) -> tuple[str | None, str]:
        """(reasoning or None when there is none, answer) of a whole output."""
        ...

    def streaming(self) -> StreamingReasoningParser:
        """A fresh incremental parser for one output."""
        ...


class ThinkStreamParser:
    """Incremental split of one output into reasoning and answer (a StreamingReasoningParser)."""

    def __init__(self) -> None:
        # start: not yet known whether the output opens with <think>; then reasoning, after_reasoning, answer
        self._state = "start"
        self._buf = ""

    def feed(self, delta: str) -> list[str | Reasoning]:
        self._buf += delta
        return self._scan(final=False)

    def finish(self) -> list[str | Reasoning]:
        return self._scan(final=True)

    def _scan(self, final: bool) -> list[str | Reasoning]:
        out: list[str | Reasoning] = []
        if self._state == "start":
            head = self._buf.lstrip()
            if head.startswith(THINK_OPEN):
                self._state, self._buf = "reasoning", head[len(THINK_OPEN):]
            elif THINK_OPEN.startswith(head) and not final:
                return out  # whitespace or part of the marker so far: undecided
            else:
                self._state = "answer"
        if self._state == "reasoning":
            end = self._buf.find(THINK_CLOSE)
            if end < 0:
                keep = 0 if final else _tail_prefix_len(self._buf, THINK_CLOSE)
                if len(self._buf) > keep:
                    out.append(Reasoning(self._buf[:len(self._buf) - keep]))
                self._buf = self._buf[len(self._buf) - keep:]
                return out
            if end:
                out.append(Reasoning(self._buf[:end]))
            self._state, self._buf = "after_reasoning", self._buf[end + len(THINK_CLOSE):]
        if self._state == "after_reasoning":  # drop the separator newlines, however the deltas split them
            self._buf = self._buf.lstrip("\n")
            if not self._buf:
                return out
            self._state = "answer"
        if self._buf:
            out.append(self._buf)
            self._buf = ""
        return out


class ThinkParser:
    """The ReasoningParser of MiniMax-M1 (`<think>…</think>` at the start of the output)."""

    markers = (THINK_OPEN, THINK_CLOSE)

    def parse(self, text: str) -> tuple[str | None, str]:
        stream = ThinkStreamParser()
        events = stream.feed(text) + stream.finish()
        reasoning = [e.text for e in events if isinstance(e, Reasoning)]
        return ("".join(reasoning) if reasoning else None), "".join(e for e in events if isinstance(e, str))

    def streaming(self) -> StreamingReasoningParser:
        return ThinkStreamParser()


class OutputStream:
    """One output through the reasoning parser (if any), then its answer through the tool-call parser (if any)."""

    def __init__(self, reasoning: StreamingReasoningParser | None, tools: StreamingToolCallParser | None) -> None:
        self._reasoning = reasoning
        self._tools = tools

    def feed(self, delta: str) -> list[OutputEvent]:
        if not delta:
            return []
        return self._route(self._reasoning.feed(delta) if self._reasoning else [delta], final=False)

    def finish(self) -> list[OutputEvent]:
        return self._route(self._reasoning.finish() if self._reasoning else [], final=True)

    def _route(self, pieces: list[str | Reasoning], final: bool) -> list[OutputEvent]:
        out: list[OutputEvent] = []
        for piece in pieces:
            if isinstance(piece, Reasoning) or self._tools is None:
                out.append(piece)
            else:
                out.extend(self._tools.feed(piece))
        if final and self._tools is not None:
            out.extend(self._tools.finish())
        return out
