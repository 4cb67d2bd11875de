"""`minimax01` command line. Every subcommand documents its flags in `--help`; errors are one line on
stderr with exit code 2 (bad input), never a traceback for user mistakes.

Commands that take `--model` fall back to the built-in tiny checkpoint (see `minimax01.tiny`), created in the
user cache directory on first use, so `minimax01 generate --prompt "Hello"` works right after installing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from minimax01.config import PRESETS, MiniMaxConfig, format_bytes, format_count
from minimax01.errors import MiniMaxError, RequestError

DTYPES = ("bf16", "fp32")
QUANTIZE = ("int8",)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: 'minimax01 generate: error: ...' (exit 2), no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ---------------------------------------------------------------------------------------------- info
def load_config_arg(value: str) -> MiniMaxConfig:
    """A preset name ('text-01', 'tiny'), a checkpoint directory or a config.json path."""
    if value in PRESETS:
        return MiniMaxConfig.preset(value)
    return MiniMaxConfig.from_pretrained(value)


def compress_pattern(pattern: str) -> str:
    """'LLLLLLLS' * 10 -> '(LLLLLLLS)x10'; falls back to the raw pattern when it is not periodic."""
    for period in range(1, len(pattern) + 1):
        if len(pattern) % period == 0 and pattern[:period] * (len(pattern) // period) == pattern:
            reps = len(pattern) // period
            return pattern if reps == 1 else f"({pattern[:period]})x{reps}"
    return pattern  # pragma: no cover - period == len always matches


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB ({format_bytes(n)})"


def info_report(config: MiniMaxConfig) -> str:
    counts = config.param_counts()
    lines = [
        f"layers            {config.num_hidden_layers}: {len(config.linear_layers)} lightning (L), "
        f"{len(config.full_layers)} softmax (S)",
        f"layer pattern     {compress_pattern(config.layer_pattern())}",
        f"dims              hidden {config.hidden_size}, heads {config.num_attention_heads} x {config.head_dim} "
        f"(kv heads {config.num_key_value_heads}), experts {config.num_local_experts} x "
        f"{config.intermediate_size} top-{config.num_experts_per_tok}, vocab {config.vocab_size}",
        f"rope              first {config.rotary_dim} of {config.head_dim} dims, theta {config.rope_theta:g}",
        f"parameters        total {format_count(counts['total'])}, active {format_count(counts['active'])} "
        f"per token (excl. embeddings/lm_head)",
        f"weights bf16      {_gb(config.weight_bytes('bf16'))}",
        f"weights int8      {_gb(config.weight_bytes('int8'))} (weight-only; lm_head, embeddings, "
        f"router and norms kept in bf16)",
        f"kv cache          {format_bytes(config.kv_bytes_per_token(2))}/token bf16, "
        f"{format_bytes(config.kv_bytes_per_token(1))}/token fp8 ({len(config.full_layers)} softmax layers)",
        f"lightning state   {format_bytes(config.lightning_state_bytes_per_seq())}/sequence fp32, "
        f"independent of length",
    ]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    print(info_report(load_config_arg(args.config or str(model_dir_arg(None)))))
    return 0


# ---------------------------------------------------------------------------------------------- init-tiny
def cmd_init_tiny(args: argparse.Namespace) -> int:
    from minimax01.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(args.dir, seed=args.seed, layers=args.layers)
    print(f"wrote a random tiny checkpoint to {out}")
    return 0


# ---------------------------------------------------------------------------------------------- shared helpers
def model_dir_arg(value: str | None) -> Path:
    """`--model DIR`, checked to exist; the built-in tiny checkpoint when omitted."""
    if value is None:
        from minimax01.tiny import ensure_default_model

        return ensure_default_model()
    path = Path(value)
    if not path.is_dir():
        raise RequestError(f"--model {value}: no such checkpoint directory")
    return path


def device_arg(value: str | None) -> str:
    """'cpu', 'cuda' or 'cuda:N'; default: cuda when available."""
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise RequestError(f"--device {value!r}: unknown device (expected cpu, cuda or cuda:N)")
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise RequestError(f"--device {value}: CUDA is not available on this machine")
    return value


def dtype_arg(value: str | None, device: str) -> Any:
    """torch dtype of `--dtype`; default bf16 on GPU, fp32 on CPU (where bf16 matmuls are slow)."""
    import torch

    if value is None:
        value = "fp32" if device == "cpu" else "bf16"
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[value]


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags as generate() keyword arguments, validated by SamplingParams (message names the flag)."""
    from minimax01.sampling import SamplingParams

    knobs = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p}
    common = {"max_new_tokens": args.max_new_tokens, "repetition_penalty": args.repetition_penalty,
              "seed": args.seed, "stop": args.stop or []}
    params = SamplingParams(**knobs, **common)
    try:
        params.validate()
    except RequestError as e:
        field = str(e).split(" ", 1)[0]
        raise RequestError("--" + field.replace("_", "-") + str(e)[len(field):]) from None
    # generate() samples only with do_sample=True; temperature 0 (or top-k 1) is its greedy path.
    return {**common, "do_sample": True, **knobs} if not params.is_greedy else {**common, "do_sample": False}


class Loaded(NamedTuple):
    model: Any  # MiniMaxForCausalLM
    tokenizer: Any  # MiniMaxTokenizer
    stop_token_ids: list[int]  # from generation_config.json / config.json / the tokenizer


def load_model(args: argparse.Namespace) -> Loaded:
    """Model, tokenizer and stop ids for the --model/--dtype/--device/--quantize flags."""
    from minimax01.model.model import MiniMaxForCausalLM
    from minimax01.tokenizer import load_tokenizer, stop_token_ids

    device = device_arg(args.device)
    dtype = dtype_arg(args.dtype, device)
    model_dir = model_dir_arg(args.model)
    tokenizer = load_tokenizer(model_dir)  # before the (slow) weights, so a bad checkpoint fails fast
    model = MiniMaxForCausalLM.from_pretrained(model_dir, dtype=dtype, device=device, quantize=args.quantize)
    return Loaded(model, tokenizer, stop_token_ids(model_dir, tokenizer))


def with_model(args: argparse.Namespace, body: Callable[[Loaded], int]) -> int:
    """`body(loaded)` for the model flags. With --tp or --ep > 1 (or under torchrun) the model is sharded over
    several processes (parallel.lockstep): `body` runs on rank 0 over its LockstepModel while the other ranks
    mirror its model steps; a follower rank returns 0."""
    from minimax01.parallel.lockstep import WorldSpec, launched_by_torchrun, run_sharded

    if args.tp == 1 and args.ep == 1 and not launched_by_torchrun():
        return body(load_model(args))
    from minimax01.tokenizer import load_tokenizer, stop_token_ids

    device = device_arg(args.device)
    model_dir = model_dir_arg(args.model)
    tokenizer = load_tokenizer(model_dir)  # before any process starts, so a bad checkpoint fails fast
    stop_ids = stop_token_ids(model_dir, tokenizer)
    spec = WorldSpec(str(model_dir), args.tp, args.ep, dtype_arg(args.dtype, device), device.split(":")[0],
                     args.quantize)
    result = run_sharded(spec, lambda model: body(Loaded(model, tokenizer, stop_ids)))
    return 0 if result is None else result


class Stats:
    """Counts the generated tokens of one request; reports finish reason + speed on stderr."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.tokens = 0
        self.finish_reason: str | None = None

    def see(self, event: Any) -> None:
        if event.token_id is not None:
            self.tokens += 1
        if event.finished:
            self.finish_reason = event.finish_reason

    def report(self) -> None:
        seconds = time.perf_counter() - self.start
        rate = self.tokens / seconds if seconds > 0 else 0.0
        print(f"[finish_reason={self.finish_reason}, {self.tokens} tokens, {seconds:.2f} s, {rate:.1f} tokens/s]",
              file=sys.stderr)


def stream_text(loaded: Loaded, prompt: str, sampling: dict[str, Any], stats: Stats) -> Iterable[str]:
    """Generated text deltas of one prompt; `stats` counts the tokens."""
    from minimax01.generation import generate

    events = generate(loaded.model, prompts=[prompt], tokenizer=loaded.tokenizer, stream=True,
                      stop_token_ids=loaded.stop_token_ids, **sampling)
    for event in events:
        stats.see(event)
        if event.text:
            yield event.text


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()  # stream: show each piece as soon as it is generated


# ---------------------------------------------------------------------------------------------- generate
def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file == "-":
        return sys.stdin.read()
    try:
        return Path(args.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RequestError(f"--prompt-file {args.prompt_file}: cannot read ({e.__class__.__name__}: {e})") from None


def cmd_generate(args: argparse.Namespace) -> int:
    sampling = sampling_kwargs(args)
    # Before the (slow) model, so that a bad file fails fast; under torchrun on rank 0 alone (it may be stdin).
    prompt = read_prompt(args) if os.environ.get("RANK", "0") == "0" else ""

    def run(loaded: Loaded) -> int:
        text = (loaded.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False)
                if args.chat else prompt)
        stats = Stats()
        for piece in stream_text(loaded, text, sampling, stats):
            _write(piece)
        _write("\n")
        stats.report()  # after the newline, so that on a terminal it gets a line of its own
        return 0

    return with_model(args, run)


# ---------------------------------------------------------------------------------------------- chat
def load_tools(path: str) -> list[dict[str, Any]]:
    """Tool definitions from a JSON file (a list, OpenAI `tools` style); errors name the file and position."""
    from minimax01.chat import normalize_tools

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


def chat_turn(loaded: Loaded, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
              sampling: dict[str, Any]) -> str:
    """Streams one assistant reply to stdout (tool calls shown as `[tool call] name(arguments)`); returns its raw
    text, which goes back into the history verbatim so the model sees exactly what it generated."""
    from minimax01.chat import StreamingToolCallParser

    prompt = loaded.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    parser = StreamingToolCallParser() if tools else None
    raw: list[str] = []
    line_open = False  # the last text written did not end a line

    def show(events: Iterable[Any]) -> None:
        nonlocal line_open
        for e in events:
            if not isinstance(e, str):  # a tool call gets a line of its own
                e = ("\n" if line_open else "") + f"[tool call] {e.name}({e.arguments})\n"
            _write(e)
            line_open = not e.endswith("\n")

    stats = Stats()
    for text in stream_text(loaded, prompt, sampling, stats):
        raw.append(text)
        show(parser.feed(text) if parser else [text])
    if parser:
        show(parser.finish())
    if line_open or not raw:
        _write("\n")  # every reply ends a line; an empty reply is an empty line
    stats.report()
    return "".join(raw)


def cmd_chat(args: argparse.Namespace) -> int:
    sampling = sampling_kwargs(args)
    tools = load_tools(args.tools) if args.tools else None
    return with_model(args, lambda loaded: chat_loop(loaded, args.system, tools, sampling))


def chat_loop(loaded: Loaded, system_prompt: str | None, tools: list[dict[str, Any]] | None,
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
        reply = chat_turn(loaded, messages, tools, sampling)
        messages.append({"role": "assistant", "content": reply})
    return 0


# ---------------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from minimax01.server.serve import serve

    device = device_arg(args.device)
    options = {
        "model": str(model_dir_arg(args.model)), "host": args.host, "port": args.port, "api_key": args.api_key,
        "max_num_seqs": args.max_num_seqs, "max_model_len": args.max_model_len,
        "max_num_batched_tokens": args.max_num_batched_tokens, "dtype": dtype_arg(args.dtype, device),
        "device": device, "served_model_name": args.served_model_name, "quantize": args.quantize, "tp": args.tp,
        "ep": args.ep,
        "kv_block_size": args.kv_block_size, "kv_cache_memory": args.kv_cache_memory,
        "max_body_bytes": args.max_body_bytes,
    }
    # Flags left at None fall back to serve()'s own defaults.
    serve(**{k: v for k, v in options.items() if v is not None})
    return 0


# ---------------------------------------------------------------------------------------------- plan
_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def parse_tokens(value: str) -> int:
    """'4M' -> 4194304, '128K' -> 131072, '1000000' -> 1000000 (binary suffixes, as context sizes are quoted)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)", value.strip().upper())
    if m is None or float(m.group(1)) * _SUFFIXES[m.group(2)] < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a token count (e.g. 4M, 128K, 1000000)")
    return int(float(m.group(1)) * _SUFFIXES[m.group(2)])


def parse_bytes(value: str) -> int:
    """'8G' -> 8 GiB, '512M', '1000' (binary suffixes)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)I?B?", value.strip().upper())
    if m is None or float(m.group(1)) * _SUFFIXES[m.group(2)] < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a byte count (e.g. 8G, 512M, 1000000)")
    return int(float(m.group(1)) * _SUFFIXES[m.group(2)])


def cmd_plan(args: argparse.Namespace) -> int:
    from minimax01.parallel.plan import plan_report

    print(plan_report(load_config_arg(args.config), args.context, args.gpus, dtype=args.dtype, tp=args.tp,
                      ep=args.ep, batch=args.batch))
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR",
                   help="checkpoint directory (Hugging Face layout); default: the built-in tiny random model, "
                        "created in the user cache directory on first use ($MINIMAX01_CACHE_DIR overrides it)")
    p.add_argument("--dtype", choices=DTYPES, help="weight/activation dtype; default bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", help="cpu, cuda or cuda:N; default cuda when available, else cpu")
    p.add_argument("--quantize", choices=QUANTIZE,
                   help="weight-only quantization applied after loading (int8: per-channel weights)")
    p.add_argument("--tp", type=int, default=1, metavar="N",
                   help="tensor parallelism: attention heads split N ways. With --tp or --ep > 1 the command starts "
                        "lcm(tp, ep) processes itself (one per GPU, rank r on cuda:r; gloo processes with --device "
                        "cpu); under torchrun it joins torchrun's world instead (default %(default)s)")
    p.add_argument("--ep", type=int, default=1, metavar="N",
                   help="expert parallelism: experts split into N groups, each expert's intermediate dim split "
                        "among the processes of its group (default %(default)s)")


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                   help="most tokens to generate per reply (>= 1; default %(default)s)")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="softmax temperature in [0, 2]; 0 = greedy (default %(default)s)")
    g.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="sample from the K most likely tokens; 0 or -1 disables (default %(default)s)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling: smallest set with probability mass >= P, in (0, 1] (default %(default)s)")
    g.add_argument("--min-p", type=float, default=0.0, metavar="P",
                   help="drop tokens less likely than P x the most likely one, in [0, 1] (default %(default)s)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="> 1 discourages tokens already in prompt or output; 1 disables (default %(default)s)")
    g.add_argument("--seed", type=int, metavar="S", help="random seed, for reproducible sampling")
    g.add_argument("--stop", nargs="+", action="extend", metavar="STR",
                   help="stop strings: the output ends just before the first one (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="minimax01",
        description="Run, serve and inspect MiniMax-Text-01 family checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="print layer pattern, parameter counts and memory needs of a config",
                       description="Prints the layer pattern, total/active parameter counts and the memory a "
                                   "checkpoint needs in bf16/int8, without allocating it.")
    p.add_argument("config", metavar="CONFIG_OR_DIR", nargs="?",
                   help="checkpoint directory, path to config.json, or a preset: " + ", ".join(sorted(PRESETS))
                        + "; default: the built-in tiny model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init-tiny", help="write a small random checkpoint in the real Hugging Face layout",
                       description="Writes config.json, sharded safetensors + index, tokenizer.json (a byte-level "
                                   "BPE trained on Python's own sources), tokenizer_config.json with the real chat "
                                   "template and generation_config.json. For tests and trying things out: the "
                                   "weights are random, so the text is gibberish.")
    p.add_argument("dir", metavar="DIR", help="output directory (created; must be empty if it exists)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default %(default)s)")
    p.add_argument("--layers", type=int, default=16,
                   help="number of layers; every 8th is softmax attention, as in Text-01 (default %(default)s)")
    p.set_defaults(func=cmd_init_tiny)

    p = sub.add_parser("generate", help="complete a prompt, streaming the text to stdout",
                       description="Streams the completion of one prompt to stdout; the finish reason and the "
                                   "speed go to stderr.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="the prompt text")
    src.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE ('-' = stdin)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as one user message with the model's chat template")
    _model_flags(p)
    _sampling_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat (REPL) using the model's chat template",
                       description="Reads one user message per line from stdin (works with a pipe), streams each "
                                   "reply, and keeps the conversation. /reset starts over, /exit or end of input "
                                   "quits.")
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument("--tools", metavar="FILE",
                   help="JSON file with a list of tool definitions (OpenAI style); tool calls in replies are shown "
                        "as [tool call] name(arguments)")
    _model_flags(p)
    _sampling_flags(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server",
                       description="Serves /v1/chat/completions, /v1/completions and /v1/models.")
    _model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default %(default)s)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every request")
    p.add_argument("--served-model-name", metavar="NAME", help="model name reported by the API (default: DIR name)")
    p.add_argument("--max-num-seqs", type=int, metavar="N", help="most sequences decoded together")
    p.add_argument("--max-model-len", type=int, metavar="N", help="longest prompt + completion, in tokens")
    p.add_argument("--max-num-batched-tokens", type=int, metavar="N", help="token budget of one engine step")
    p.add_argument("--kv-cache-memory", type=parse_bytes, metavar="BYTES",
                   help="memory budget of the softmax-layer KV cache, e.g. 8G or 512M (default: enough for "
                        "--max-num-seqs sequences of --max-model-len tokens)")
    p.add_argument("--kv-block-size", type=int, metavar="N", help="tokens per KV-cache page (default 64)")
    p.add_argument("--max-body-bytes", type=parse_bytes, metavar="BYTES",
                   help="largest accepted request body; bigger ones get HTTP 413 (default 32M)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("plan", help="memory / communication plan of a multi-GPU deployment (no GPU needed)",
                       description="Estimates what one GPU holds (weights, KV cache, lightning states), how many "
                                   "sequences of the given context fit, the bytes exchanged per token and the decode "
                                   "step time, for a (tp, ep) layout on H200s. Pure arithmetic on the config.")
    p.add_argument("--config", default="text-01", metavar="CONFIG_OR_DIR",
                   help="preset (" + ", ".join(sorted(PRESETS)) + "), checkpoint directory or config.json "
                        "(default %(default)s)")
    p.add_argument("--context", type=parse_tokens, default="1M", metavar="TOKENS",
                   help="tokens per sequence: 4M, 128K (K = 1024, M = 1024^2) or a plain number (default 1M)")
    p.add_argument("--gpus", type=int, default=8, metavar="N", help="number of GPUs (default %(default)s)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "int8", "fp8"), default="bf16",
                   help="weight dtype; int8/fp8 are weight-only (default %(default)s)")
    p.add_argument("--tp", type=int, metavar="N",
                   help="attention tensor-parallel degree; default min(gpus, 8), one node")
    p.add_argument("--ep", type=int, default=1, metavar="N",
                   help="expert groups: experts split N ways, each split gpus/N ways (default %(default)s)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="sequences decoded together, for the step-time estimate (default %(default)s)")
    p.set_defaults(func=cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MiniMaxError as e:
        print(f"minimax01 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
