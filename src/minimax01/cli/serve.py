"""`minimax01 serve`: the OpenAI-compatible HTTP server over a checkpoint."""

from __future__ import annotations

import argparse

from minimax01.cli.args import (add_chat_format_flags, add_model_flags, device_arg, model_dir_arg,
                                 parse_bytes, use_free_cores)
from minimax01.server.http_server import HttpLimits


def port_number(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1-65535)")
    return int(value)


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds > 0")
    return number


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer >= 1")
    return int(value)


def api_key(value: str) -> str:
    # An empty key would make the empty bearer token ("Authorization: Bearer ") a valid credential.
    if not value.strip():
        raise argparse.ArgumentTypeError("the key must not be empty")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server",
                       description="Serves /v1/chat/completions, /v1/completions and /v1/models.")
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on (default %(default)s)")
    p.add_argument("--api-key", type=api_key, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* requests (/health and /metrics stay open "
                        "for probes and scrapers); default: no key")
    p.add_argument("--served-model-name", metavar="NAME", help="model name reported by the API (default: the DIR name)")
    p.add_argument("--max-num-seqs", type=int, metavar="N", help="most sequences decoded together (default 16)")
    p.add_argument("--max-model-len", type=int, metavar="N",
                   help="longest prompt + completion, in tokens (default: the KV budget's, at most 32768)")
    p.add_argument("--max-num-batched-tokens", type=int, metavar="N",
                   help="token budget of one engine step (default 512)")
    p.add_argument("--kv-cache-memory", type=parse_bytes, metavar="BYTES",
                   help="memory budget of the softmax-layer KV cache, e.g. 8G or 512M (default: enough for "
                        "--max-num-seqs sequences of --max-model-len tokens)")
    p.add_argument("--kv-block-size", type=int, metavar="N", help="tokens per KV-cache page (default 64)")
    p.add_argument("--max-body-bytes", type=parse_bytes, metavar="BYTES",
                   help="largest accepted request body; bigger ones get HTTP 413 (default 32M)")
    add_chat_format_flags(p)
    g = p.add_argument_group("prefix caching (docs/prefix_caching.md)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the KV blocks and lightning states of prompt prefixes that earlier requests "
                        "prefilled (default on, sharded models too)")
    g.add_argument("--prefix-snapshot-interval", type=positive_int, metavar="N",
                   help="tokens between lightning-state snapshots, a multiple of lcm(256, --kv-block-size) "
                        "(default 1024); every prompt's last multiple of that lcm is snapshotted too")
    g.add_argument("--prefix-cache-memory", type=parse_bytes, metavar="BYTES",
                   help="device memory for lightning-state snapshots, e.g. 8G (default 4G; per rank, whose "
                        "snapshots hold its share of the heads); cached KV blocks live in --kv-cache-memory")
    g.add_argument("--prefix-cache-host-memory", type=parse_bytes, metavar="BYTES",
                   help="host memory (pinned on CUDA) that snapshots move to when --prefix-cache-memory is full, "
                        "copied back asynchronously on a hit (default 0: evicted snapshots are dropped; per rank)")
    defaults = HttpLimits()
    p.add_argument("--read-timeout", type=seconds, default=defaults.read_timeout, metavar="SECONDS",
                   help="a request's head, and then its body, must arrive within this time, else the connection "
                        "is closed (408 when part of it came) (default %(default)g)")
    p.add_argument("--timeout-keep-alive", type=seconds, default=defaults.keep_alive_timeout, metavar="SECONDS",
                   help="close a kept-alive connection idle for this long between requests (default %(default)g)")
    p.add_argument("--max-connections", type=positive_int, default=defaults.max_connections, metavar="N",
                   help="most open connections; one more is answered 503 and closed (default %(default)s)")
    p.add_argument("--shutdown-timeout", type=seconds, default=defaults.shutdown_timeout, metavar="SECONDS",
                   help="on SIGTERM / Ctrl-C stop accepting, let requests in flight run this long, then end them "
                        "with an error (streams: an error event) and exit 0 (default %(default)g)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from minimax01.server.serve import serve

    device = device_arg(args.device)
    use_free_cores(device)
    options = {
        "model": str(model_dir_arg(args.model)), "host": args.host, "port": args.port, "api_key": args.api_key,
        "max_num_seqs": args.max_num_seqs, "max_model_len": args.max_model_len,
        "max_num_batched_tokens": args.max_num_batched_tokens, "dtype": args.dtype, "device": device,
        "served_model_name": args.served_model_name, "quantize": args.quantize, "tp": args.tp, "ep": args.ep,
        "kv_block_size": args.kv_block_size, "kv_cache_memory": args.kv_cache_memory,
        "max_body_bytes": args.max_body_bytes, "load_format": args.load_format, "chat_template": args.chat_template,
        "tool_call_parser": args.tool_call_parser, "reasoning_parser": args.reasoning_parser,
        "check_weights": not args.skip_weight_check, "prefix_caching": args.enable_prefix_caching,
        "prefix_snapshot_interval": args.prefix_snapshot_interval, "prefix_cache_memory": args.prefix_cache_memory,
        "prefix_cache_host_memory": args.prefix_cache_host_memory,
        "limits": HttpLimits(args.read_timeout, args.timeout_keep_alive, args.max_connections, args.shutdown_timeout),
    }
    # Flags left at None fall back to serve()'s own defaults (--dtype: bf16 on GPU, fp32 on CPU).
    serve(**{k: v for k, v in options.items() if v is not None})
    return 0
