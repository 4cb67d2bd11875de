"""StoreMirror: a follower rank's copy of rank 0's state bookkeeping, prefix cache included.

Rank 0 alone schedules: it hashes prompts, looks prefixes up, evicts and spills. Its StateStore logs every call
that changes slots, KV-block holders or lightning states outside a model step (`StateStore.op_log`: allocate,
free, attach, keep, unkeep) and its SnapshotStore logs every snapshot it takes, spills, reloads and drops. A
follower replays that log, in order, on its own store and snapshot store before it runs the same step:

- slots and KV blocks: the same calls in the same order give the same free lists and reference counts, so the
  block ids rank 0 puts in a step's tables are valid, and free, on every rank;
- snapshots: a follower's lightning states hold its own heads (tensor parallel: 1/tp of them; expert parallel
  alone: all of them, replicated), so it snapshots *its own* slot state under rank 0's key. Rank 0 takes a
  snapshot after the step whose prefill chunk ended at the snapshot position and logs it then; the follower
  replays it before the next step, when its slot holds the state after that same step (nothing in between
  changes a slot's lightning state except logged calls, which are replayed in their order). A restore
  ("attach") copies the follower's snapshot of that key into the slot;
- budgets: followers decide nothing. Their snapshot store has no budget of its own; each spill, reload and drop
  of rank 0 is replayed, so they keep the same keys in the same tiers (on the device: 1/tp of rank 0's bytes
  under tensor parallelism).

No tensor travels: an op is a name, ints and 16-byte keys. `digest` summarises what must agree; rank 0 sends
its own with a `Check` message (parallel/lockstep.py) and a follower that differs stops with an error.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Hashable

import torch
import torch.distributed as dist

from minimax01.cache import StateStore
from minimax01.engine.snapshots import SnapshotStore


class OutOfLockstep(RuntimeError):
    """A follower's store no longer matches rank 0's: every later step would compute garbage."""


def this_rank() -> str:
    """How errors name this process."""
    return f"rank {dist.get_rank()}" if dist.is_initialized() else "the mirror"


class StoreMirror:
    """A follower's store plus the snapshots of its own lightning heads, kept in step with rank 0's op log."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.snapshots = SnapshotStore(store.device, budget_bytes=0)  # no budget: rank 0's moves are replayed

    def replay(self, ops: list[tuple]) -> None:
        """Applies rank 0's logged calls, in order; OutOfLockstep when one cannot apply here (a block, slot or
        snapshot this store does not have as rank 0 had it)."""
        for op, *args in ops:
            try:
                self._apply(op, args)
            except (KeyError, ValueError) as e:
                raise OutOfLockstep(f"{this_rank()} cannot replay rank 0's {op}{tuple(args)}: {e}") from e

    def _apply(self, op: str, args: list) -> None:
        store, snaps = self.store, self.snapshots
        if op == "allocate":
            if (got := store.allocate()) != args[0]:
                raise ValueError(f"the store allocated slot {got}, rank 0's slot {args[0]}")
        elif op == "free":
            store.free(args[0])
        elif op == "attach":
            slot, length, blocks, key = args
            store.attach_prefix(slot, length, blocks, self._device_state(key))
        elif op == "keep":
            store.keep_block(args[0])
        elif op == "unkeep":
            store.unkeep_block(args[0])
        elif op == "snapshot":
            slot, key = args
            snaps.add(key, store.lightning[:, slot])  # this rank's heads, after the step rank 0 took it after
        elif op == "spill":
            snaps.spill(args[0])
        elif op == "reload":
            snaps.reload(args[0])
        elif op == "drop":
            snaps.drop(args[0])
        else:
            raise ValueError(f"unknown store operation {op!r}")

    def _device_state(self, key: Hashable) -> torch.Tensor:
        """This rank's snapshot of `key`, which rank 0 restores (reloaded before, if it had been spilled)."""
        return self.snapshots.device_state(key)

    def digest(self) -> bytes:
        return digest(self.store, self.snapshots)


def digest(store: StateStore, snapshots: SnapshotStore | None) -> bytes:
    """A hash of what rank 0's op log decides and its mirrors must agree on: free slots and blocks (in order:
    the next allocations), reference counts, kept blocks, tables, lengths, and the snapshot keys of each tier
    (as sets: their LRU order is rank 0's business)."""
    device, host = snapshots.tiers() if snapshots is not None else ([], [])
    state = (store.free_slots, store.free_blocks, store.block_refs, sorted(store.kept_blocks), store.num_idle_kept,
             sorted((s, t) for s, t in store.block_tables.items()), sorted(store.seq_lens.items()),
             sorted(device), sorted(host))
    return hashlib.blake2b(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), digest_size=16).digest()
