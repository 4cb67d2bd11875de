"""The `minimax01` command line, end to end: real subprocesses on a checkpoint written by `init-tiny`.

Runs that need no model (flag/file errors, the chat loop's bookkeeping) call `cli.main` in-process, which is
the same code path without the ~2-3 s interpreter + torch start-up of a subprocess.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import minimax01.cli.chat as cli_chat
import minimax01.loading as loading
from minimax01 import cli
from minimax01.chat.template import CHAT_TEMPLATE
from minimax01.cli.args import parse_tokens
from minimax01.special_tokens import SPECIAL_TOKENS
from minimax01.tiny import CACHE_ENV, DEFAULT_MODEL_NAME, ensure_default_model
from minimax01.tokenizer import load_tokenizer

# Greedy and short, so that every run is quick and reproducible; "\n" as a stop string keeps each chat reply on
# one output line, which is how the chat tests tell the turns apart.
GREEDY = ["--temperature", "0", "--max-new-tokens", "12"]
ONE_LINE = ["--stop", "\n"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def env(cache_dir: Path) -> dict[str, str]:
    # The cache env var keeps the built-in model out of the real user cache. One thread: the tiny model gains
    # nothing from more, and on a busy CI box OpenMP spin-waiting over-subscribed cores is 10-100x slower.
    return {**os.environ, CACHE_ENV: str(cache_dir), "OMP_NUM_THREADS": "1"}


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minimax01", *args], input=stdin, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    r = run(env, "init-tiny", str(out), "--seed", "3")
    assert r.returncode == 0, r.stderr
    return out


def finish_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[finish_reason=")]


# ---------------------------------------------------------------------------------------------- init-tiny
def test_init_tiny_writes_the_real_layout(tiny_dir: Path) -> None:
    files = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors.index.json"} <= files
    shards = sorted(f for f in files if f.startswith("model-") and f.endswith(".safetensors"))
    assert len(shards) >= 2
    index = json.loads((tiny_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert "model.embed_tokens.weight" in index["weight_map"]

    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "minimax_text_01"  # the original spelling, as the released checkpoint
    tok = load_tokenizer(tiny_dir)
    assert config["vocab_size"] == tok.vocab_size
    for special in SPECIAL_TOKENS:
        ids = tok.encode(f"a{special}b")
        assert len(ids) == 3 and tok.decode(ids[1:2]) == special
    eos = json.loads((tiny_dir / "generation_config.json").read_text())["eos_token_id"]
    assert eos == tok.token_to_id("<end_of_sentence>")
    assert json.loads((tiny_dir / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE


def test_init_tiny_refuses_a_non_empty_directory(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init-tiny", str(tiny_dir)]) == 2
    err = capsys.readouterr().err
    assert str(tiny_dir) in err and len(err.strip().splitlines()) == 1


def test_info_on_a_checkpoint_dir(tiny_dir: Path, env: dict[str, str]) -> None:
    r = run(env, "info", str(tiny_dir))
    assert r.returncode == 0, r.stderr
    assert "(LLLLLLLS)x2" in r.stdout and "vocab 512" in r.stdout


# ---------------------------------------------------------------------------------------------- generate
def test_generate_streams_and_is_deterministic(tiny_dir: Path, env: dict[str, str]) -> None:
    args = ["generate", "--model", str(tiny_dir), "--prompt", "def main():", "--temperature", "0",
            "--max-new-tokens", "64"]
    proc = subprocess.Popen([sys.executable, "-m", "minimax01", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.read1(1 << 16)  # returns as soon as the first piece of text is flushed
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    streamed = (first + rest).decode()
    # Text written only at exit would arrive in one piece; 64 tokens take about a second on CPU, so a first
    # piece shorter than the whole means the text was flushed while it was being generated.
    assert first and rest and streamed.endswith("\n")
    assert finish_lines(err.decode()) and "tokens/s" in finish_lines(err.decode())[0]
    assert "finish_reason=length, 64 tokens" in err.decode()
    # Load time, time to first token (engine start, compilation) and the steady decode rate are reported apart.
    assert "[loaded in " in err.decode() and "first token after" in err.decode() and "decode " in err.decode()

    again = run(env, *args)
    assert again.returncode == 0, again.stderr
    assert again.stdout == streamed  # greedy: the same text in a fresh process


def test_default_model_is_created_once_in_the_cache(tmp_path: Path, env: dict[str, str],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    own_env = {**env, CACHE_ENV: str(tmp_path)}
    r = run(own_env, "generate", "--prompt", "Hi", *GREEDY)
    assert r.returncode == 0, r.stderr
    assert "creating the built-in tiny model" in r.stderr
    assert "[the built-in tiny model has random weights: its text is random tokens" in r.stderr
    model_dir = tmp_path / DEFAULT_MODEL_NAME
    assert (model_dir / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [DEFAULT_MODEL_NAME]  # no temp dir left behind

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert ensure_default_model() == model_dir
    assert capsys.readouterr().err == ""  # second use: no notice, nothing rewritten


# ---------------------------------------------------------------------------------------------- chat
def test_chat_with_piped_stdin(tiny_dir: Path, env: dict[str, str]) -> None:
    common = ["--model", str(tiny_dir), *GREEDY, *ONE_LINE]
    reference = run(env, "generate", "--chat", "--prompt", "Hello there", *common)
    assert reference.returncode == 0, reference.stderr

    r = run(env, "chat", *common, stdin="Hello there\n/reset\nHello there\n/exit\nnot read\n")
    assert r.returncode == 0, r.stderr
    replies = r.stdout.splitlines()
    # Two turns, then /exit: the line after it is never answered.
    assert len(replies) == 2 and len(finish_lines(r.stderr)) == 2
    # After /reset the conversation is just the new message again, so greedy decoding repeats itself, and both
    # equal `generate --chat`: the same template rendering of one user message.
    assert replies[0] == replies[1] == reference.stdout.rstrip("\n")


class _FakeStream:
    """Stands in for `stream_text`: records each prompt and replies with canned text in small pieces."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.prompts: list[str] = []

    def __call__(self, loaded: object, prompt: str, sampling: dict[str, object], stats: object) -> Iterator[str]:
        self.prompts.append(prompt)
        reply = self.replies[len(self.prompts) - 1]
        return iter([reply[i:i + 3] for i in range(0, len(reply), 3)])


def _fake_chat(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, replies: list[str], stdin: str) -> _FakeStream:
    fake = _FakeStream(replies)
    tok = load_tokenizer(tiny_dir)
    monkeypatch.setattr(cli_chat, "stream_text", fake)
    monkeypatch.setattr(loading, "load_for_serving", lambda *args: loading.Loaded(None, tok, [1]))
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return fake


def test_chat_keeps_history_and_resets(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    fake = _fake_chat(monkeypatch, tiny_dir, ["first", "second", "third"], "one\n\ntwo\n/reset\nthree\n")
    assert cli.main(["chat", "--system", "Be brief."]) == 0
    tok = load_tokenizer(tiny_dir)
    system = {"role": "system", "content": "Be brief."}
    turn1 = [system, {"role": "user", "content": "one"}]
    turn2 = turn1 + [{"role": "assistant", "content": "first"}, {"role": "user", "content": "two"}]
    turn3 = [system, {"role": "user", "content": "three"}]  # /reset keeps only the system prompt
    assert fake.prompts == [tok.apply_chat_template(m, tokenize=False) for m in (turn1, turn2, turn3)]
    assert capsys.readouterr().out == "first\nsecond\nthird\n"  # the empty line was skipped


def test_chat_shows_tool_calls(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps(tools))
    call = '<function_call>```typescript\nfunctions.get_weather({"city": "上海"})\n```'
    fake = _fake_chat(monkeypatch, tiny_dir, ["Let me check." + call], "weather?\n")
    assert cli.main(["chat", "--tools", str(tools_file)]) == 0
    out = capsys.readouterr().out
    assert out == 'Let me check.\n[tool call] get_weather({"city": "上海"})\n'
    assert '"name": "get_weather"' in fake.prompts[0]  # the tools are rendered into the prompt


def test_chat_with_m1_template_shows_reasoning_and_m1_calls(tiny_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from test_m1_serving import M1_TEMPLATE

    template = tmp_path / "m1.jinja"
    template.write_text(M1_TEMPLATE, encoding="utf-8")
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([{"type": "function", "function": {"name": "get_weather"}}]))
    call = '{"name": "get_weather", "arguments": {"city": "上海"}}'
    reply = f"<think>\nhmm <tool_calls>\n</think>\nSure.<tool_calls>\n{call}\n</tool_calls>"
    fake = _fake_chat(monkeypatch, tiny_dir, [reply], "weather?\n")
    # The M1 template makes the family M1: <think> is reasoning, <tool_calls> the call format.
    assert cli.main(["chat", "--tools", str(tools_file), "--chat-template", str(template)]) == 0
    shown = '[reasoning] \nhmm <tool_calls>\nSure.\n[tool call] get_weather({"city": "上海"})\n'
    assert capsys.readouterr().out == shown
    assert fake.prompts[0].startswith("<begin_of_document>") and fake.prompts[0].endswith("ai name=MiniMax AI\n")


def test_chat_bad_tools_json_names_the_file(tiny_dir: Path, tmp_path: Path, env: dict[str, str]) -> None:
    bad = tmp_path / "tools.json"
    bad.write_text('[{"type": "function",\n  "function": {"name": }}]')
    r = run(env, "chat", "--model", str(tiny_dir), "--tools", str(bad), stdin="hi\n")
    assert r.returncode == 2
    # Column 24 is the '}' where a value should be.
    assert r.stderr.count("\n") == 1 and str(bad) in r.stderr and "line 2 column 24" in r.stderr
    assert r.stdout == ""  # nothing was generated: the file is checked before the model loads


# ---------------------------------------------------------------------------------------------- serve / plan
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_passes_its_flags_to_the_server(tiny_dir: Path, env: dict[str, str]) -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "minimax01", "serve", "--model", str(tiny_dir), "--port",
                             str(port), "--served-model-name", "tiny-test", "--api-key", "sekrit",
                             "--max-num-seqs", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base, auth = f"http://127.0.0.1:{port}/v1", {"Authorization": "Bearer sekrit"}
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                models = httpx.get(f"{base}/models", headers=auth, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["tiny-test"]
        assert httpx.get(f"{base}/models", timeout=5).status_code == 401  # --api-key is enforced
        reply = httpx.post(f"{base}/chat/completions", headers=auth, timeout=60, json={
            "model": "tiny-test", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] <= 4
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_non_finite_weight_is_one_line_exit_2(tiny_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    poisoned, key = tmp_path / "poisoned", "model.norm.weight"
    shutil.copytree(tiny_dir, poisoned)
    shard = poisoned / json.loads((poisoned / "model.safetensors.index.json").read_text())["weight_map"][key]
    state = load_file(shard)
    state[key][0] = float("nan")
    save_file(state, str(shard), metadata={"format": "pt"})
    argv = ["generate", "--model", str(poisoned), "--prompt", "hi", "--max-new-tokens", "2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (f"minimax01 generate: error: {shard}: tensor '{key}' holds 1 non-finite value(s) (NaN or inf); "
                   f"the checkpoint is corrupt (--skip-weight-check loads it anyway)")
    # Skipped: it loads, and the engine's per-request guard ends the request with an error, not garbage text.
    assert cli.main([*argv, "--skip-weight-check"]) == 0
    assert "[finish_reason=error, 0 tokens" in capsys.readouterr().err


def test_serve_checks_the_address_before_loading(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import minimax01.server.serve as serve_module

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the address was checked")

    monkeypatch.setattr(serve_module, "run_with_model", must_not_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--model", str(tiny_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"minimax01 serve: error: cannot listen on 127.0.0.1:{port}: Address already in use\n", err


def test_serve_help_says_which_routes_need_the_key() -> None:
    help_text = " ".join(_subparsers(cli.build_parser())["serve"].format_help().split())
    assert "on /v1/* requests (/health and /metrics stay open" in help_text


@pytest.mark.parametrize(("cores", "load", "omp", "expected"), [
    (8, 5.2, None, 3), (2, 0.1, None, 2), (2, 7.0, None, 1), (4, 0.0, "1", None)])
def test_thread_count_follows_the_free_cores(monkeypatch: pytest.MonkeyPatch, cores: int, load: float,
                                             omp: str | None, expected: int | None) -> None:
    from minimax01.cli.args import free_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load), raising=False)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert free_cores() == expected


def test_plan_parses_context_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_tokens("4M") == 4 * 2**20 and parse_tokens("128k") == 128 * 2**10
    assert parse_tokens("1000000") == 1_000_000
    assert cli.main(["plan", "--context", "4M", "--gpus", "8", "--dtype", "int8"]) == 0
    out = capsys.readouterr().out
    assert "8 GPU(s)" in out and "weights int8" in out and f"{4 * 2**20}-token" in out


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("argv", "expected"), [
    (["generate", "--prompt", "x", "--model", "/no/such/dir"], "--model /no/such/dir: no such checkpoint"),
    (["generate", "--prompt", "x", "--max-new-tokens", "-1"], "--max-new-tokens must be an integer >= 1"),
    (["generate", "--prompt", "x", "--temperature", "2.5"], "--temperature must be in [0, 2]"),
    (["generate", "--prompt", "x", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["chat", "--repetition-penalty", "0"], "--repetition-penalty must be a finite number > 0"),
    (["generate", "--prompt", "x", "--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    (["generate", "--prompt", "x", "--device", "tpu"], "--device 'tpu': unknown device"),
    (["generate", "--prompt-file", "/no/such/prompt.txt"], "--prompt-file /no/such/prompt.txt: cannot read"),
    (["generate", "--prompt", "x", "--temperature", "hot"], "argument --temperature: invalid float value"),
    (["chat", "--tools", "/no/such/tools.json"], "--tools /no/such/tools.json: cannot read"),
    (["plan", "--context", "lots"], "argument --context: 'lots' is not a token count"),
    (["plan", "--gpus", "6", "--tp", "4"], "tp=4 must divide the number of processes (6)"),
    (["init-tiny", "/no/such/dir", "--layers", "0"], "layers must be >= 1, got 0"),
    (["info", "/no/such/dir"], "/no/such/dir: config file not found"),
    (["generate", "--prompt", "x", "--model", __file__], f"--model {__file__}: is a file; pass the checkpoint "
                                                         f"directory that holds it (--model {Path(__file__).parent})"),
    (["generate", "--prompt", "x", "--model", str(Path(__file__).parent)], "not a checkpoint directory (no config"),
    (["generate", "--prompt", ""], "--prompt: the prompt is empty"),
    (["serve", "--api-key", ""], "argument --api-key: the key must not be empty"),
    (["serve", "--port", "99999"], "argument --port: '99999' is not a port number (1-65535)"),
])
def test_bad_input_is_one_line_exit_2(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors exit from parse_args
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("minimax01 ") and expected in err and err.count("\n") == 1, err


def test_tools_that_are_not_tool_definitions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "tools.json"
    f.write_text('{"name": "x"}')  # valid JSON, but not a list
    assert cli.main(["chat", "--tools", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "tools must be a list" in err


# ---------------------------------------------------------------------------------------------- help
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_is_documented() -> None:
    commands = _subparsers(cli.build_parser())
    assert {"info", "init-tiny", "generate", "chat", "serve", "plan"} <= set(commands)
    for name, sub in commands.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings or action.dest}"


def test_serve_help_shows_every_default() -> None:
    serve = _subparsers(cli.build_parser())["serve"]
    for action in serve._actions:
        if action.option_strings and action.nargs != 0:  # flags that take a value
            assert "default" in serve._get_formatter()._expand_help(action), action.option_strings


def test_serve_prefix_caching_flags_reach_the_server(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import minimax01.server.serve as serve_module

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(serve_module, "serve", lambda **kw: seen.append(kw))
    assert cli.main(["serve", "--model", str(tiny_dir), "--device", "cpu"]) == 0
    assert cli.main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--no-enable-prefix-caching",
                     "--prefix-snapshot-interval", "2048", "--prefix-cache-memory", "1G",
                     "--prefix-cache-host-memory", "2G"]) == 0
    default, custom = seen
    assert default["prefix_caching"] is True
    assert "prefix_snapshot_interval" not in default and "prefix_cache_memory" not in default
    assert (custom["prefix_caching"], custom["prefix_snapshot_interval"]) == (False, 2048)
    assert (custom["prefix_cache_memory"], custom["prefix_cache_host_memory"]) == (2**30, 2**31)
