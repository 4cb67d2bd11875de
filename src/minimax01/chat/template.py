"""The chat template: MiniMax-Text-01's `chat_template` and a Jinja environment that renders it, or a
checkpoint's own template, exactly as transformers' `apply_chat_template` does (byte-identical output is tested
against transformers).

Templates differ in how they read `message['content']`: Text-01's indexes it as a list of `{type, text}` parts,
others (MiniMax-M1's, most fine-tunes') print it as a string. Which one a template expects is read from its
syntax tree (`content_format`), and messages are handed over in that form."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from minimax01.chat.messages import ToolHistory, normalize_messages, normalize_tools
from minimax01.errors import RequestError
from minimax01.special_tokens import BOS, EOS, UNK


def _load_chat_template() -> str:
    text = resources.files("minimax01").joinpath("data/chat_template.jinja").read_text(encoding="utf-8")
    # The reference template has no trailing newline; editors and end-of-file fixers like to add one.
    return text.removesuffix("\n")


#: The exact `chat_template` of MiniMax-Text-01's tokenizer_config.json.
CHAT_TEMPLATE: str = _load_chat_template()


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


def _environment() -> ImmutableSandboxedEnvironment:
    # Same options as transformers (trim/lstrip blocks, loopcontrols) so custom templates render identically.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationExtension, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _is_content(node: jinja2.nodes.Node) -> bool:
    """`x['content']` or `x.content`."""
    if isinstance(node, jinja2.nodes.Getitem):
        return isinstance(node.arg, jinja2.nodes.Const) and node.arg.value == "content"
    return isinstance(node, jinja2.nodes.Getattr) and node.attr == "content"


def _unfiltered(node: jinja2.nodes.Node) -> jinja2.nodes.Node:
    while isinstance(node, jinja2.nodes.Filter) and node.node is not None:
        node = node.node
    return node


def _reads_content_as_list(tree: jinja2.nodes.Template) -> bool:
    """Whether the template indexes `content` with a number or loops over it (the list-of-parts form)."""
    for node in tree.find_all(jinja2.nodes.Getitem):
        if _is_content(node.node) and isinstance(node.arg, jinja2.nodes.Const) and isinstance(node.arg.value, int):
            return True
    return any(_is_content(_unfiltered(loop.iter)) for loop in tree.find_all(jinja2.nodes.For))


@lru_cache(maxsize=8)
def _compile(template: str) -> tuple[jinja2.Template, bool]:
    """The compiled template and whether it reads `content` as a list of parts."""
    env = _environment()
    try:
        tree = env.parse(template)
        return env.from_string(tree), _reads_content_as_list(tree)  # compiled from the tree: parsed once
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise RequestError(f"chat template has a syntax error: {e}") from e


def content_format(chat_template: str) -> str:
    """'list' (content as `[{type, text}]` parts, as Text-01's template reads it) or 'string'."""
    return "list" if _compile(chat_template)[1] else "string"


def _as_strings(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with each content list of text parts joined into one string (the parts are what the list form
    template would concatenate)."""
    return [{**m, "content": "".join(p["text"] for p in m["content"])} for m in messages]


# Variables render_chat sets itself; chat_template_kwargs may not replace them.
_RESERVED = frozenset({"messages", "tools", "documents", "add_generation_prompt", "bos_token", "eos_token",
                       "unk_token"})


def render_chat(messages: Any, tools: Any = None, add_generation_prompt: bool = True, *,
                chat_template: str | None = None, tool_history: ToolHistory = "text-01",
                template_kwargs: dict[str, Any] | None = None) -> str:
    """Normalises `messages`/`tools` and renders them with the chat template (default: MiniMax-Text-01's).

    `tool_history` says how earlier tool calls and results reach the template (messages.normalize_messages);
    `template_kwargs` are extra template variables (the request's `chat_template_kwargs`, e.g. a switch a
    template reads). For already-normalised input the result is byte-identical to transformers'
    `apply_chat_template(..., tokenize=False)` with the same template.
    """
    template, list_content = _compile(CHAT_TEMPLATE if chat_template is None else chat_template)
    extra = dict(template_kwargs or {})
    if clash := sorted(_RESERVED & extra.keys()):
        raise RequestError(f"chat_template_kwargs may not set {', '.join(clash)}")
    normalized = normalize_messages(messages, tool_history)
    try:
        return template.render(
            **extra,
            messages=normalized if list_content else _as_strings(normalized),
            tools=normalize_tools(tools),
            documents=None,
            add_generation_prompt=add_generation_prompt,
            # transformers passes the special tokens map too; custom templates may use them
            bos_token=BOS, eos_token=EOS, unk_token=UNK,
        )
    # A template may also fail on values it did not expect (e.g. `'a' + content` with list content): that is a
    # request the template cannot render, not a server fault.
    except (jinja2.exceptions.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise RequestError(f"chat template failed: {e}") from e
