"""`serve()`: load a checkpoint, build the engine + AsyncEngine + app, run uvicorn (what `minimax01 serve` runs).

The pieces are separate functions so that tests and benchmarks can build a server around their own model
(`build_server`) and run it in a thread or subprocess (`run_server`).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI

from minimax01.engine import LLMEngine
from minimax01.errors import RequestError
from minimax01.loading import ChatSetup, Loaded, checkpoint_dir, load_chat_setup, run_with_model
from minimax01.server.app import create_app
from minimax01.server.http_server import GracefulServer, HttpLimits, server_config
from minimax01.server.middleware import DEFAULT_MAX_BODY_BYTES
from minimax01.server.runner import AsyncEngine
from minimax01.tokenizer import MiniMaxTokenizer


@dataclass
class Server:
    app: FastAPI
    runner: AsyncEngine
    model_name: str
    limits: HttpLimits = field(default_factory=HttpLimits)


# What a request still in flight at the shutdown deadline is told.
SHUTTING_DOWN = "the server is shutting down; the request was ended before it finished"


def build_server(model: Any, tokenizer: MiniMaxTokenizer, model_name: str, *, api_key: str | None = None,
                 max_num_seqs: int = 16, max_model_len: int | None = None, max_num_batched_tokens: int = 512,
                 kv_block_size: int = 64, kv_cache_memory: int | None = None, stop_token_ids: list[int] | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, chat: ChatSetup | None = None,
                 limits: HttpLimits | None = None, prefix_caching: bool = True,
                 prefix_snapshot_interval: int | None = None, prefix_cache_memory: int | None = None,
                 prefix_cache_host_memory: int = 0) -> Server:
    """Engine (continuous batching over `max_num_seqs` slots) + its thread + the ASGI app.

    `kv_cache_memory` (bytes) sizes the softmax-layer KV pool; by default every slot can hold `max_model_len`.
    `chat`: template, parsers and sampling defaults (loading.load_chat_setup; default: see create_app).
    `limits`: timeouts and connection cap. `prefix_caching`, `prefix_snapshot_interval`, `prefix_cache_memory`
    (bytes of lightning-state snapshots on the device), `prefix_cache_host_memory` (host bytes they spill to):
    see LLMEngine.
    """
    limits = limits if limits is not None else HttpLimits()
    engine = LLMEngine(model, tokenizer, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                       max_num_batched_tokens=max_num_batched_tokens, kv_block_size=kv_block_size,
                       kv_cache_bytes=kv_cache_memory, default_stop_token_ids=stop_token_ids,
                       prefix_caching=prefix_caching, prefix_snapshot_interval=prefix_snapshot_interval,
                       prefix_cache_bytes=prefix_cache_memory, prefix_cache_host_bytes=prefix_cache_host_memory)
    runner = AsyncEngine(engine)
    app = create_app(runner, model_name, api_key=api_key, max_body_bytes=max_body_bytes, chat=chat,
                     read_timeout=limits.read_timeout)
    return Server(app, runner, model_name, limits)


def check_address(host: str, port: int) -> None:
    """RequestError unless `host:port` can be listened on now: checked before the (slow) model load, so that a
    typo or a port in use fails at once and in one line. uvicorn binds again later; the check uses the same
    socket options (SO_REUSEADDR), so it refuses exactly what uvicorn would."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen()
    except (OSError, OverflowError) as e:  # socket.gaierror is an OSError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise RequestError(f"cannot listen on {host}:{port}: {reason}") from None


def run_server(server: Server, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Runs the HTTP server until SIGINT / SIGTERM, then stops the engine thread. Shutdown takes at most
    `server.limits.shutdown_timeout` seconds (plus a few for the failed streams to flush)."""
    config = server_config(server.app, host, port, server.limits, log_level)
    http = GracefulServer(config, server.limits, lambda: server.runner.fail_all(SHUTTING_DOWN))
    try:
        http.run()
    finally:
        server.runner.close()


def serve(model: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_num_seqs: int = 16, max_model_len: int | None = None, max_num_batched_tokens: int = 512,
          dtype: torch.dtype | str | None = None, device: str = "cpu", served_model_name: str | None = None,
          quantize: str | None = None, tp: int = 1, ep: int = 1, kv_block_size: int = 64,
          kv_cache_memory: int | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          log_level: str = "info", load_format: str = "auto", chat_template: str | None = None,
          tool_call_parser: str | None = None, reasoning_parser: str | None = None, check_weights: bool = True,
          limits: HttpLimits | None = None, prefix_caching: bool = True, prefix_snapshot_interval: int | None = None,
          prefix_cache_memory: int | None = None, prefix_cache_host_memory: int = 0) -> None:
    """Serves a checkpoint directory (default: the built-in tiny model) on http://host:port/v1.

    Binds 127.0.0.1 unless told otherwise; `api_key` makes /v1/* require `Authorization: Bearer <key>`.
    `dtype`: a torch dtype or a name (dtypes.parse_dtype; default bf16 on GPU, fp32 on CPU).
    `tp` (attention heads split tp ways) / `ep` (experts split into ep groups) > 1, or a torchrun environment,
    shard the model over several processes (parallel/world.py): this process serves as rank 0 and starts the
    others itself (one per GPU of `device`, or gloo processes on the CPU); under torchrun, rank 0 serves and
    the other ranks follow its steps. `load_format="dummy"`: random weights, only config.json is read
    (benchmarks). `chat_template` (a file) replaces the checkpoint's template; `tool_call_parser` /
    `reasoning_parser` replace the detected family's parsers (chat.tool_parsers). `check_weights=False` skips
    the NaN / inf check of every weight while loading. `limits`: read / keep-alive / shutdown timeouts and the
    connection cap (http_server.HttpLimits). `prefix_caching` (on by default, sharded too),
    `prefix_snapshot_interval`, `prefix_cache_memory`, `prefix_cache_host_memory`: prefix caching
    (docs/prefix_caching.md).
    """
    check_address(host, port)
    model_dir = checkpoint_dir(model)
    chat = load_chat_setup(model_dir, chat_template, tool_call_parser, reasoning_parser)  # before the weights

    def run(loaded: Loaded) -> None:
        server = build_server(loaded.model, loaded.tokenizer, served_model_name or model_dir.name, api_key=api_key,
                              max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                              max_num_batched_tokens=max_num_batched_tokens, kv_block_size=kv_block_size,
                              kv_cache_memory=kv_cache_memory, stop_token_ids=loaded.stop_token_ids,
                              max_body_bytes=max_body_bytes, chat=chat, limits=limits,
                              prefix_caching=prefix_caching, prefix_snapshot_interval=prefix_snapshot_interval,
                              prefix_cache_memory=prefix_cache_memory,
                              prefix_cache_host_memory=prefix_cache_host_memory)
        logging.getLogger("minimax01.server").info(
            "serving %s as %r on http://%s:%d/v1 (max_num_seqs=%d, max_model_len=%d, tp=%d, ep=%d; family %s, "
            "tool-call parser %s, reasoning parser %s, %s chat template)", model_dir, server.model_name, host, port,
            max_num_seqs, server.runner.engine.max_model_len, tp, ep, chat.format.family,
            chat.format.tool_call_parser, chat.format.reasoning_parser, chat.template_source)
        run_server(server, host, port, log_level)

    run_with_model(model_dir, run, dtype=dtype, device=device, quantize=quantize, tp=tp, ep=ep,
                   load_format=load_format, check_weights=check_weights)
