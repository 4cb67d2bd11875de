"""chat/: template rendering (byte parity with transformers), OpenAI-style normalisation, tool-call parsing."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
from pathlib import Path

import pytest

import minimax01.special_tokens as special_tokens
from minimax01.chat.function_call import FunctionCallStreamParser, parse_tool_calls, render_tool_call
from minimax01.chat.messages import normalize_messages, normalize_tools
from minimax01.chat.template import CHAT_TEMPLATE, render_chat
from minimax01.chat.tool_calls import ToolCall
from minimax01.special_tokens import BOS, EOS, FUNCTION_CALL
from minimax01.errors import RequestError
from minimax01.tokenizer import load_tokenizer, train_tiny_tokenizer

# The tokenizer_config.json released with MiniMax-Text-01 (its chat template and special tokens).
REFERENCE = Path(__file__).parent / "data" / "MiniMax-Text-01.tokenizer_config.json"
# sha256 of the `chat_template` string in MiniMax-Text-01's tokenizer_config.json (checked against the file
# below where it is available), so the parity tests can not silently run against an edited template.
REFERENCE_TEMPLATE_SHA256 = "b6b016d76dedfa80480897d1d8dbe00f8c187cae1d6ecd7b0865bf42e095429f"


def counter_ids():
    c = itertools.count()
    return lambda: f"call_{next(c)}"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny_tok")
    train_tiny_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def hf_tok(tiny_dir: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_dir / "tokenizer.json"))


def hf_render(hf_tok, messages, tools=None, add_generation_prompt=True) -> str:
    return hf_tok.apply_chat_template(
        copy.deepcopy(messages), tools=copy.deepcopy(tools), chat_template=CHAT_TEMPLATE, tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def t(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


# --- the template itself ----------------------------------------------------------------------------------
def test_template_is_the_reference_one():
    assert hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest() == REFERENCE_TEMPLATE_SHA256
    assert CHAT_TEMPLATE == json.loads(REFERENCE.read_text(encoding="utf-8"))["chat_template"]


def test_special_token_constants():
    assert special_tokens.SPECIAL_TOKENS == (
        "<beginning_of_sentence>", "<end_of_sentence>", "<end_of_document>", "<function_call>", "<begin_of_document>"
    )
    assert ((special_tokens.BOS, special_tokens.EOS, special_tokens.UNK, special_tokens.FUNCTION_CALL)
            == special_tokens.SPECIAL_TOKENS[:4])
    assert special_tokens.DEFAULT_EOS_TOKEN_ID == 200020


# --- byte parity with transformers ------------------------------------------------------------------------
WEATHER = {
    "name": "get_current_weather",
    "description": "Get the latest weather for a location — «city» <b>&</b> 天气",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "A city, e.g. 上海 or \"New York\""}},
        "required": ["location"],
    },
}
SEARCH = {
    "name": "search_web",
    "description": "Search.\nSecond line with a tab\tand backslash \\ and emoji 🚀",
    "parameters": {
        "type": "object",
        "properties": {
            "query_list": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}},
        },
        "required": ["query_list"],
    },
}
NOPARAMS = {"name": "now", "description": "Current time"}

CALL_TEXT = render_tool_call("get_current_weather", '{"location": "上海"}')

CONVERSATIONS = {
    "user": [{"role": "user", "content": t("What's the weather like in Shanghai today?")}],
    "system_user_assistant": [
        {"role": "system", "content": t("You are a helpful assistant.")},
        {"role": "user", "content": t("Hi!")},
        {"role": "assistant", "content": t("Hello! How can I help?")},
        {"role": "user", "content": t("Tell me a joke.")},
    ],
    "unicode": [
        {"role": "system", "content": t("你是一个助手。Ты помощник. 🤖\u200d")},
        {"role": "user", "content": t("Ünïcödé \"quotes\" \\backslash {{ not_jinja }} {% raw %} <tag>&amp; e\u0301 👨‍👩‍👧 \r\n\t")},
        {"role": "assistant", "content": t("مرحبا — ok\n\n```python\nprint('x')\n```")},
    ],
    "empty_texts": [
        {"role": "system", "content": t("")},
        {"role": "user", "content": t("")},
        {"role": "assistant", "content": t("")},
    ],
    "assistant_parts": [
        {"role": "user", "content": t("q")},
        {"role": "assistant", "content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]},
    ],
    "function_role": [
        {"role": "user", "content": t("Weather?")},
        {"role": "assistant", "content": t("Let me check.\n" + CALL_TEXT)},
        {"role": "function", "name": "get_current_weather",
         "content": t(json.dumps({"temp": 21, "desc": "晴 ☀", "nested": {"a": [1, 2, {"b": None}]}},
                                 ensure_ascii=False))},
        {"role": "assistant", "content": t("It is sunny, 21°C.")},
    ],
    "multi_turn_tools": [
        {"role": "system", "content": t("sys")},
        {"role": "user", "content": t("Weather in Shanghai and Beijing, and search news.")},
        {"role": "assistant", "content": t(
            render_tool_call("get_current_weather", '{"location": "Shanghai"}')
            + render_tool_call("get_current_weather", '{"location": "Beijing"}')
            + render_tool_call("search_web", '{"query_list": ["新闻", "news"], "options": {"n": 3}}'))},
        {"role": "function", "name": "get_current_weather", "content": t('{"temp": 20}')},
        {"role": "function", "name": "get_current_weather", "content": t('{"temp": -3, "text": "a \\"quoted\\" }"}')},
        {"role": "function", "name": "search_web", "content": t('[{"title": "<b>x</b>"}]')},
        {"role": "assistant", "content": t("Done.")},
        {"role": "user", "content": t("Thanks")},
    ],
    "raw_function_text": [  # the template splices the response raw; not JSON is rendered as given
        {"role": "user", "content": t("x")},
        {"role": "function", "name": "f", "content": t("plain text response")},
    ],
}
TOOLSETS = {"no_tools": None, "one_tool": [WEATHER], "three_tools": [WEATHER, SEARCH, NOPARAMS]}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("tools_name", list(TOOLSETS))
@pytest.mark.parametrize("conv_name", list(CONVERSATIONS))
def test_render_matches_transformers(hf_tok, conv_name, tools_name, add_generation_prompt):
    messages, tools = CONVERSATIONS[conv_name], TOOLSETS[tools_name]
    expected = hf_render(hf_tok, messages, tools, add_generation_prompt)
    assert render_chat(messages, tools, add_generation_prompt) == expected


def test_render_literal_expectation():
    # Independent of transformers: the exact text docs/model.md §9.2 describes.
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
        {"role": "tool", "tool_call_id": "x", "name": "f", "content": '{"r": 1}'},
    ]
    tools = [{"type": "function", "function": {"name": "f", "description": "ü", "parameters": {"type": "object"}}}]
    assert render_chat(messages, tools) == (
        "<beginning_of_sentence>system ai_setting=assistant\nS<end_of_sentence>\n"
        "<beginning_of_sentence>user name=user\nU<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=assistant\nA<end_of_sentence>\n"
        '<beginning_of_sentence>system function_response=functions\n{"name": "f", "response": {"r": 1}}'
        "<end_of_sentence>\n"
        '<beginning_of_sentence>system function_setting=functions\n{"name": "f", "description": "ü", '
        '"parameters": {"type": "object"}}<end_of_sentence>\n'
        "<beginning_of_sentence>ai name=assistant\n"
    )
    assert render_chat(messages, add_generation_prompt=False).endswith("<end_of_sentence>\n")


def test_openai_style_renders_like_normalised_input(hf_tok):
    openai_messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in 上海?"}, {"type": "text", "text": "Now."}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_current_weather", "arguments": '{"location": "上海"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
        {"role": "assistant", "content": "Sunny."},
    ]
    openai_tools = [{"type": "function", "function": WEATHER}, {"type": "function", "function": NOPARAMS}]
    normalised = [
        {"role": "system", "content": t("Be brief.")},
        {"role": "user", "content": t("Weather in 上海?\nNow.")},
        {"role": "assistant", "content": t("") + t(
            render_tool_call("get_current_weather", '{"location": "上海"}') + render_tool_call("now", "{}"))},
        {"role": "function", "name": "get_current_weather", "content": t('{"temp": 21}')},
        {"role": "function", "name": "now", "content": t('"12:00"')},
        {"role": "assistant", "content": t("Sunny.")},
    ]
    assert normalize_messages(openai_messages) == normalised
    assert normalize_tools(openai_tools) == [WEATHER, NOPARAMS]
    assert render_chat(openai_messages, openai_tools) == hf_render(hf_tok, normalised, [WEATHER, NOPARAMS])


def test_tokenizer_apply_chat_template_matches_transformers_ids(tiny_dir, hf_tok):
    tok = load_tokenizer(tiny_dir)
    messages, tools = CONVERSATIONS["multi_turn_tools"], [WEATHER, SEARCH]
    text = hf_render(hf_tok, messages, tools)
    assert tok.apply_chat_template(messages, tools, tokenize=False) == text
    assert tok.apply_chat_template(messages, tools) == hf_tok.encode(text, add_special_tokens=False)


# --- normalisation -----------------------------------------------------------------------------------------
def test_normalize_basic_forms():
    out = normalize_messages([
        {"role": "system", "content": "s", "name": "ignored"},
        {"role": "user", "content": None},
        {"role": "assistant", "content": "a"},
        {"role": "function", "name": "f", "content": "not json"},
    ])
    assert out == [
        {"role": "system", "content": t("s")},
        {"role": "user", "content": t("")},
        {"role": "assistant", "content": t("a")},
        {"role": "function", "name": "f", "content": t("not json")},  # native role: raw, as the template does
    ]


def test_tool_result_conversion():
    out = normalize_messages([
        {"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": {"y": "ü"}}},
        ]},
        {"role": "tool", "tool_call_id": "b", "content": "plain"},
        {"role": "tool", "tool_call_id": "a", "name": "f", "content": [{"type": "text", "text": '{"ok": true}'}]},
        {"role": "tool", "name": "h", "content": None},
    ])
    assert out[0] == {"role": "assistant", "content": t("") + t(
        render_tool_call("f", '{"x": 1}') + render_tool_call("g", '{"y": "ü"}'))}
    assert out[1] == {"role": "function", "name": "g", "content": t('"plain"')}
    assert out[2] == {"role": "function", "name": "f", "content": t('{"ok": true}')}
    assert out[3] == {"role": "function", "name": "h", "content": t('""')}


def test_normalize_is_idempotent_and_does_not_mutate():
    messages = CONVERSATIONS["multi_turn_tools"] + [
        {"role": "assistant", "content": "x", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c", "content": "1"},
    ]
    before = copy.deepcopy(messages)
    once = normalize_messages(messages)
    assert messages == before
    assert normalize_messages(once) == once
    assert once[-2]["content"][-1]["text"] == render_tool_call("f", "{}")
    tools = [{"type": "function", "function": WEATHER}, SEARCH, {"type": "function", **NOPARAMS}]
    assert normalize_tools(normalize_tools(tools)) == normalize_tools(tools) == [WEATHER, SEARCH, NOPARAMS]
    assert normalize_tools(None) is None


@pytest.mark.parametrize("messages, field", [
    ("hello", "messages must be a list"),
    ({"role": "user"}, "messages must be a list"),
    ([], "at least one"),
    (["hi"], r"messages\[0\] must be an object"),
    ([{"content": "x"}], r"messages\[0\]\.role"),
    ([{"role": 3, "content": "x"}], r"messages\[0\]\.role"),
    ([{"role": "user", "content": "x"}, {"role": "robot", "content": "x"}], r"messages\[1\]\.role 'robot'"),
    ([{"role": "user"}], r"messages\[0\]\.content is missing"),
    ([{"role": "assistant"}], r"messages\[0\]\.content is missing"),
    ([{"role": "user", "content": 5}], r"messages\[0\]\.content must be"),
    ([{"role": "user", "content": ["x"]}], r"messages\[0\]\.content\[0\]"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], r"content\[0\]\.type 'image_url'"),
    ([{"role": "user", "content": [{"type": "text", "text": None}]}], r"content\[0\]\.text"),
    ([{"role": "user", "content": "x", "tool_calls": []}], r"messages\[0\]\.tool_calls is only allowed"),
    ([{"role": "assistant", "tool_calls": {"id": "a"}}], r"messages\[0\]\.tool_calls must be a list"),
    ([{"role": "assistant", "tool_calls": ["x"]}], r"tool_calls\[0\] must be an object"),
    ([{"role": "assistant", "tool_calls": [{"type": "code", "function": {"name": "f"}}]}], r"tool_calls\[0\]\.type"),
    ([{"role": "assistant", "tool_calls": [{"id": "a"}]}], r"tool_calls\[0\]\.function must be"),
    ([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}], r"tool_calls\[0\]\.function\.name"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "a b", "arguments": "{}"}}]}],
     r"tool_calls\[0\]\.function\.name"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}],
     r"tool_calls\[0\]\.function\.arguments is not valid JSON"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}],
     r"function\.arguments must be a JSON object"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}],
     r"function\.arguments must be a JSON object"),
    ([{"role": "assistant", "tool_calls": [{"id": 1, "function": {"name": "f", "arguments": "{}"}}]}],
     r"tool_calls\[0\]\.id"),
    ([{"role": "tool", "content": "x"}], r"messages\[0\]\.tool_call_id None"),
    ([{"role": "tool", "tool_call_id": "nope", "content": "x"}], r"messages\[0\]\.tool_call_id 'nope'"),
    ([{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "a", "name": "g", "content": "x"}], r"messages\[1\]\.name 'g' differs"),
    ([{"role": "tool", "name": 'bad"name', "content": "x"}], r"messages\[0\]\.name"),
    ([{"role": "function", "content": "x"}], r"messages\[0\]\.name"),
])
def test_normalize_messages_errors(messages, field):
    with pytest.raises(RequestError, match=field):
        normalize_messages(messages)


@pytest.mark.parametrize("tools, field", [
    ({"name": "f"}, "tools must be a list"),
    (["f"], r"tools\[0\] must be an object"),
    ([{"type": "function", "function": "f"}], r"tools\[0\]\.function must be an object"),
    ([{"type": "retrieval", "function": {"name": "f"}}], r"tools\[0\]\.type 'retrieval'"),
    ([{"type": "function"}], r"tools\[0\]\.name"),
    ([{"type": "code_interpreter"}], r"tools\[0\]\.type 'code_interpreter'"),
    ([{"description": "no name"}], r"tools\[0\]\.name"),
    ([{"type": "function", "function": {"description": "no name"}}], r"tools\[0\]\.function\.name"),
    ([{"name": "f(x)"}], r"tools\[0\]\.name"),
    ([{"name": "f", "parameters": "object"}], r"tools\[0\]\.parameters must be"),
    ([{"name": "f", "parameters": {"type": "array"}}], r"tools\[0\]\.parameters\.type"),
    ([{"name": "f", "description": 3}], r"tools\[0\]\.description"),
    ([{"name": "f"}, {"type": "function", "function": {"name": "f"}}], r"tools\[1\]\.function\.name 'f' is defined twice"),
])
def test_normalize_tools_errors(tools, field):
    with pytest.raises(RequestError, match=field):
        normalize_tools(tools)
    with pytest.raises(RequestError):
        render_chat([{"role": "user", "content": "x"}], tools)


def test_template_errors_become_request_errors():
    with pytest.raises(RequestError, match="chat template failed: boom"):
        render_chat([{"role": "user", "content": "x"}], chat_template="{{ raise_exception('boom') }}")


def test_custom_template_gets_transformers_environment():
    tpl = "{% for m in messages %}{% generation %}{{ m['content'][0]['text'] | tojson }}{% endgeneration %}{% endfor %}"
    assert render_chat([{"role": "user", "content": "<ü>"}], chat_template=tpl) == '"<ü>"'


# --- tool-call parsing -------------------------------------------------------------------------------------
def calls_of(calls: list[ToolCall]) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in calls]


def block(name: str, args: str) -> str:
    return f"{FUNCTION_CALL}```typescript\nfunctions.{name}({args})\n```"


NESTED_ARGS = json.dumps({"code": "```python\nprint(f(1))\n```", "q": "a) b( \"c\" \\ 天气 😀",
                          "list": [1, 2.5, None, True, {"deep": {"deeper": ["x)"]}}]}, ensure_ascii=False)


@pytest.mark.parametrize("text, content, calls", [
    ("just text", "just text", []),
    ("", "", []),
    ("functions.f({}) and ```typescript\nx\n``` without marker", "functions.f({}) and ```typescript\nx\n``` without marker", []),
    (block("get_current_weather", '{"location": "上海"}'), "", [("get_current_weather", '{"location": "上海"}')]),
    ("I'll check.\n" + block("f", "{}"), "I'll check.\n", [("f", "{}")]),
    (block("f", NESTED_ARGS), "", [("f", NESTED_ARGS)]),
    ("a" + block("f", '{"i": 1}') + "b" + block("g", '{"i": 2}') + "c", "abc", [("f", '{"i": 1}'), ("g", '{"i": 2}')]),
    (f'{FUNCTION_CALL}```typescript\nfunctions.f({{"i": 1}})\nfunctions.g-2({{"i": [2]}})\n```',
     "", [("f", '{"i": 1}'), ("g-2", '{"i": [2]}')]),
    (f'{FUNCTION_CALL}```typescript\nfunctions.f({{\n  "a": [\n    1\n  ]\n}})\n```', "", [("f", '{\n  "a": [\n    1\n  ]\n}')]),
    (f'{FUNCTION_CALL}\n```ts\r\nfunctions.now()\r\n```\n', "\n", [("now", "{}")]),
    (f'{FUNCTION_CALL}```typescript\nfunctions.f( {{"a": 1}} )\n```', "", [("f", ' {"a": 1} ')]),
])
def test_parse_valid(text, content, calls):
    got_content, got_calls = parse_tool_calls(text)
    assert got_content == content
    assert calls_of(got_calls) == calls
    for c in got_calls:
        json.loads(c.arguments)  # always valid JSON


MALFORMED = [
    f"{FUNCTION_CALL}",
    f"{FUNCTION_CALL}functions.f({{}})",
    f"{FUNCTION_CALL}```typescript\nfunctions.f({{oops}})\n```",
    f"{FUNCTION_CALL}```typescript\nfunctions.f([1, 2])\n```",
    f"{FUNCTION_CALL}```typescript\nfunctions.f(\"s\")\n```",
    f"{FUNCTION_CALL}```typescript\nfunctions.f({{\"a\": NaN}})\n```",
    f"{FUNCTION_CALL}```typescript\nfunctions.f({{\"a\": 1}}\n```",
    f"{FUNCTION_CALL}```typescript\nfunctions.f({{\"a\": 1}}) trailing\n```",
    f"{FUNCTION_CALL}```typescript\nfunctions.({{}})\n```",
    f"{FUNCTION_CALL}```typescript\nfunctions.f {{}}\n```",
    f"{FUNCTION_CALL}```typescript\nget_weather({{}})\n```",
    f"{FUNCTION_CALL}```typescript\n```",
    f"{FUNCTION_CALL}```typescript functions.f({{}})\n```",
    f"{FUNCTION_CALL}```typescript\nfunctions.f({{\"a\": \"raw\nnewline\"}})\n```",
    f"{FUNCTION_CALL}```typescript\nfunctions.f({{}})\nnot a call\n```",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_parse_malformed_is_content(text):
    assert parse_tool_calls(text) == (text, [])
    assert parse_tool_calls("pre " + text + " post") == ("pre " + text + " post", [])


def test_parse_truncated_is_content():
    full = "Sure. " + block("search_web", NESTED_ARGS)
    for cut in range(len(full)):
        assert parse_tool_calls(full[:cut]) == (full[:cut], []), cut
    assert calls_of(parse_tool_calls(full)[1]) == [("search_web", NESTED_ARGS)]


def test_malformed_block_does_not_hide_a_later_call():
    text = f"{FUNCTION_CALL}oops " + block("f", '{"a": 1}') + " end"
    content, calls = parse_tool_calls(text)
    assert content == f"{FUNCTION_CALL}oops  end"
    assert calls_of(calls) == [("f", '{"a": 1}')]


def test_tool_call_ids():
    _, calls = parse_tool_calls(block("f", "{}") * 3)
    assert len({c.id for c in calls}) == 3 and all(c.id.startswith("call_") for c in calls)
    _, calls = parse_tool_calls(block("f", "{}") * 2, make_id=counter_ids())
    assert [c.id for c in calls] == ["call_0", "call_1"]
    assert calls[0].to_openai() == {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{}"}}


ROUND_TRIP = [
    block("get_current_weather", '{"location": "上海"}'),
    "Let me look that up.\n" + block("search_web", NESTED_ARGS) + block("f", '{"a":1,"b":[ ]}'),
    "text only, no calls",
    f'{FUNCTION_CALL}```typescript\nfunctions.f({{\n  "pretty": true\n}})\n```',
]


@pytest.mark.parametrize("generated", ROUND_TRIP)
def test_parse_then_render_round_trip(generated):
    # What the model emitted must come back byte-for-byte when the client sends the parsed call back.
    content, calls = parse_tool_calls(generated)
    assistant = {"role": "assistant", "content": content}
    if calls:
        assistant["tool_calls"] = [c.to_openai() for c in calls]
    rendered = render_chat([{"role": "user", "content": "q"}, assistant], add_generation_prompt=False)
    assert rendered == (f"{BOS}user name=user\nq{EOS}\n{BOS}ai name=assistant\n" + generated + f"{EOS}\n")


# --- streaming ---------------------------------------------------------------------------------------------
STREAM_TEXTS = [
    "plain text with < and <function and <function_cal but no call",
    "Sure.\n" + block("get_current_weather", '{"location": "上海 😀"}'),
    "a" + block("f", NESTED_ARGS) + "between" + block("g", "{}") + "end <",
    f"{FUNCTION_CALL}```typescript\nfunctions.f({{\"i\": 1}})\nfunctions.g({{\n \"j\": [2]\n}})\n```",
    f"x {FUNCTION_CALL}oops " + block("f", '{"a": 1}'),
    "truncated " + block("f", NESTED_ARGS)[:-2],
    "ends with marker prefix <function_ca",
    MALFORMED[2] + " then " + MALFORMED[6] + block("h", "{}"),
    "<<function_call>```typescript\nfunctions.f({})\n````",
]


def stream(text_pieces: list[str]) -> tuple[str, list[tuple[str, str]], list[str]]:
    """Feeds pieces; returns final content, calls, and the content emitted so far after each feed."""
    parser = FunctionCallStreamParser()
    content, calls, progress = "", [], []
    for piece in text_pieces + [None]:
        events = parser.finish() if piece is None else parser.feed(piece)
        for e in events:
            if isinstance(e, ToolCall):
                calls.append((e.name, e.arguments))
            else:
                assert isinstance(e, str) and e
                content += e
        progress.append(content)
    return content, calls, progress


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_streaming_every_split_point(text):
    want_content, want_calls = parse_tool_calls(text)
    want_calls = calls_of(want_calls)
    splits = [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]
    rng = random.Random(len(text))
    for _ in range(30):
        cuts = sorted(rng.sample(range(len(text) + 1), min(4, len(text) + 1)))
        splits.append([text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])])
    for pieces in splits:
        content, calls, progress = stream(pieces)
        assert (content, calls) == (want_content, want_calls), pieces
        # Content only ever grows by final content: nothing of a call block was emitted and taken back.
        assert all(want_content.startswith(p) for p in progress)


def test_streaming_holds_back_block_and_marker_prefix():
    p = FunctionCallStreamParser()
    assert p.feed("Hello <func") == ["Hello "]
    assert p.feed("tion_call>```typescript\nfunctions.f(") == []
    assert p.feed('{"a": 1})\n``') == []
    events = p.feed("`tail")
    assert [(e.name, e.arguments) if isinstance(e, ToolCall) else e for e in events] == [("f", '{"a": 1}'), "tail"]
    assert p.finish() == []
    # an unterminated block is flushed as content at the end
    p = FunctionCallStreamParser()
    assert p.feed(f"{FUNCTION_CALL}```typescript\nfunctions.f({{") == []
    assert p.finish() == [f"{FUNCTION_CALL}```typescript\nfunctions.f({{"]
    assert p.finish() == []


def test_streaming_random_fuzz_never_raises_and_matches():
    rng = random.Random(0)
    atoms = [FUNCTION_CALL, "<", "function_call>", "```", "typescript", "\n", "functions.", "f", "(", ")",
             "{", "}", '"a"', ":", " ", "1", "[", "]", "x", "😀", "\\", ","]
    for _ in range(300):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 40)))
        want_content, want_calls = parse_tool_calls(text)
        cuts = sorted(rng.sample(range(len(text) + 1), min(5, len(text) + 1)))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        content, calls, _ = stream(pieces)
        assert (content, calls) == (want_content, calls_of(want_calls)), text


def test_streaming_long_arguments_one_char_at_a_time():
    args = json.dumps({"code": "x = 1\n" * 3000})
    text = "ok " + block("run", args)
    content, calls, _ = stream(list(text))
    assert (content, calls) == ("ok ", [("run", args)])
