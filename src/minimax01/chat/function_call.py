"""MiniMax-Text-01's native tool calls: `<function_call>```typescript\nfunctions.NAME({...})\n```` ` blocks.

Both directions live here so that they cannot drift apart: `render_tool_call` writes a call the way the model
emits it (message conversion puts earlier calls back into the history with it), and the parsers read it back
byte for byte (`arguments` is kept as written, surrounding whitespace included).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from minimax01.chat.tool_calls import Event, StreamingToolCallParser, ToolCall, new_call_id
from minimax01.special_tokens import FUNCTION_CALL

# Tool names must be readable back by the parser (`functions.NAME(`), so validation and parsing share it.
TOOL_NAME_RE = re.compile(r"[\w.\-]+")
_CALL_PREFIX = "functions."
_FENCE = "```"
_WS = " \t\r\n"
# Everything a call writes before the tool name.
_CALL_HEAD = f"{FUNCTION_CALL}{_FENCE}typescript\n{_CALL_PREFIX}"


def render_tool_call(name: str, arguments: str) -> str:
    """The native text of one tool call, exactly as the model emits it."""
    return f"{_CALL_HEAD}{name}({arguments})\n{_FENCE}"


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity would give arguments other clients cannot read


# strict=True (the default) rejects raw newlines inside strings, which is what lets a block end at the first
# "\n```": in valid JSON, neither a raw newline inside a string nor a backtick outside one can occur.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)

_COMPLETE, _MALFORMED, _NEED_MORE = "complete", "malformed", "need_more"


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _parse_calls(body: str) -> list[tuple[str, str]] | None:
    """`functions.NAME(JSON)` calls, one per line (the JSON may span lines); None if anything else is there."""
    calls: list[tuple[str, str]] = []
    pos = _skip(body, 0, _WS)
    while pos < len(body):
        if not body.startswith(_CALL_PREFIX, pos):
            return None
        m = TOOL_NAME_RE.match(body, pos + len(_CALL_PREFIX))
        if m is None or not body.startswith("(", m.end()):
            return None
        args_start = m.end() + 1
        j = _skip(body, args_start, _WS)
        if body.startswith(")", j):  # `functions.now()`: a call without arguments
            arguments, pos = "{}", j + 1
        else:
            try:
                value, end = _DECODER.raw_decode(body, j)
            except ValueError:
                return None
            k = _skip(body, end, _WS)
            if not isinstance(value, dict) or not body.startswith(")", k):
                return None
            arguments, pos = body[args_start:k], k + 1  # keep surrounding whitespace: exact round trip
        pos = _skip(body, pos, " \t\r")
        if pos < len(body) and body[pos] != "\n":
            return None  # something after the call on its line
        calls.append((m.group(), arguments))
        pos = _skip(body, pos, _WS)
    return calls or None


def _parse_block(text: str, start: int, final: bool, resume: int = 0) -> tuple[str, int, list[tuple[str, str]]]:
    """Parses the block at `text[start:]`, which begins with FUNCTION_CALL.

    Returns (status, end, calls). COMPLETE/MALFORMED depend only on text the caller already has, so a prefix
    never decides differently from the whole text; NEED_MORE (only when not `final`) comes with `end` = where
    the closing-fence search may resume next time (avoids rescanning long arguments while streaming).
    """
    undecided = (_MALFORMED if final else _NEED_MORE, 0, [])
    pos = _skip(text, start + len(FUNCTION_CALL), _WS)
    for ch in _FENCE:  # opening fence
        if pos >= len(text):
            return undecided
        if text[pos] != ch:
            return _MALFORMED, 0, []
        pos += 1
    pos = _skip(text, pos, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-")  # language tag
    pos = _skip(text, pos, " \t\r")
    if pos >= len(text):
        return undecided
    if text[pos] != "\n":
        return _MALFORMED, 0, []
    body_start = pos + 1
    # Search from the header's own newline so that an empty body ("```typescript\n```") ends the block too.
    fence = text.find("\n" + _FENCE, max(body_start - 1, resume))
    if fence < 0:
        if final:
            return _MALFORMED, 0, []
        return _NEED_MORE, max(body_start - 1, len(text) - len(_FENCE)), []
    calls = _parse_calls(text[body_start:fence])
    if calls is None:
        return _MALFORMED, 0, []
    return _COMPLETE, fence + 1 + len(_FENCE), calls


def _marker_prefix_len(text: str, pos: int) -> int:
    """Length of the longest proper prefix of FUNCTION_CALL that ends `text` (and starts at or after pos)."""
    for k in range(min(len(FUNCTION_CALL) - 1, len(text) - pos), 0, -1):
        if text.endswith(FUNCTION_CALL[:k]):
            return k
    return 0


def _add_text(events: list[Event], text: str) -> None:
    if not text:
        return
    if events and isinstance(events[-1], str):
        events[-1] += text
    else:
        events.append(text)


def _scan(buf: str, final: bool, make_id: Callable[[], str], resume: int = 0) -> tuple[list[Event], str, int]:
    """Turns as much of `buf` as can be decided into events; returns (events, undecided rest, resume offset)."""
    events: list[Event] = []
    pos = 0
    while True:
        i = buf.find(FUNCTION_CALL, pos)
        if i < 0:
            keep = 0 if final else _marker_prefix_len(buf, pos)
            _add_text(events, buf[pos:len(buf) - keep])
            return events, buf[len(buf) - keep:], 0
        _add_text(events, buf[pos:i])
        status, end, calls = _parse_block(buf, i, final, resume if i == 0 else 0)
        if status == _NEED_MORE:
            return events, buf[i:], max(end - i, 0)
        if status == _MALFORMED:
            # The marker becomes plain text and scanning goes on right after it, so a later block still counts.
            _add_text(events, FUNCTION_CALL)
            pos = i + len(FUNCTION_CALL)
        else:
            events.extend(ToolCall(name, arguments, make_id()) for name, arguments in calls)
            pos = end
        resume = 0


def parse_tool_calls(text: str, make_id: Callable[[], str] = new_call_id) -> tuple[str, list[ToolCall]]:
    """Splits model output into (content, tool calls).

    Several blocks, or several call lines in one block, are fine. Text outside the blocks is the content; a
    malformed or truncated block stays in the content as plain text. Never raises.
    """
    events, _, _ = _scan(text, True, make_id)
    content = "".join(e for e in events if isinstance(e, str))
    return content, [e for e in events if isinstance(e, ToolCall)]


class FunctionCallStreamParser:
    """Incremental parse_tool_calls (a StreamingToolCallParser): feed text deltas, get content pieces and
    completed tool calls.

    Text that is, or may turn into, a `<function_call>` block is held back until it is decided; `finish()`
    flushes an unterminated block as plain content.
    """

    def __init__(self, make_id: Callable[[], str] = new_call_id) -> None:
        self._make_id = make_id
        self._buf = ""
        self._resume = 0  # where the pending block's closing-fence search continues

    def feed(self, delta: str) -> list[Event]:
        """Adds generated text; returns what can be emitted now."""
        if not delta:
            return []
        events, self._buf, self._resume = _scan(self._buf + delta, False, self._make_id, self._resume)
        return events

    def finish(self) -> list[Event]:
        """Ends the stream: everything still held back is decided (an unterminated block becomes content)."""
        events, _, _ = _scan(self._buf, True, self._make_id)
        self._buf, self._resume = "", 0
        return events


class FunctionCallParser:
    """The ToolCallParser of MiniMax-Text-01's `<function_call>` blocks."""

    tool_history = "text-01"  # Text-01's template reads earlier calls only as native text in the content

    def __init__(self, make_id: Callable[[], str] = new_call_id) -> None:
        self._make_id = make_id

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        return parse_tool_calls(text, self._make_id)

    def streaming(self) -> StreamingToolCallParser:
        return FunctionCallStreamParser(self._make_id)

    def forced_prefix(self, name: str | None) -> str:
        # With a name the prefix ends at the "(" of its arguments, so only that tool can be called.
        return _CALL_HEAD if name is None else f"{_CALL_HEAD}{name}("

    def call_frame(self, name: str) -> tuple[str, str]:
        before, _, after = render_tool_call(name, "\0").partition("\0")  # the one writer of the format
        return before, after
