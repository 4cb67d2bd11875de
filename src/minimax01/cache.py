"""StateStore: the one place where per-sequence model state lives.

- Lightning layers: one fp32 state per (layer, slot): `[linear_layers, slots, heads, head_dim, head_dim]`.
  Its size does not depend on the sequence length.
- Softmax layers: a paged KV cache `[softmax_layers, blocks, block_size, kv_heads, head_dim]` (keys after
  RoPE); each slot owns a list of blocks, so memory follows the real lengths, not `max_model_len`.
  Blocks are reference-counted: a full block may sit in several slots' tables at once (a shared prompt prefix,
  engine/prefix_cache.py, which holds a reference of its own); it returns to the free list with its last one.

A step of the model works on a `BatchInfo`: which slots, how many tokens each already has (`start_pos`)
and how many new tokens it brings (`num_new`). Tokens of all sequences are concatenated (no padding).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from minimax01.config import MiniMaxConfig

# Steps that bring at most this many tokens to a sequence get their KV positions by integer arithmetic on the host:
# per sequence, that is cheaper than the few tensor ops of the long-chunk path (a decode step of 64 sequences
# spent milliseconds of host time there).
_HOST_RUN = 16


class OutOfSlots(RuntimeError):
    """No free sequence slot or KV block is left in the store's budget."""


@dataclass(frozen=True)
class StateLayout:
    """The heads whose per-sequence state a model keeps, as its layers hold them: under tensor parallelism only
    this rank's share, fewer than the config's. Sizes a StateStore and the engine's KV budget."""

    lightning_heads: int  # heads of each lightning layer's fp32 state [heads, head_dim, head_dim]
    kv_heads: int  # key/value heads of each softmax layer's paged cache

    @classmethod
    def full(cls, config: MiniMaxConfig) -> StateLayout:
        """Every head of the config (an unsharded model)."""
        return cls(config.num_attention_heads, config.num_key_value_heads)

    def kv_bytes_per_token(self, config: MiniMaxConfig, dtype: torch.dtype) -> int:
        """Keys + values of one token in every softmax layer (0 without softmax layers)."""
        return 2 * len(config.full_layers) * self.kv_heads * config.head_dim * dtype.itemsize


@dataclass
class BatchInfo:
    """Describes one flattened step. Python lists drive the reference loops; tensors feed kernels."""

    slots: list[int]
    start_pos: list[int]  # tokens already in the cache for each sequence
    num_new: list[int]  # new tokens of each sequence in this step
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Host hint of the longest sequence after this step (max start_pos + num_new), for kernels that size their
    # launch by it. Default: computed from the lists. None: no hint (a step whose lists are placeholders, e.g.
    # one captured in a CUDA graph and replayed at other lengths); kernels then read lengths on the device only.
    max_seq_len: int | None = -1

    def __post_init__(self) -> None:
        if not (len(self.slots) == len(self.start_pos) == len(self.num_new)):
            raise ValueError("BatchInfo lists must have equal lengths")
        self.cu_seqlens = [0]
        for n in self.num_new:
            self.cu_seqlens.append(self.cu_seqlens[-1] + n)
        self.num_tokens = self.cu_seqlens[-1]
        if self.max_seq_len == -1:
            self.max_seq_len = max((s + n for s, n in zip(self.start_pos, self.num_new)), default=0)
        if all(n == 1 for n in self.num_new):  # one token per sequence (decode): no tensor op per sequence
            positions = torch.tensor(self.start_pos, dtype=torch.long)
        else:
            pos = [torch.arange(s, s + n) for s, n in zip(self.start_pos, self.num_new)]
            positions = torch.cat(pos) if pos else torch.zeros(0, dtype=torch.long)
        self.positions = positions.to(self.device)
        self.slots_t = torch.tensor(self.slots, dtype=torch.long, device=self.device)
        # Device copy of the boundaries, made once per step (not once per lightning layer) for the kernels.
        self.cu_seqlens_t = torch.tensor(self.cu_seqlens, dtype=torch.int32, device=self.device)
        # Sequences that bring exactly one token to a non-empty state take the O(1) recurrent path.
        self.is_decode = all(n == 1 and s > 0 for n, s in zip(self.num_new, self.start_pos))
        self.last_token_index = torch.tensor(self.cu_seqlens[1:], dtype=torch.long, device=self.device) - 1


class StateStore:
    """Lightning states + paged softmax KV cache for up to `max_seqs` sequences.

    `num_kv_blocks=None` makes the KV pool grow on demand (convenience / tests); the engine passes a fixed
    budget and gets `OutOfSlots` when it is exhausted.
    """

    def __init__(
        self,
        config: MiniMaxConfig,
        max_seqs: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        num_kv_blocks: int | None = None,
        kv_block_size: int = 64,
        state_dtype: torch.dtype = torch.float32,
        layout: StateLayout | None = None,  # heads held here; None = the config's (an unsharded model)
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_seqs = max_seqs
        self.kv_block_size = kv_block_size
        self.growable = num_kv_blocks is None
        layout = layout or StateLayout.full(config)
        H, KVH, D = layout.lightning_heads, layout.kv_heads, config.head_dim
        # Layer index (global) -> index into the lightning / KV tensors.
        self.linear_index = {layer: i for i, layer in enumerate(config.linear_layers)}
        self.full_index = {layer: i for i, layer in enumerate(config.full_layers)}
        self.lightning = torch.zeros(len(self.linear_index), max_seqs, H, D, D, dtype=state_dtype,
                                     device=self.device)
        blocks = num_kv_blocks if num_kv_blocks is not None else max(max_seqs, 1) * 4
        kv_shape = (len(self.full_index), blocks, kv_block_size, KVH, D)
        self.k_cache = torch.zeros(kv_shape, dtype=dtype, device=self.device)
        self.v_cache = torch.zeros(kv_shape, dtype=dtype, device=self.device)
        self.free_blocks: list[int] = list(range(blocks - 1, -1, -1))
        self.block_refs: list[int] = [0] * blocks  # holders of each block: slot tables + the prefix cache
        self.kept_blocks: set[int] = set()  # blocks the prefix cache holds a reference on (`keep_block`)
        self.num_idle_kept = 0  # ... of which no slot holds any: the cache can give them back at once
        self.free_slots: list[int] = list(range(max_seqs - 1, -1, -1))
        self.block_tables: dict[int, list[int]] = {}
        self.seq_lens: dict[int, int] = {}
        # Device copy of block_tables for kernels: [max_seqs, width] int32, row = slot; entries past a slot's
        # length are stale (kernels read only below the length). The width doubles on demand.
        self.block_table_t = torch.zeros(max_seqs, 16, dtype=torch.int32, device=self.device)
        # A list records, in order, every call that changes the slots, the KV blocks' holders or the lightning
        # states outside a step: ("allocate", slot), ("free", slot), ("attach", slot, length, blocks, key),
        # ("keep", block), ("unkeep", block), and the prefix cache's snapshot operations (`log_op`). A store
        # follows from these calls and the steps alone, so replaying the log on another rank's store
        # (parallel/mirror.py) keeps the two identical. None = not recorded.
        self.op_log: list[tuple] | None = None

    def log_op(self, *op: object) -> None:
        """Appends `op` to the op log, if it is recorded (see op_log)."""
        if self.op_log is not None:
            self.op_log.append(op)

    # ------------------------------------------------------------------ slots
    def allocate(self) -> int:
        """A fresh slot with a zero lightning state and an empty KV cache."""
        if not self.free_slots:
            raise OutOfSlots(f"all {self.max_seqs} sequence slots are in use")
        slot = self.free_slots.pop()
        self.lightning[:, slot].zero_()
        self.block_tables[slot] = []
        self.seq_lens[slot] = 0
        self.log_op("allocate", slot)
        return slot

    def free(self, slot: int) -> None:
        """Returns the slot and all its KV blocks at once."""
        if slot not in self.block_tables:
            return
        for block in reversed(self.block_tables.pop(slot)):
            self.release_block(block)
        del self.seq_lens[slot]
        self.free_slots.append(slot)
        self.log_op("free", slot)

    def attach_prefix(self, slot: int, length: int, blocks: list[int], state: torch.Tensor,
                      key: Hashable | None = None) -> None:
        """Starts the fresh `slot` from a cached prefix of `length` tokens: its table begins with the full,
        read-only KV `blocks` of those tokens (shared: one more reference each; none without softmax layers) and
        its lightning state becomes `state` ([linear_layers, heads, D, D] fp32, the state after the prefix).
        Decode and prefill write only at positions >= the length, i.e. into blocks of the slot's own.
        `key` names the snapshot `state` is, for the op log: a mirror restores its own snapshot of that key."""
        if self.full_index and len(blocks) * self.kv_block_size != length:
            raise ValueError(f"a shared prefix is whole blocks: {len(blocks)} blocks cannot hold {length} tokens")
        if self.seq_lens.get(slot) != 0:
            raise ValueError(f"slot {slot} is not fresh: a prefix can only start an empty sequence")
        if self.op_log is not None and key is None:
            raise ValueError("a mirrored store (op_log) needs the key of the snapshot a prefix starts from")
        self.log_op("attach", slot, length, list(blocks), key)
        for block in blocks:
            self.retain_block(block)
        self.block_tables[slot] = list(blocks)
        self.seq_lens[slot] = length
        self.lightning[:, slot].copy_(state)
        if blocks:
            self._set_blocks(slot, 0, blocks)

    def retain_block(self, block: int) -> None:
        """One more holder of a block that is in use (a slot's table or the prefix cache)."""
        if self.block_refs[block] <= 0:
            raise ValueError(f"KV block {block} is free; only a block in use can be shared")
        if self.block_refs[block] == 1 and block in self.kept_blocks:
            self.num_idle_kept -= 1
        self.block_refs[block] += 1

    def release_block(self, block: int) -> None:
        """One holder fewer; the last one returns the block to the free list."""
        self.block_refs[block] -= 1
        if self.block_refs[block] == 0:
            self.free_blocks.append(block)
        elif self.block_refs[block] < 0:
            raise RuntimeError(f"KV block {block} released more often than held")
        elif self.block_refs[block] == 1 and block in self.kept_blocks:
            self.num_idle_kept += 1

    def keep_block(self, block: int) -> None:
        """The prefix cache takes a reference on a block a slot holds (counted apart: see num_idle_kept)."""
        if block in self.kept_blocks:
            raise ValueError(f"KV block {block} is kept already")
        self.retain_block(block)
        self.kept_blocks.add(block)
        self.log_op("keep", block)

    def unkeep_block(self, block: int) -> None:
        """The prefix cache drops its reference (the block is free if no slot holds it)."""
        self.kept_blocks.remove(block)
        if self.block_refs[block] == 1:
            self.num_idle_kept -= 1
        self.release_block(block)
        self.log_op("unkeep", block)

    @property
    def num_free_slots(self) -> int:
        return len(self.free_slots)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def num_kv_blocks(self) -> int:
        return self.k_cache.shape[1]

    def blocks_needed(self, slot: int, new_tokens: int) -> int:
        have = len(self.block_tables.get(slot, []))
        need = -(-(self.seq_lens.get(slot, 0) + new_tokens) // self.kv_block_size)
        return max(0, need - have) if self.full_index else 0

    # ------------------------------------------------------------------ KV pages
    def _grow(self, min_extra: int) -> None:
        old = self.num_kv_blocks
        new = max(old * 2, old + min_extra)
        for name in ("k_cache", "v_cache"):
            t = getattr(self, name)
            grown = torch.zeros((t.shape[0], new) + tuple(t.shape[2:]), dtype=t.dtype, device=t.device)
            grown[:, :old] = t
            setattr(self, name, grown)
        self.free_blocks = list(range(new - 1, old - 1, -1)) + self.free_blocks
        self.block_refs.extend([0] * (new - old))

    def prepare(self, batch: BatchInfo) -> torch.Tensor:
        """Reserves KV blocks for the new tokens and returns their flat cache positions [T]
        (block * block_size + offset), where the softmax layers write k and v."""
        need = sum(self.blocks_needed(s, n) for s, n in zip(batch.slots, batch.num_new))
        if need > len(self.free_blocks):
            if not self.growable:
                raise OutOfSlots(f"KV cache needs {need} more blocks, {len(self.free_blocks)} free")
            self._grow(need - len(self.free_blocks))
        parts: list[torch.Tensor] = []  # flat positions, in the batch's token order
        small: list[int] = []  # positions of consecutive short runs, not yet in parts
        bs = self.kv_block_size
        for slot, start, n in zip(batch.slots, batch.start_pos, batch.num_new):
            if start != self.seq_lens[slot]:
                raise ValueError(f"slot {slot} holds {self.seq_lens[slot]} tokens but the step starts at {start}")
            table = self.block_tables[slot]
            have = len(table)
            for _ in range(self.blocks_needed(slot, n)):
                table.append(self.free_blocks.pop())
                self.block_refs[table[-1]] = 1
            if len(table) > have:
                self._set_blocks(slot, have, table[have:])
            if not self.full_index or not n:
                continue
            if n <= _HOST_RUN:  # decode-sized: plain integers (a tensor op per sequence costs more than the math)
                small.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
                continue
            if small:
                parts.append(torch.tensor(small, dtype=torch.long))
                small = []
            # Only the blocks the new tokens land in: host work O(n), not O(length).
            first = start // bs
            pos = torch.arange(start, start + n)
            blocks = torch.tensor(table[first:(start + n - 1) // bs + 1], dtype=torch.long)
            parts.append(blocks[pos // bs - first] * bs + pos % bs)
        if small:
            parts.append(torch.tensor(small, dtype=torch.long))
        return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)).to(self.device)

    def _set_blocks(self, slot: int, first: int, blocks: list[int]) -> None:
        """Writes a slot's new blocks (its block indices first..) into the device block table."""
        end = first + len(blocks)
        self.reserve_block_table(end)
        self.block_table_t[slot, first:end] = torch.tensor(blocks, dtype=torch.int32).to(self.device)

    def reserve_block_table(self, blocks_per_seq: int) -> None:
        """Makes block_table_t at least `blocks_per_seq` wide (a new tensor when it grows: code that holds the
        old one, such as a captured CUDA graph, must reserve up front)."""
        width = self.block_table_t.shape[1]
        if blocks_per_seq > width:
            grown = torch.zeros(self.max_seqs, max(blocks_per_seq, 2 * width), dtype=torch.int32,
                                device=self.device)
            grown[:, :width] = self.block_table_t
            self.block_table_t = grown

    def commit(self, batch: BatchInfo) -> None:
        """Advances the stored lengths after a successful step."""
        for slot, n in zip(batch.slots, batch.num_new):
            self.seq_lens[slot] += n

    @contextmanager
    def advance(self, batch: BatchInfo) -> Iterator[torch.Tensor]:
        """The bookkeeping around one step of a model: `prepare` before (yields the flat KV positions [T] where
        the softmax layers write), `commit` after, only when the step raised nothing. Every way of running a
        step (the model's own, a CUDA-graph replay) goes through it, so they cannot drift apart."""
        kv_pos = self.prepare(batch)
        yield kv_pos
        self.commit(batch)

    def memory_bytes(self) -> dict[str, int]:
        return {
            "lightning_state": self.lightning.numel() * self.lightning.element_size(),
            "kv_cache": 2 * self.k_cache.numel() * self.k_cache.element_size(),
        }
