"""The chat template: MiniMax-Text-01's `chat_template` and a Jinja environment that renders it exactly as
transformers' `apply_chat_template` does (byte-identical output is tested against transformers)."""

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

from minimax01.chat.messages import normalize_messages, normalize_tools
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
