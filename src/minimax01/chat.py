"""Chat template, request normalisation and native tool-call parsing for MiniMax-Text-01 (SPEC §7).

This module is the single source of truth for the special-token strings and the chat template.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any, Union

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from minimax01.errors import RequestError

# --- special tokens (SPEC §7.1) --------------------------------------------------------------------------
BOS = "<beginning_of_sentence>"
EOS = "<end_of_sentence>"
UNK = "<end_of_document>"
FUNCTION_CALL = "<function_call>"
BEGIN_OF_DOCUMENT = "<begin_of_document>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, UNK, FUNCTION_CALL, BEGIN_OF_DOCUMENT)
DEFAULT_EOS_TOKEN_ID = 200020  # `<end_of_sentence>` in the released tokenizer (MiniMax quickstart)


def _load_chat_template() -> str:
    text = resources.files("minimax01").joinpath("data/chat_template.jinja").read_text(encoding="utf-8")
    # The reference template has no trailing newline; editors and end-of-file fixers like to add one.
    return text.removesuffix("\n")


#: The exact `chat_template` of MiniMax-Text-01's tokenizer_config.json.
CHAT_TEMPLATE: str = _load_chat_template()

# Tool names must be readable back by the parser below (`functions.NAME(`), so both use this pattern.
_NAME_RE = re.compile(r"[\w.\-]+")
_CALL_PREFIX = "functions."
_FENCE = "```"
_WS = " \t\r\n"


# --- Jinja environment (mirrors transformers' apply_chat_template) ------------------------------------------
class _GenerationExtension(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` as a pass-through block.

    transformers uses it to record which characters the assistant produced; for rendering it changes nothing.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)  # the `generation` tag itself
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers replaces Jinja's HTML-escaping tojson with plain json.dumps(ensure_ascii=False);
    # the rendered tool definitions must match it byte for byte.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    # Same options as transformers (trim/lstrip blocks, loopcontrols) so custom templates render identically.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationExtension, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


# --- normalisation -----------------------------------------------------------------------------------------
_ROLES = ("system", "user", "assistant", "tool", "function")
_ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role


def _text_parts(content: Any, where: str) -> list[str]:
    """The text pieces of an OpenAI `content` (string, None or list of text parts)."""
    if content is None:
        return [""]
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise RequestError(f"{where} must be a string, null or a list of content parts, got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise RequestError(f"{where}[{j}] must be an object with type 'text'")
        if part.get("type") != "text":
            raise RequestError(
                f"{where}[{j}].type {part.get('type')!r} is not supported (MiniMax-Text-01 reads text only)"
            )
        if not isinstance(part.get("text"), str):
            raise RequestError(f"{where}[{j}].text must be a string")
        texts.append(part["text"])
    return texts


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise RequestError(f"{where} must be a non-empty string of letters, digits, '_', '-' or '.', got {name!r}")
    return name


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _call_arguments(arguments: Any, where: str) -> str:
    """The arguments JSON text to render: kept as given so that a parse → render round trip is exact."""
    if arguments is None or arguments == "":
        return "{}"
    if isinstance(arguments, Mapping):  # some clients send the object instead of its JSON text
        return json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        raise RequestError(f"{where} must be a JSON object encoded as a string")
    try:
        value = json.loads(arguments)
    except ValueError:
        raise RequestError(f"{where} is not valid JSON: {arguments[:80]!r}") from None
    if not isinstance(value, dict):
        raise RequestError(f"{where} must be a JSON object, got {type(value).__name__}")
    return arguments


def render_tool_call(name: str, arguments: str) -> str:
    """The native text of one tool call, exactly as the model emits it (SPEC §7.3)."""
    return f"{FUNCTION_CALL}{_FENCE}typescript\nfunctions.{name}({arguments})\n{_FENCE}"


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Converts OpenAI-style chat messages into the form the MiniMax template expects.

    - content (string, None or text parts) → `[{"type": "text", "text": ...}]`; system/user/function messages
      get a single part (their several text parts joined with "\\n", because the template reads only part 0);
      assistant text parts are kept, the template concatenates them.
    - assistant `tool_calls` → appended as native `<function_call>` text, one block per call, arguments text
      unchanged.
    - `role: "tool"` → `role: "function"` with `name` from the message or from the earlier assistant tool call
      with the same `tool_call_id`; a result that is not JSON is encoded as a JSON string, because the template
      splices it raw into `{"name": ..., "response": RESULT}`.
    - `developer` is read as `system`. Already-normalised messages pass through unchanged.

    Raises RequestError naming the offending field.
    """
    if not isinstance(messages, (list, tuple)):
        raise RequestError(f"messages must be a list of message objects, got {type(messages).__name__}")
    if not messages:
        raise RequestError("messages must contain at least one message")
    call_names: dict[str, str] = {}  # tool_call id → function name, from earlier assistant turns
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise RequestError(f"{where} must be an object, got {type(msg).__name__}")
        role = msg.get("role")
        if not isinstance(role, str):
            raise RequestError(f"{where}.role is missing or not a string")
        role = _ROLE_ALIASES.get(role, role)
        if role not in _ROLES:
            raise RequestError(f"{where}.role {role!r} is unknown; expected one of {', '.join(_ROLES)}")
        tool_calls = msg.get("tool_calls")
        if tool_calls is not None and role != "assistant":
            raise RequestError(f"{where}.tool_calls is only allowed on assistant messages")
        if "content" not in msg and not (role == "assistant" and tool_calls):
            raise RequestError(f"{where}.content is missing")
        texts = _text_parts(msg.get("content"), f"{where}.content")

        if role == "assistant":
            parts = [{"type": "text", "text": t} for t in texts]
            if tool_calls is not None:
                parts.append({"type": "text", "text": _render_tool_calls(tool_calls, where, call_names)})
            out.append({"role": "assistant", "content": parts})
            continue

        text = "\n".join(texts)
        if role in ("system", "user"):
            out.append({"role": role, "content": [{"type": "text", "text": text}]})
            continue

        if role == "function":
            name = _check_name(msg.get("name"), f"{where}.name")
        else:  # OpenAI tool result
            name = _tool_result_name(msg, where, call_names)
            if not _is_json(text):
                text = json.dumps(text, ensure_ascii=False)
        out.append({"role": "function", "name": name, "content": [{"type": "text", "text": text}]})
    return out


def _render_tool_calls(tool_calls: Any, where: str, call_names: dict[str, str]) -> str:
    """Validates OpenAI `tool_calls` and renders them natively; records their ids for later tool results."""
    if not isinstance(tool_calls, list):
        raise RequestError(f"{where}.tool_calls must be a list")
    rendered = []
    for j, call in enumerate(tool_calls):
        cw = f"{where}.tool_calls[{j}]"
        if not isinstance(call, Mapping):
            raise RequestError(f"{cw} must be an object")
        if call.get("type", "function") != "function":
            raise RequestError(f"{cw}.type must be 'function', got {call.get('type')!r}")
        fn = call.get("function")
        if not isinstance(fn, Mapping):
            raise RequestError(f"{cw}.function must be an object with name and arguments")
        name = _check_name(fn.get("name"), f"{cw}.function.name")
        arguments = _call_arguments(fn.get("arguments"), f"{cw}.function.arguments")
        call_id = call.get("id")
        if call_id is not None:
            if not isinstance(call_id, str):
                raise RequestError(f"{cw}.id must be a string")
            call_names[call_id] = name
        rendered.append(render_tool_call(name, arguments))
    return "".join(rendered)


def _tool_result_name(msg: Mapping[str, Any], where: str, call_names: dict[str, str]) -> str:
    call_id = msg.get("tool_call_id")
    resolved = call_names.get(call_id) if isinstance(call_id, str) else None
    if msg.get("name") is not None:
        name = _check_name(msg["name"], f"{where}.name")
        if resolved is not None and resolved != name:
            raise RequestError(f"{where}.name {name!r} differs from the name {resolved!r} of tool call {call_id!r}")
        return name
    if resolved is None:
        raise RequestError(
            f"{where}.tool_call_id {call_id!r} does not match the id of any earlier assistant tool call "
            "(give the function name in `name` or a matching tool_call_id)"
        )
    return resolved


def normalize_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Validates tool definitions and returns the inner function objects to render.

    Accepts OpenAI entries `{"type": "function", "function": {...}}`, bare function objects
    `{"name", "description", "parameters"}` and the flat `{"type": "function", "name": ...}` form.
    The template renders each entry as given; we render the inner function object because MiniMax's
    function-call guide shows that form as the model's input format, the better guess of the training format
    (SPEC §7.2). The HF example passes the OpenAI wrapper and so renders `{"type": "function", "function": ...}`
    instead. Keys keep their order and values are not altered.
    """
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)):
        raise RequestError(f"tools must be a list, got {type(tools).__name__}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise RequestError(f"{where} must be an object")
        if tool.get("type", "function") != "function":
            raise RequestError(f"{where}.type {tool['type']!r} is not supported; only 'function' tools are")
        if "function" in tool:  # Chat Completions: {"type": "function", "function": {...}}
            fn, where = tool["function"], f"{where}.function"
            if not isinstance(fn, Mapping):
                raise RequestError(f"{where} must be an object")
        else:  # a bare function object, or the Responses API's flat {"type": "function", "name": ...}
            fn = {k: v for k, v in tool.items() if k != "type"}
        name = _check_name(fn.get("name"), f"{where}.name")
        if name in seen:
            raise RequestError(f"{where}.name {name!r} is defined twice")
        seen.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            raise RequestError(f"{where}.description must be a string")
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, Mapping):
                raise RequestError(f"{where}.parameters must be a JSON Schema object")
            if params.get("type", "object") != "object":
                raise RequestError(f"{where}.parameters.type must be 'object', got {params.get('type')!r}")
        out.append(dict(fn))
    return out


def render_chat(messages: Any, tools: Any = None, add_generation_prompt: bool = True, *,
                chat_template: str | None = None) -> str:
    """Normalises `messages`/`tools` and renders them with the chat template (default: MiniMax-Text-01's).

    For already-normalised input the result is byte-identical to transformers'
    `apply_chat_template(..., tokenize=False)` with the same template.
    """
    template = _compile(CHAT_TEMPLATE if chat_template is None else chat_template)
    try:
        return template.render(
            messages=normalize_messages(messages),
            tools=normalize_tools(tools),
            documents=None,
            add_generation_prompt=add_generation_prompt,
            # transformers passes the special tokens map too; custom templates may use them
            bos_token=BOS, eos_token=EOS, unk_token=UNK,
        )
    except jinja2.exceptions.TemplateError as e:
        raise RequestError(f"chat template failed: {e}") from e


# --- tool-call parsing (SPEC §7.3) -------------------------------------------------------------------------
@dataclass
class ToolCall:
    """One parsed tool call. `arguments` is the JSON text exactly as the model wrote it."""

    name: str
    arguments: str  # JSON string
    id: str

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI `tool_calls[]` entry (also accepted back by normalize_messages)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


#: A streaming event: a piece of content text or a completed tool call.
Event = Union[str, ToolCall]


def new_call_id() -> str:
    """A fresh OpenAI-style tool-call id."""
    return "call_" + uuid.uuid4().hex[:24]


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
        m = _NAME_RE.match(body, pos + len(_CALL_PREFIX))
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

    Calls are `<function_call>```typescript\\nfunctions.NAME({...})\\n```` ` blocks (several blocks, or several
    call lines in one block, are fine). Text outside the blocks is the content; a malformed or truncated block
    stays in the content as plain text. Never raises.
    """
    events, _, _ = _scan(text, True, make_id)
    content = "".join(e for e in events if isinstance(e, str))
    return content, [e for e in events if isinstance(e, ToolCall)]


class StreamingToolCallParser:
    """Incremental parse_tool_calls: feed text deltas, get content pieces and completed tool calls.

    Text that is, or may turn into, a `<function_call>` block is held back until it is decided, so no part of a
    call is ever emitted as content; `finish()` flushes an unterminated block as plain content. For any split
    of a text, the events add up to what parse_tool_calls returns for the whole text.
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
