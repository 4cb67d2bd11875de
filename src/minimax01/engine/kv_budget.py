"""How large an engine's KV pool is and how long a sequence may grow, from what the caller gave: a block count,
a byte budget, a longest sequence, or none of them."""

from __future__ import annotations

from typing import Any

from minimax01.config import MiniMaxConfig

# max_model_len when neither it nor a KV budget is given: Text-01 accepts 10M positions, but reserving KV
# blocks for that per sequence would be absurd; long-context users pass max_model_len explicitly.
DEFAULT_MAX_MODEL_LEN = 32768


def positive(name: str, value: Any) -> int:
    """`value` when it is a positive int (bool excluded), else ValueError naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def kv_budget(config: MiniMaxConfig, block_bytes: int, max_num_seqs: int, kv_block_size: int,
              max_model_len: int | None, num_kv_blocks: int | None, kv_cache_bytes: int | None) -> tuple[int, int]:
    """(num_kv_blocks, max_model_len). `block_bytes`: one KV block of every softmax layer this rank holds (0
    without softmax layers: then there is no pool to size and one placeholder block). A byte budget becomes a
    block count; without a longest sequence, the pool (or DEFAULT_MAX_MODEL_LEN) bounds it; without a pool, it
    holds `max_num_seqs` sequences of the longest length."""
    if num_kv_blocks is None and kv_cache_bytes is not None:
        num_kv_blocks = positive("kv_cache_bytes", kv_cache_bytes) // block_bytes if block_bytes else 1
        if num_kv_blocks == 0:
            raise ValueError(f"kv_cache_bytes={kv_cache_bytes} is smaller than one KV block ({block_bytes} B)")
    if num_kv_blocks is not None:
        positive("num_kv_blocks", num_kv_blocks)
    if max_model_len is None:
        cap = num_kv_blocks * kv_block_size if num_kv_blocks is not None and block_bytes else DEFAULT_MAX_MODEL_LEN
        max_model_len = min(config.max_position_embeddings, cap)
    elif positive("max_model_len", max_model_len) > config.max_position_embeddings:
        raise ValueError(f"max_model_len={max_model_len} exceeds the model's max_position_embeddings "
                         f"({config.max_position_embeddings})")
    if num_kv_blocks is None:
        num_kv_blocks = max_num_seqs * -(-max_model_len // kv_block_size) if block_bytes else 1
    return num_kv_blocks, max_model_len
