"""PrefixCache: reuse of a prompt prefix that an earlier request has prefilled (docs/prefix_caching.md).

A hybrid model resumes a prefix from two things: the softmax layers' KV blocks of its tokens and the lightning
layers' fp32 states after its last token. Both are kept here under the prefix's *block key*:

- keys: the KV pages of a sequence are blocks of `block_size` tokens; block i's key is a hash of the salt, block
  i-1's key and block i's token ids, so a key names the whole prefix up to the end of its block. Entries keep
  their parent key and tokens too and a lookup compares them, so even a hash collision cannot hand out a wrong
  prefix. Only full blocks have keys: a partly filled last block is never shared.
- KV blocks: an entry holds one reference (StateStore.block_refs) on the store block with those keys and values;
  requests that map it into their block tables hold theirs. Blocks are read-only once shared: a sequence writes
  only at positions past its length, which are in blocks of its own.
- snapshots (snapshots.py): the lightning states at *snapshot positions*: every `interval` tokens, and the last
  multiple of `unit` in each prompt. `unit` = lcm(lightning block, KV page): a restore point is always the
  end of a KV page and of a lightning block.

Exactness: a restored request continues from a snapshot position p with the same chunk boundaries as a fresh
prefill, because with the cache on every prefill chunk ends at a multiple of `unit`, at a snapshot position, or
at the end of the sequence (`chunk_end`). The lightning recurrence then adds the same blocks to the same fp32
state in the same order with or without the restore, and the softmax layers read the same keys and values.

Eviction: least recently used first, when the scheduler needs free KV blocks (`evict`); an entry whose block a
running request still holds frees nothing and stays. Lookups touch the deepest block first, so a prefix is
evicted from its end. Snapshots have their own byte budgets, on the device and optionally in host memory
(snapshots.py), and are dropped with their block.

Concurrent requests: the snapshot keys a running request will produce are *pending*; a request whose next
snapshot is pending waits in the queue (`must_wait`) instead of prefilling the same tokens a second time.

A sharded model: this cache lives on rank 0 only and decides alone. What it does to the store (attach, keep,
unkeep) and to its snapshots (taken under a key from a slot, spilled, reloaded, dropped) goes into the store's op
log, which the follower ranks replay on their own shards (parallel/mirror.py): keys and ids, never tensors.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import torch

from minimax01.cache import StateStore
from minimax01.config import MiniMaxConfig
from minimax01.engine.snapshots import SnapshotStore


@dataclass(frozen=True)
class CachedBlock:
    parent: bytes | None  # key of the block before (None: the first block)
    tokens: tuple[int, ...]  # the block's token ids (checked on lookup)
    kv_block: int | None  # the store's KV block (None: a model without softmax layers keeps no KV)


@dataclass(frozen=True)
class PrefixCacheStats:
    queries: int  # admitted requests that looked up their prefix
    hits: int  # ... of which found one
    hit_tokens: int  # prompt tokens served from the cache
    evicted_blocks: int  # KV blocks evicted (with the snapshots on them)
    evicted_snapshots: int  # snapshots evicted, for their budget or with their block
    kv_blocks: int  # KV blocks the cache holds a reference on
    snapshots: int  # snapshots kept (both tiers)
    snapshot_bytes: int  # device memory of the snapshots
    host_snapshot_bytes: int  # host memory of the spilled snapshots
    kv_bytes: int  # memory of the KV blocks the cache holds


@dataclass(frozen=True)
class PrefixHit:
    length: int  # tokens served from the cache (0: none); a snapshot position
    kv_blocks: list[int]  # the shared KV blocks of those tokens (empty without softmax layers)
    state: torch.Tensor | None  # lightning states after `length` tokens [linear_layers, H, D, D] fp32
    key: bytes | None = None  # the snapshot's key (a mirrored store logs it: followers restore their own)


NO_HIT = PrefixHit(0, [], None)


class PrefixCache:
    """Block keys, shared KV blocks and lightning snapshots of the prefixes one engine has prefilled.
    `salt` names everything besides the tokens that changes the numbers (dtype, quantization, ...)."""

    def __init__(self, store: StateStore, lightning_block: int, interval: int, budget_bytes: int, salt: str,
                 host_budget_bytes: int = 0) -> None:
        self.store = store
        self.block_size = store.kv_block_size
        self.unit = math.lcm(lightning_block, self.block_size)
        if interval <= 0 or interval % self.unit:
            raise ValueError(f"the prefix snapshot interval must be a positive multiple of {self.unit} (the "
                             f"lightning block and the KV page size), got {interval}")
        self.interval = interval
        self.salt = hashlib.blake2b(salt.encode(), digest_size=16).digest()
        self.has_kv = bool(store.full_index)
        self.blocks: OrderedDict[bytes, CachedBlock] = OrderedDict()  # least recently used first
        # Every snapshot move is in the store's op log too, when it keeps one (a sharded model's mirrors).
        self.snapshots = SnapshotStore(store.device, budget_bytes, host_budget_bytes, log=store.log_op)
        self.pending: dict[bytes, int] = {}  # snapshot key -> id of the request that is computing it
        self.num_queries = self.num_hits = self.num_hit_tokens = self.num_evicted_blocks = 0

    # ------------------------------------------------------------------ positions
    def is_snapshot_position(self, pos: int, prompt_len: int) -> bool:
        """Whether the lightning states after `pos` tokens are kept: every `interval`, and the last multiple of
        `unit` in the prompt."""
        return pos > 0 and (pos % self.interval == 0 or pos == prompt_len // self.unit * self.unit)

    def chunk_end(self, start: int, end: int, total: int, prompt_len: int) -> int:
        """Where a prefill chunk from `start` that the token budget would end at `end` (<= total) ends: at a
        multiple of `unit` (unless the budget is smaller than one, or it is the end of the sequence) and never
        past the next snapshot position. The same boundaries fresh or restored keep the arithmetic identical.
        Always past `start` when `end` is (the next snapshot position is)."""
        if end < total and end // self.unit * self.unit > start:
            end = end // self.unit * self.unit
        nxt = (start // self.interval + 1) * self.interval
        last = prompt_len // self.unit * self.unit
        return min(end, nxt, last) if start < last else min(end, nxt)

    # ------------------------------------------------------------------ keys
    def extend_keys(self, tokens: list[int], keys: list[bytes]) -> None:
        """Appends to `keys` the keys of the full blocks of `tokens` it does not have yet."""
        bs = self.block_size
        for i in range(len(keys), len(tokens) // bs):
            h = hashlib.blake2b(keys[-1] if keys else self.salt, digest_size=16)
            h.update(array("q", tokens[i * bs:(i + 1) * bs]).tobytes())
            keys.append(h.digest())

    # ------------------------------------------------------------------ lookup
    def lookup(self, tokens: list[int], keys: list[bytes]) -> PrefixHit:
        """The longest cached prefix of `tokens` that ends at a snapshot, leaving at least one token to compute
        (its logits give the first sampled token). Marks the prefix as just used."""
        self.extend_keys(tokens, keys)
        bs, best, usable = self.block_size, 0, (len(tokens) - 1) // self.block_size
        for i in range(usable):
            entry = self.blocks.get(keys[i])
            if (entry is None or entry.parent != (keys[i - 1] if i else None)
                    or entry.tokens != tuple(tokens[i * bs:(i + 1) * bs])):
                break
            if keys[i] in self.snapshots:
                best = i + 1
        if best == 0:
            return NO_HIT
        self._touch(keys[:best])
        kv = [self.blocks[k].kv_block for k in keys[:best]] if self.has_kv else []
        return PrefixHit(best * bs, kv, self.snapshots.get(keys[best - 1]), keys[best - 1])

    def count(self, hit: PrefixHit) -> None:
        """Records one admitted request's lookup in the statistics."""
        self.num_queries += 1
        self.num_hits += hit.length > 0
        self.num_hit_tokens += hit.length

    def _touch(self, keys: list[bytes]) -> None:
        for key in reversed(keys):  # the deepest block becomes the least recent of the prefix: evicted first
            self.blocks.move_to_end(key)

    # ------------------------------------------------------------------ sharing work
    def next_snapshot_key(self, tokens: list[int], keys: list[bytes], start: int, prompt_len: int) -> bytes | None:
        """The key of the first snapshot position after `start` that a prefill of `tokens` reaches (None: none
        before its last token)."""
        pos = next((p for p in range(start + self.unit, len(tokens), self.unit)
                    if self.is_snapshot_position(p, prompt_len)), None)
        if pos is None:
            return None
        self.extend_keys(tokens, keys)
        return keys[pos // self.block_size - 1]

    def must_wait(self, owner: int, key: bytes | None) -> bool:
        """Whether a request (id `owner`) should wait for another request that is computing snapshot `key`."""
        return key is not None and self.pending.get(key, owner) != owner and key not in self.snapshots

    def claim(self, owner: int, tokens: list[int], keys: list[bytes], start: int, prompt_len: int) -> list[bytes]:
        """Marks the snapshots that a request (id `owner`) prefilling `tokens` from `start` will produce as pending
        (those not cached or claimed yet); returns their keys, for `release`."""
        self.extend_keys(tokens, keys)
        claimed = []
        for pos in range(start + self.unit, len(tokens) + 1, self.unit):
            key = keys[pos // self.block_size - 1] if self.is_snapshot_position(pos, prompt_len) else None
            if key is not None and key not in self.snapshots and key not in self.pending:
                self.pending[key] = owner
                claimed.append(key)
        return claimed

    def release(self, owner: int, keys: list[bytes]) -> None:
        """Ends `owner`'s claims that are still pending (it finished, was aborted or preempted)."""
        for key in keys:
            if self.pending.get(key) == owner:
                del self.pending[key]

    # ------------------------------------------------------------------ recording
    def record(self, slot: int, tokens: list[int], keys: list[bytes], end: int) -> None:
        """Caches the prefix tokens[:end] that `slot` has just prefilled (`end` a snapshot position): its KV blocks
        (those not cached yet) and its lightning states."""
        self.extend_keys(tokens, keys)
        bs, n = self.block_size, end // self.block_size
        table = self.store.block_tables[slot]
        for i in range(n):
            if keys[i] not in self.blocks:
                kv = table[i] if self.has_kv else None
                if kv is not None:
                    self.store.keep_block(kv)
                self.blocks[keys[i]] = CachedBlock(keys[i - 1] if i else None, tuple(tokens[i * bs:(i + 1) * bs]), kv)
        self._touch(keys[:n])
        key = keys[n - 1]
        if key in self.snapshots:
            self.snapshots.get(key)  # the same prefix, the same numbers: marked as just used
        elif self.snapshots.put(key, self.store.lightning[:, slot]):
            self.store.log_op("snapshot", slot, key)  # after put's own moves, which made room for it
        self.pending.pop(key, None)

    # ------------------------------------------------------------------ memory
    def evict(self, num_blocks: int) -> int:
        """Frees up to `num_blocks` KV blocks that only the cache holds, least recently used first; returns how
        many it freed."""
        refs = self.store.block_refs
        victims = []
        for key, entry in self.blocks.items():
            if len(victims) >= num_blocks:
                break
            if entry.kv_block is not None and refs[entry.kv_block] == 1:  # held by the cache alone
                victims.append(key)
        for key in victims:
            self.store.unkeep_block(self.blocks.pop(key).kv_block)
            self.snapshots.discard(key)
        self.num_evicted_blocks += len(victims)
        return len(victims)

    def num_reclaimable_blocks(self) -> int:
        """KV blocks that only the cache holds (free for the taking)."""
        return self.store.num_idle_kept

    def stats(self) -> PrefixCacheStats:
        store = self.store
        kv_blocks = len(store.kept_blocks)
        block_bytes = 2 * store.k_cache[:, 0].numel() * store.k_cache.element_size()  # keys + values, all layers
        return PrefixCacheStats(self.num_queries, self.num_hits, self.num_hit_tokens, self.num_evicted_blocks,
                                self.snapshots.num_evictions, kv_blocks, len(self.snapshots),
                                self.snapshots.bytes_used, self.snapshots.host_bytes_used, kv_blocks * block_bytes)


# Snapshot spacing when none is given: a multiple of every usual `unit` (lcm(256, KV page) for pages up to 256).
# Wider than the default step budget (512 tokens), so its chunk cuts rarely add a step; dense enough that a
# request sharing only part of a long prefix (a system prompt, then its own messages) recomputes < 1024 tokens.
DEFAULT_SNAPSHOT_INTERVAL = 1024
# Snapshot memory when none is given: 14 snapshots of the full Text-01 (70 lightning layers, 280 MiB each).
DEFAULT_CACHE_BYTES = 4 << 30


def new_prefix_cache(store: StateStore, config: MiniMaxConfig, model_dtype: torch.dtype,
                     interval: int | None = None, budget_bytes: int | None = None,
                     host_budget_bytes: int = 0) -> PrefixCache:
    """The prefix cache of an engine's store; the salt holds what changes the numbers besides the tokens: the
    model and KV dtypes, the state dtype, int8 quantization, the page and lightning block sizes."""
    quant = config.extra.get("quantization_config")
    salt = f"{model_dtype}|{store.dtype}|{store.lightning.dtype}|{quant}|{store.kv_block_size}|{config.block_size}"
    return PrefixCache(store, config.block_size, interval or DEFAULT_SNAPSHOT_INTERVAL,
                       DEFAULT_CACHE_BYTES if budget_bytes is None else budget_bytes, salt, host_budget_bytes)
