"""`minimax01 chat`: an interactive chat (REPL) over the model's chat template, tool calls shown as they are
parsed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minimax01.cli.args import (add_chat_format_flags, add_model_flags, add_sampling_flags, chat_setup_arg,
                                model_dir_arg, sampling_kwargs)
from minimax01.cli.run_model import Stats, stream_text, with_model, write
from minimax01.errors import RequestError

if TYPE_CHECKING:
    from minimax01.loading import ChatSetup, Loaded


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="interactive chat (REPL) using the model's chat template",
                       description="Reads one user message per line from stdin (works with a pipe), streams each "
                                   "reply, and keeps the conversation. /reset starts over, /exit or end of input "
                                   "quits.")
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument("--tools", metavar="FILE",
                   help="JSON file with a list of tool definitions (OpenAI style); tool calls in replies are shown "
                        "as [tool call] name(arguments)")
    add_model_flags(p)
    add_sampling_flags(p)
    add_chat_format_flags(p)
    p.set_defaults(func=cmd_chat)


def load_tools(path: str) -> list[dict[str, Any]]:
    """Tool definitions from a JSON file (a list, OpenAI `tools` style); errors name the file and position."""
    from minimax01.chat.messages import normalize_tools

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RequestError(f"--tools {path}: cannot read ({e.__class__.__name__}: {e})") from None
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"--tools {path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    try:
        normalize_tools(tools)  # validate now, not at the first turn
    except RequestError as e:
        raise RequestError(f"--tools {path}: {e}") from None
    if not tools:
        raise RequestError(f"--tools {path}: the list of tools is empty")
    return tools


def chat_turn(loaded: Loaded, chat: ChatSetup, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
              sampling: dict[str, Any]) -> str:
    """Streams one assistant reply to stdout (reasoning shown as `[reasoning] ...`, tool calls as
    `[tool call] name(arguments)`); returns its raw text, which goes back into the history verbatim so the model
    sees exactly what it generated."""
    from minimax01.chat.reasoning import OutputStream, Reasoning
    from minimax01.chat.template import render_chat
    from minimax01.chat.tool_parsers import reasoning_parser_for, tool_parser_for

    tool_parser = tool_parser_for(chat.format.tool_call_parser)
    prompt = render_chat(messages, tools, chat_template=chat.chat_template, tool_history=tool_parser.tool_history)
    reasoning = reasoning_parser_for(chat.format.reasoning_parser)
    parser = OutputStream(reasoning.streaming() if reasoning else None, tool_parser.streaming() if tools else None)
    raw: list[str] = []
    line_open = False  # the last text written did not end a line
    in_reasoning = False

    def show(events: Iterable[Any]) -> None:
        nonlocal line_open, in_reasoning
        for e in events:
            if isinstance(e, Reasoning):
                e, was = e.text, in_reasoning
                in_reasoning = True
                if not was:
                    e = "[reasoning] " + e
            elif in_reasoning:  # the answer starts on a line of its own
                in_reasoning = False
                write("\n" if line_open else "")
                line_open = False
            if not isinstance(e, str):  # a tool call gets a line of its own
                e = ("\n" if line_open else "") + f"[tool call] {e.name}({e.arguments})\n"
            write(e)
            line_open = not e.endswith("\n")

    stats = Stats()
    for text in stream_text(loaded, prompt, sampling, stats):
        raw.append(text)
        show(parser.feed(text))
    show(parser.finish())
    if line_open or not raw:
        write("\n")  # every reply ends a line; an empty reply is an empty line
    stats.report()
    return "".join(raw)


def cmd_chat(args: argparse.Namespace) -> int:
    chat = chat_setup_arg(args, model_dir_arg(args.model))  # before the model: a bad flag fails fast
    sampling = sampling_kwargs(args, chat.generation_defaults)
    tools = load_tools(args.tools) if args.tools else None
    return with_model(args, lambda loaded: chat_loop(loaded, chat, args.system, tools, sampling))


def chat_loop(loaded: Loaded, chat: ChatSetup, system_prompt: str | None, tools: list[dict[str, Any]] | None,
              sampling: dict[str, Any]) -> int:
    """The REPL: one user message per line of stdin until /exit or end of input."""
    interactive = sys.stdin.isatty()
    if interactive:
        print("Chat with the model. /reset clears the conversation, /exit (or Ctrl-D) quits.", file=sys.stderr)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages = list(system)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if line == "/exit":
            break
        if line == "/reset":
            messages = list(system)
            print("[conversation reset]", file=sys.stderr)
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        reply = chat_turn(loaded, chat, messages, tools, sampling)
        messages.append({"role": "assistant", "content": reply})
    return 0
