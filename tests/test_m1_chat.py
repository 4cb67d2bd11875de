"""MiniMax-M1's output formats and the per-checkpoint chat setup, without a server: the `<tool_calls>` parser,
the `<think>` reasoning parser (whole and streamed at every split), templates reading content as a string or as
parts, family detection, parser overrides, generation_config.json defaults."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from minimax01.chat.m1_tool_calls import ToolCallsParser
from minimax01.chat.reasoning import OutputStream, Reasoning, ThinkParser
from minimax01.chat.template import CHAT_TEMPLATE, content_format, render_chat
from minimax01.chat.tool_calls import ToolCall
from minimax01.chat.tool_parsers import chat_format, detect_model_family
from minimax01.errors import CheckpointError, ConfigError, RequestError
from test_m1_serving import M1_TEMPLATE, TOOLS, hand_rendered_m1


def counter_ids() -> Any:
    n = iter(range(1000))
    return lambda: f"call_{next(n)}"


def line(name: str, arguments: Any) -> str:
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n"


NESTED = {"q": {"list": [1, {"deep": [True, None]}], "s": "a}b{\"c"}, "u": "上海 😀 \u2028 \x85"}
PARSE_CASES = [  # (text, content, [(name, arguments)])
    ("plain < <tool <tool_call text", "plain < <tool <tool_call text", []),
    ("Sure.\n<tool_calls>\n" + line("f", NESTED) + line("g", {}) + "</tool_calls> done",
     "Sure.\n done", [("f", NESTED), ("g", {})]),
    ("<tool_calls>\n" + line("f", {"a": 1}), "", [("f", {"a": 1})]),  # unclosed at the end: still a call
    ("x<tool_calls>\n" + line("f", {"a": 1})[:-4], "x<tool_calls>\n" + line("f", {"a": 1})[:-4], []),  # truncated
    ("<tool_calls>\nnot json\n</tool_calls>", "<tool_calls>\nnot json\n</tool_calls>", []),
    ("<tool_calls>\n" + line("f", [1]) + "</tool_calls>", "<tool_calls>\n" + line("f", [1]) + "</tool_calls>", []),
    ("<tool_calls>\n</tool_calls>", "<tool_calls>\n</tool_calls>", []),
    ("<think>a <tool_calls>\n" + line("h", {}) + "</tool_calls></think>b",
     "<think>a <tool_calls>\n" + line("h", {}) + "</tool_calls></think>b", []),  # thought about, not called
    ('<tool_calls>\n{"name": "s", "arguments": "{\\"k\\": 2}"}\n</tool_calls>', "", [("s", {"k": 2})]),
]


def split_events(parser: Any, text: str, cut: int) -> list[Any]:
    stream = parser.streaming()
    return stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.finish()


def joined(events: list[Any]) -> tuple[str, list[tuple[str, Any]]]:
    return ("".join(e for e in events if isinstance(e, str)),
            [(e.name, json.loads(e.arguments)) for e in events if isinstance(e, ToolCall)])


@pytest.mark.parametrize("text,content,calls", PARSE_CASES)
def test_m1_tool_calls_whole_and_streamed_at_every_split(text: str, content: str, calls: list[Any]) -> None:
    parser = ToolCallsParser(counter_ids())
    got_content, got_calls = parser.parse(text)
    assert (got_content, [(c.name, json.loads(c.arguments)) for c in got_calls]) == (content, calls)
    for cut in range(len(text) + 1):
        assert joined(split_events(parser, text, cut)) == (content, calls), cut
    chars = parser.streaming()  # one character per delta
    assert joined([e for ch in text for e in chars.feed(ch)] + chars.finish()) == (content, calls)


def test_m1_forced_prefixes_continue_into_calls() -> None:
    parser = ToolCallsParser()
    any_call = parser.forced_prefix(None) + line("f", {"a": 1}) + "</tool_calls>"
    named = parser.forced_prefix("get_weather") + '{"city": "Paris"}}\n</tool_calls>'
    for text, call in ((any_call, ("f", {"a": 1})), (named, ("get_weather", {"city": "Paris"}))):
        content, calls = parser.parse(text)
        assert (content, [(c.name, json.loads(c.arguments)) for c in calls]) == ("", [call])


THINK_CASES = [  # (text, reasoning, answer)
    ("<think>\nhmm\n</think>\n\nAnswer.", "\nhmm\n", "Answer."),
    ("  \n<think>r</think>a", "r", "a"),
    ("<think>cut short by max_tokens", "cut short by max_tokens", ""),
    ("No reasoning <think>x</think>", None, "No reasoning <think>x</think>"),
    ("<thin", None, "<thin"),
    ("", None, ""),
]


@pytest.mark.parametrize("text,reasoning,answer", THINK_CASES)
def test_reasoning_whole_and_streamed_at_every_split(text: str, reasoning: str | None, answer: str) -> None:
    assert ThinkParser().parse(text) == (reasoning, answer)
    for cut in range(len(text) + 1):
        events = split_events(ThinkParser(), text, cut)
        assert "".join(e.text for e in events if isinstance(e, Reasoning)) == (reasoning or ""), cut
        assert "".join(e for e in events if isinstance(e, str)) == answer, cut


def test_a_call_inside_the_reasoning_is_not_a_call() -> None:
    text = "<think>maybe <tool_calls>\n" + line("no", {}) + "</tool_calls></think>\nok<tool_calls>\n" + line(
        "yes", {"i": 1}) + "</tool_calls>"
    for cut in range(len(text) + 1):
        stream = OutputStream(ThinkParser().streaming(), ToolCallsParser().streaming())
        events = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.finish()
        assert "".join(e.text for e in events if isinstance(e, Reasoning)) == (
            "maybe <tool_calls>\n" + line("no", {}) + "</tool_calls>")
        assert joined(events) == ("ok", [("yes", {"i": 1})]), cut


# ---------------------------------------------------------------------------------------------- templates
def test_content_format_is_read_from_the_template() -> None:
    assert content_format(CHAT_TEMPLATE) == "list"
    assert content_format(M1_TEMPLATE) == "string"
    assert content_format("{% for p in message.content %}{{ p.text }}{% endfor %}") == "list"


def test_string_and_list_content_render_the_same_with_either_template() -> None:
    as_string = [{"role": "user", "content": "hé"}, {"role": "assistant", "content": "yes"}]
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "hé"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "y"}, {"type": "text", "text": "es"}]}]
    for template in (CHAT_TEMPLATE, M1_TEMPLATE):
        assert render_chat(as_string, chat_template=template) == render_chat(as_parts, chat_template=template)
    assert render_chat(as_string, chat_template=M1_TEMPLATE) == (
        "<begin_of_document><beginning_of_sentence>user name=user\nhé<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=MiniMax AI\nyes<end_of_sentence>\n"
        "<beginning_of_sentence>ai name=MiniMax AI\n")


def test_m1_history_renders_calls_and_results_in_m1_format() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "Ok.", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    assert render_chat(messages, TOOLS, chat_template=M1_TEMPLATE, tool_history="openai") == hand_rendered_m1("sunny")
    # Two results in a row share one `tool name=tools` turn; a result's name comes from its call id.
    two = messages[:2] + [{"role": "assistant", "content": None, "tool_calls": [call, {**call, "id": "call_2"}]},
                          {"role": "tool", "tool_call_id": "call_1", "content": "a"},
                          {"role": "tool", "tool_call_id": "call_2", "content": "b"}]
    rendered = render_chat(two, chat_template=M1_TEMPLATE, tool_history="openai", add_generation_prompt=False)
    assert rendered.endswith("<beginning_of_sentence>tool name=tools\ntool name: get_weather\ntool result: a\n"
                             "tool name: get_weather\ntool result: b\n<end_of_sentence>\n")
    with pytest.raises(RequestError, match="tool_call_id 'nope'"):
        render_chat(two[:3] + [{"role": "tool", "tool_call_id": "nope", "content": "x"}],
                    chat_template=M1_TEMPLATE, tool_history="openai")


def test_template_kwargs_and_template_errors_are_request_errors() -> None:
    msgs = [{"role": "user", "content": "q"}]
    assert render_chat(msgs, chat_template="{{ flag }}", template_kwargs={"flag": "on"}) == "on"
    with pytest.raises(RequestError, match="may not set add_generation_prompt"):
        render_chat(msgs, template_kwargs={"add_generation_prompt": False})
    with pytest.raises(RequestError, match="chat template failed"):  # list content into a string template
        render_chat(msgs, chat_template="{{ 'x' + messages[0].content + 1 }}")
    with pytest.raises(RequestError, match="syntax error"):
        render_chat(msgs, chat_template="{% if %}")


# ---------------------------------------------------------------------------------------------- family, setup
@pytest.mark.parametrize("names,template,family", [
    (["MiniMaxM1ForCausalLM"], None, "minimax-m1"), (["minimax_m1"], None, "minimax-m1"),
    (["MiniMaxText01ForCausalLM", "minimax_text_01"], CHAT_TEMPLATE, "minimax-text-01"),
    (["MiniMaxText01ForCausalLM"], M1_TEMPLATE, "minimax-m1"), (["MiniMaxM10Thing"], None, "minimax-text-01"),
])
def test_detect_model_family(names: list[str], template: str | None, family: str) -> None:
    assert detect_model_family(names, template) == family


def test_chat_format_defaults_and_overrides() -> None:
    assert chat_format("minimax-m1") == chat_format("minimax-m1", "minimax-m1", "minimax-m1")
    t01 = chat_format("minimax-text-01")
    assert (t01.tool_call_parser, t01.reasoning_parser) == ("minimax-text-01", "none")
    mixed = chat_format("minimax-text-01", "minimax-m1", "minimax-m1")
    assert (mixed.family, mixed.tool_call_parser, mixed.reasoning_parser) == ("minimax-text-01",) + ("minimax-m1",) * 2
    with pytest.raises(ConfigError, match="unknown reasoning parser 'r1'"):
        chat_format("minimax-m1", reasoning_parser="r1")


def test_load_chat_setup(tmp_path: Path) -> None:
    from minimax01.loading import load_chat_setup
    from minimax01.tiny import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", layers=1)
    setup = load_chat_setup(ckpt)
    assert (setup.format.family, setup.template_source, setup.generation_defaults) == ("minimax-text-01",
                                                                                      "checkpoint", {})
    (tmp_path / "m1.jinja").write_text(M1_TEMPLATE, encoding="utf-8")
    override = load_chat_setup(ckpt, str(tmp_path / "m1.jinja"))
    assert (override.format.family, override.chat_template) == ("minimax-m1", M1_TEMPLATE)
    cfg = tokenizer_cfg = ckpt / "tokenizer_config.json"
    tokenizer_cfg.write_text(json.dumps({k: v for k, v in json.loads(cfg.read_text()).items()
                                         if k != "chat_template"}), encoding="utf-8")
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "architectures": ["MiniMaxM1ForCausalLM"]}))
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": 1, "temperature": 1.0, "top_p": 0.95}))
    m1 = load_chat_setup(ckpt, reasoning_parser="none")
    assert (m1.format.family, m1.format.tool_call_parser, m1.format.reasoning_parser) == (
        "minimax-m1", "minimax-m1", "none")
    assert (m1.template_source, m1.chat_template) == ("built-in Text-01", CHAT_TEMPLATE)
    assert m1.generation_defaults == {"temperature": 1.0, "top_p": 0.95}
    (ckpt / "generation_config.json").write_text(json.dumps({"top_p": "high"}))
    with pytest.raises(CheckpointError, match="top_p must be a number"):
        load_chat_setup(ckpt)
    (tmp_path / "broken.jinja").write_text("{% for %}", encoding="utf-8")
    with pytest.raises(CheckpointError, match="--chat-template .*broken.jinja: chat template has a syntax error"):
        load_chat_setup(ckpt, str(tmp_path / "broken.jinja"))


def test_generation_defaults_apply_only_where_the_request_is_silent() -> None:
    from minimax01.cli.args import sampling_kwargs
    from minimax01.server.request_parsing import sampling_params
    from minimax01.server.schemas import ChatCompletionRequest

    ctx = SimpleNamespace(max_model_len=100, generation_defaults={"temperature": 0.7, "top_p": 0.95, "top_k": 5})
    names = {"max_new_tokens": "max_tokens", "logprobs": "top_logprobs"}
    silent = ChatCompletionRequest(model="m", messages=[])
    params = sampling_params(silent, ctx, 10, 5, None, None, names)
    assert (params.temperature, params.top_p, params.top_k) == (0.7, 0.95, 5)
    said = ChatCompletionRequest(model="m", messages=[], temperature=0.0, top_p=1.0, top_k=0)
    params = sampling_params(said, ctx, 10, 5, None, None, names)
    assert (params.temperature, params.top_p, params.top_k) == (0.0, 1.0, 0)

    args = argparse.Namespace(temperature=None, top_k=None, top_p=0.5, min_p=0.0, max_new_tokens=4,
                              repetition_penalty=1.0, seed=None, stop=None)
    kw = sampling_kwargs(args, ctx.generation_defaults)
    assert (kw["temperature"], kw["top_p"], kw["top_k"]) == (0.7, 0.5, 5)
    assert sampling_kwargs(args)["temperature"] == 1.0  # no checkpoint defaults: the usual ones


def test_info_shows_family_parsers_and_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from minimax01.cli import main
    from minimax01.tiny import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", layers=1)
    (tmp_path / "m1.jinja").write_text(M1_TEMPLATE, encoding="utf-8")
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "model family      minimax-text-01" in out and "tool calls minimax-text-01, reasoning none" in out
    assert main(["info", str(ckpt), "--chat-template", str(tmp_path / "m1.jinja"), "--reasoning-parser", "none"]) == 0
    out = capsys.readouterr().out
    assert "model family      minimax-m1" in out and "tool calls minimax-m1, reasoning none" in out
    assert f"chat template     {tmp_path / 'm1.jinja'}" in out
    assert main(["info", str(ckpt), "--chat-template", str(tmp_path / "missing.jinja")]) == 2
    assert "--chat-template" in capsys.readouterr().err
