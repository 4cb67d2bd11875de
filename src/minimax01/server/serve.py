"""`serve()`: load a checkpoint, build the engine + AsyncEngine + app, run uvicorn (what `minimax01 serve` runs).

The pieces are separate functions so that tests and benchmarks can build a server around their own model
(`build_server`) and run it in a thread or subprocess (`run_server`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI

from minimax01.engine import LLMEngine
from minimax01.errors import RequestError
from minimax01.server.app import DEFAULT_MAX_BODY_BYTES, create_app
from minimax01.server.runner import AsyncEngine

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32, "fp64": torch.float64, "float64": torch.float64}


def _dtype(value: torch.dtype | str | None, device: str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if value is None or value == "auto":  # bf16 matmuls are slow on CPU
        return torch.float32 if device == "cpu" else torch.bfloat16
    if value not in _DTYPES:
        raise RequestError(f"dtype {value!r} is not one of {', '.join(_DTYPES)}")
    return _DTYPES[value]


@dataclass
class Server:
    app: FastAPI
    runner: AsyncEngine
    model_name: str


def load_tokenizer_of(model: str | Path | None) -> tuple[Any, list[int], Path]:
    """(tokenizer, stop token ids, checkpoint dir); `model=None` is the built-in tiny checkpoint."""
    from minimax01.tiny import ensure_default_model
    from minimax01.tokenizer import load_tokenizer, stop_token_ids

    model_dir = Path(model) if model is not None else ensure_default_model()
    tokenizer = load_tokenizer(model_dir)
    return tokenizer, stop_token_ids(model_dir, tokenizer), model_dir


def load_checkpoint(model: str | Path | None, dtype: torch.dtype | str | None = None, device: str = "cpu",
                    quantize: str | None = None) -> tuple[Any, Any, list[int], Path]:
    """(model, tokenizer, stop token ids, checkpoint dir); `model=None` is the built-in tiny checkpoint."""
    from minimax01.model.model import MiniMaxForCausalLM

    tokenizer, stop_ids, model_dir = load_tokenizer_of(model)  # before the (slow) weights: fails fast
    net = MiniMaxForCausalLM.from_pretrained(model_dir, dtype=_dtype(dtype, device), device=device,
                                             quantize=quantize)
    return net, tokenizer, stop_ids, model_dir


def build_server(model: Any, tokenizer: Any, model_name: str, *, api_key: str | None = None,
                 max_num_seqs: int = 16, max_model_len: int | None = None, max_num_batched_tokens: int = 512,
                 kv_block_size: int = 64, kv_cache_memory: int | None = None, stop_token_ids: list[int] | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Server:
    """Engine (continuous batching over `max_num_seqs` slots) + its thread + the ASGI app.

    `kv_cache_memory` (bytes) sizes the softmax-layer KV pool; by default every slot can hold `max_model_len`.
    """
    engine = LLMEngine(model, tokenizer, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                       max_num_batched_tokens=max_num_batched_tokens, kv_block_size=kv_block_size,
                       kv_cache_bytes=kv_cache_memory, default_stop_token_ids=stop_token_ids)
    runner = AsyncEngine(engine)
    return Server(create_app(runner, model_name, api_key=api_key, max_body_bytes=max_body_bytes), runner, model_name)


def run_server(server: Server, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Runs uvicorn until interrupted, then stops the engine thread."""
    try:
        uvicorn.run(server.app, host=host, port=port, log_level=log_level)
    finally:
        server.runner.close()


def serve(model: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_num_seqs: int = 16, max_model_len: int | None = None, max_num_batched_tokens: int = 512,
          dtype: torch.dtype | str | None = None, device: str = "cpu", served_model_name: str | None = None,
          quantize: str | None = None, tp: int = 1, ep: int = 1, kv_block_size: int = 64,
          kv_cache_memory: int | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          log_level: str = "info") -> None:
    """Serves a checkpoint directory (default: the built-in tiny model) on http://host:port/v1.

    Binds 127.0.0.1 unless told otherwise; `api_key` makes /v1/* require `Authorization: Bearer <key>`.
    `tp` (attention heads split tp ways) / `ep` (experts split into ep groups) > 1, or a torchrun environment,
    shard the model over several processes (parallel.lockstep): this process serves as rank 0 and starts the
    others itself (one per GPU of `device`, or gloo processes on the CPU); under torchrun, rank 0 serves and
    the other ranks follow its steps.
    """
    from minimax01.parallel.lockstep import WorldSpec, launched_by_torchrun, run_sharded

    def run(net: Any, tokenizer: Any, stop_ids: list[int], model_dir: Path) -> None:
        server = build_server(net, tokenizer, served_model_name or model_dir.name, api_key=api_key,
                              max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                              max_num_batched_tokens=max_num_batched_tokens, kv_block_size=kv_block_size,
                              kv_cache_memory=kv_cache_memory, stop_token_ids=stop_ids,
                              max_body_bytes=max_body_bytes)
        logging.getLogger("minimax01.server").info(
            "serving %s as %r on http://%s:%d/v1 (max_num_seqs=%d, max_model_len=%d, tp=%d, ep=%d)", model_dir,
            server.model_name, host, port, max_num_seqs, server.runner.engine.max_model_len, tp, ep)
        run_server(server, host, port, log_level)

    if tp == 1 and ep == 1 and not launched_by_torchrun():
        run(*load_checkpoint(model, dtype, device, quantize))
        return
    tokenizer, stop_ids, model_dir = load_tokenizer_of(model)  # fails fast, before any process starts
    spec = WorldSpec(str(model_dir), tp, ep, _dtype(dtype, device), torch.device(device).type, quantize)
    run_sharded(spec, lambda net: run(net, tokenizer, stop_ids, model_dir))
