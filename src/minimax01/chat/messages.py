"""OpenAI-style chat input converted to what a MiniMax chat template reads, with every field validated
(RequestError naming the offending field). The template rendering itself is template.py.

Earlier tool calls and tool results reach the template in one of two forms (`ToolHistory`):
- "text-01": MiniMax-Text-01's template knows no `tool_calls` field and no `tool` role, so calls become native
  `<function_call>` text in the assistant content and results become `function` messages;
- "openai": what templates such as MiniMax-M1's read (as vLLM passes them): assistant `tool_calls` with
  `arguments` as a JSON object (the template writes it with `tojson`), and `tool` messages with the function
  `name` filled in from the matching call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from minimax01.chat.function_call import TOOL_NAME_RE, render_tool_call
from minimax01.errors import RequestError

ToolHistory = Literal["text-01", "openai"]
TOOL_HISTORIES: tuple[str, ...] = ("text-01", "openai")
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
    if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
        raise RequestError(f"{where} must be a non-empty string of letters, digits, '_', '-' or '.', got {name!r}")
    return name


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # too deep to read is treated like any text that is not JSON
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
    except RecursionError:
        raise RequestError(f"{where} is nested too deeply to read") from None
    if not isinstance(value, dict):
        raise RequestError(f"{where} must be a JSON object, got {type(value).__name__}")
    return arguments


def normalize_messages(messages: Any, tool_history: ToolHistory = "text-01") -> list[dict[str, Any]]:
    """Converts OpenAI-style chat messages into the form a MiniMax template expects (Text-01's by default).

    - content (string, None or text parts) → `[{"type": "text", "text": ...}]`; system/user/function messages
      get a single part (their several text parts joined with "\\n", because the template reads only part 0);
      assistant text parts are kept, the template concatenates them.
    - assistant `tool_calls` → appended as native `<function_call>` text, one block per call, arguments text
      unchanged.
    - `role: "tool"` → `role: "function"` with `name` from the message or from the earlier assistant tool call
      with the same `tool_call_id`; a result that is not JSON is encoded as a JSON string, because the template
      splices it raw into `{"name": ..., "response": RESULT}`.
    - `developer` is read as `system`. Already-normalised messages pass through unchanged.
    With tool_history "openai", tool calls and results keep the OpenAI shape instead (see the module doc).

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
            calls = _checked_tool_calls(tool_calls, where, call_names) if tool_calls is not None else []
            if tool_history == "openai":
                message: dict[str, Any] = {"role": "assistant", "content": parts}
                if calls:
                    message["tool_calls"] = [
                        {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.loads(args)}}
                        for call_id, name, args in calls]
                out.append(message)
            else:
                if calls:
                    parts.append({"type": "text", "text": "".join(render_tool_call(n, a) for _, n, a in calls)})
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
        if tool_history == "openai":
            result: dict[str, Any] = {"role": "tool", "name": name, "content": [{"type": "text", "text": text}]}
            if isinstance(msg.get("tool_call_id"), str):
                result["tool_call_id"] = msg["tool_call_id"]
            out.append(result)
            continue
        if role == "tool" and not _is_json(text):
            text = json.dumps(text, ensure_ascii=False)
        out.append({"role": "function", "name": name, "content": [{"type": "text", "text": text}]})
    return out


def _checked_tool_calls(tool_calls: Any, where: str, call_names: dict[str, str]) -> list[tuple[str | None, str, str]]:
    """Validates OpenAI `tool_calls` into (id, name, arguments JSON text); records their ids for later tool
    results."""
    if not isinstance(tool_calls, list):
        raise RequestError(f"{where}.tool_calls must be a list")
    checked: list[tuple[str | None, str, str]] = []
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
        checked.append((call_id, name, arguments))
    return checked


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
    function-call guide shows that form as the model's input format, the better guess of the training format.
    The HF example passes the OpenAI wrapper and so renders `{"type": "function", "function": ...}`
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
