"""MiniMax-M1's tool calls: `<tool_calls>\\n{"name": ..., "arguments": {...}}\\n...</tool_calls>` blocks.

One JSON object per line, each a call. A block is a call block only if every non-blank line inside it is such an
object; otherwise (or when it never closes and its last line does not parse) the whole block stays content, as
text. An unclosed block at the end of the output whose lines all parse still counts, as vLLM's parser accepts it.
`<think>…</think>` regions are content here, never calls: when no reasoning parser took the reasoning out, a
call the model only thought about must not be executed.

`<tool_calls>` and `<think>` are plain text (several BPE tokens), so every marker may arrive split over several
deltas: text that could be the start of one is held back until it is decided.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from minimax01.chat.reasoning import THINK_CLOSE, THINK_OPEN
from minimax01.chat.tool_calls import Event, StreamingToolCallParser, ToolCall, new_call_id

OPEN, CLOSE = "<tool_calls>", "</tool_calls>"
_OPENERS = (OPEN, THINK_OPEN)


def _parse_line(line: str) -> tuple[str, str] | None:
    """(name, arguments JSON text) of one call line; None if it is not one."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # some fine-tunes write the arguments as a JSON string, as OpenAI sends them
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return value["name"], json.dumps(arguments, ensure_ascii=False)


def _parse_body(body: str) -> list[tuple[str, str]] | None:
    """The calls of a block body; None unless every non-blank line is a call and there is at least one."""
    calls = []
    # split("\n"), not splitlines(): a JSON string written with ensure_ascii=False may hold U+2028 or U+0085.
    for line in body.split("\n"):
        if not line.strip():
            continue
        call = _parse_line(line.strip())
        if call is None:
            return None
        calls.append(call)
    return calls or None


def _held_prefix_len(text: str) -> int:
    """Length of the longest proper prefix of an opening marker that ends `text`."""
    for k in range(min(max(map(len, _OPENERS)) - 1, len(text)), 0, -1):
        if any(m.startswith(text[-k:]) for m in _OPENERS):
            return k
    return 0


class ToolCallsStreamParser:
    """Incremental parsing of `<tool_calls>` blocks (a StreamingToolCallParser)."""

    def __init__(self, make_id: Callable[[], str] = new_call_id) -> None:
        self._make_id = make_id
        self._buf = ""  # undecided text: a possible marker start, or an open block / think region
        self._resume = 0  # where the search for the open region's closer goes on (no rescans of long blocks)

    def feed(self, delta: str) -> list[Event]:
        self._buf += delta
        return self._scan(final=False)

    def finish(self) -> list[Event]:
        return self._scan(final=True)

    def _scan(self, final: bool) -> list[Event]:
        events: list[Event] = []
        text = ""
        while self._buf:
            # A region left open by the last delta starts the buffer: no need to search (and rescan) the rest.
            starts = [(0, m) for m in _OPENERS if self._buf.startswith(m)] or [
                (i, m) for m in _OPENERS if (i := self._buf.find(m)) >= 0]
            if not starts:
                keep = 0 if final else _held_prefix_len(self._buf)
                text += self._buf[:len(self._buf) - keep]
                self._buf = self._buf[len(self._buf) - keep:]
                break
            i, marker = min(starts)
            text += self._buf[:i]
            self._buf = self._buf[i:]
            closer = THINK_CLOSE if marker == THINK_OPEN else CLOSE
            end = self._buf.find(closer, max(len(marker), self._resume))
            if end < 0 and not final:
                self._resume = len(self._buf) - len(closer) + 1  # a closer may still end across the next delta
                break  # wait for the rest of the block / reasoning
            self._resume = 0
            if marker == THINK_OPEN:  # reasoning left in the content: text, whatever it contains
                cut = len(self._buf) if end < 0 else end + len(closer)
                text, self._buf = text + self._buf[:cut], self._buf[cut:]
                continue
            body_end = len(self._buf) if end < 0 else end
            calls = _parse_body(self._buf[len(marker):body_end])
            cut = len(self._buf) if end < 0 else end + len(closer)
            if calls is None:
                text += self._buf[:cut]
            else:
                if text:
                    events.append(text)
                    text = ""
                events.extend(ToolCall(name, args, self._make_id()) for name, args in calls)
            self._buf = self._buf[cut:]
        if text:
            events.append(text)
        return events


class ToolCallsParser:
    """The ToolCallParser of MiniMax-M1's `<tool_calls>` blocks."""

    tool_history = "openai"  # M1 templates read assistant tool_calls and tool messages as OpenAI sends them

    def __init__(self, make_id: Callable[[], str] = new_call_id) -> None:
        self._make_id = make_id

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        stream = ToolCallsStreamParser(self._make_id)
        events = stream.feed(text) + stream.finish()
        return "".join(e for e in events if isinstance(e, str)), [e for e in events if isinstance(e, ToolCall)]

    def streaming(self) -> StreamingToolCallParser:
        return ToolCallsStreamParser(self._make_id)

    def forced_prefix(self, name: str | None) -> str:
        # With a name the prefix ends where the arguments object begins, so only that tool can be called.
        head = f"{OPEN}\n"
        return head if name is None else f'{head}{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": '

    def call_frame(self, name: str) -> tuple[str, str]:
        # One call on its own line, then the block's end: what _parse_body reads back.
        return self.forced_prefix(name), f"}}\n{CLOSE}"
