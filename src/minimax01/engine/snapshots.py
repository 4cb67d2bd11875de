"""SnapshotStore: lightning-state snapshots of cached prefixes, in byte budgets with LRU eviction.

A hybrid model cannot resume a prefix from KV blocks alone: each lightning layer carries a fp32 state
[heads, head_dim, head_dim] that sums up every token before it. A snapshot is a copy of all lightning layers'
states of one sequence, [linear_layers, heads, D, D] fp32, taken when a prefill chunk ends at a snapshot position
(prefix_cache.py decides where).

Two tiers: snapshots live on the model's device (`budget_bytes`), so restoring one is a device-to-device copy
into the new request's slot. When that budget is full, the least recently used one moves to host memory
(`host_budget_bytes`, pinned when CUDA is there; 0: it is dropped instead), and the least recently used host
snapshot is dropped to make room there. A host snapshot that is looked up moves back to the device with an
asynchronous copy from pinned memory: the copy into the slot that follows is queued behind it on the same
stream, so nothing waits for it on the host.

Mirroring (a sharded model, parallel/mirror.py): rank 0's store decides, through its budgets, and logs each move
it makes (`log`: ("spill" | "reload" | "drop", key)); each follower rank keeps the snapshots of its own lightning
heads in a store of its own and replays those moves with the same primitives (`add`, `spill`, `reload`, `drop`),
never deciding anything itself. So both hold the same keys in the same tiers at every step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class SnapshotStore:
    """Snapshots by key (a prefix's block hash), least recently used first out when a budget is full.
    `log(op, key)` (optional) hears of every spill, reload and drop (see the module docstring)."""

    def __init__(self, device: torch.device, budget_bytes: int, host_budget_bytes: int = 0,
                 log: Callable[[str, Hashable], None] | None = None) -> None:
        self.device = device
        self.budget_bytes = budget_bytes
        self.host_budget_bytes = host_budget_bytes
        self.log = log
        self._states: OrderedDict[Hashable, torch.Tensor] = OrderedDict()  # key -> [linear_layers, H, D, D] fp32
        self._host: OrderedDict[Hashable, torch.Tensor] = OrderedDict()  # spilled snapshots, on the host
        self.bytes_used = 0
        self.host_bytes_used = 0
        self.num_evictions = 0  # snapshots dropped (from either tier)
        self.num_spills = self.num_reloads = 0  # device -> host moves, host -> device moves

    def __contains__(self, key: Hashable) -> bool:
        return key in self._states or key in self._host

    def __len__(self) -> int:
        return len(self._states) + len(self._host)

    def tiers(self) -> tuple[list[Hashable], list[Hashable]]:
        """The keys on the device and on the host (least recently used first)."""
        return list(self._states), list(self._host)

    # ------------------------------------------------------------------ policy (the deciding store)
    def get(self, key: Hashable) -> torch.Tensor | None:
        """The snapshot of `key` on the device (marked as just used; brought back from the host if it was
        spilled), or None."""
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            return state
        if key not in self._host:
            return None
        state = self.reload(key)
        self._make_room(0)  # the reloaded one is the newest: others move out
        return state

    def put(self, key: Hashable, state: torch.Tensor) -> bool:
        """Keeps a copy of `state` (a slot's states, a view into the store, so it is cloned) under `key`, making
        room as the class docstring says. False, and nothing kept, when one snapshot alone exceeds the device
        budget."""
        if _nbytes(state) > self.budget_bytes:
            return False
        if key in self:
            self.get(key)  # the same prefix: the same numbers; just mark it used
            return True
        self._make_room(_nbytes(state))
        self.add(key, state)
        return True

    def discard(self, key: Hashable) -> None:
        """Drops `key`'s snapshot from either tier, if any (its prefix's KV blocks were evicted: it can no longer
        be restored)."""
        if key in self:
            self.drop(key)

    def _make_room(self, size: int) -> None:
        """Spills the least recently used device snapshots until `size` more bytes fit the device budget."""
        while self._states and self.bytes_used + size > self.budget_bytes:
            key = next(iter(self._states))
            need = _nbytes(self._states[key])
            if need > self.host_budget_bytes:
                self.drop(key)
                continue
            while self.host_bytes_used + need > self.host_budget_bytes:
                self.drop(next(iter(self._host)))
            self.spill(key)

    # ------------------------------------------------------------------ primitives (also replayed by mirrors)
    def add(self, key: Hashable, state: torch.Tensor) -> None:
        """Keeps a copy of `state` on the device under the new `key`, whatever the budget (put decides)."""
        copy = state.clone()
        self._states[key] = copy
        self.bytes_used += _nbytes(copy)

    def device_state(self, key: Hashable) -> torch.Tensor:
        """The device snapshot of `key`, unchanged in the LRU order; KeyError when it is not on the device."""
        return self._states[key]

    def spill(self, key: Hashable) -> None:
        """Moves `key`'s snapshot from the device to host memory (pinned on CUDA)."""
        state = self._states.pop(key)
        size = _nbytes(state)
        self.bytes_used -= size
        host = torch.empty(state.shape, dtype=state.dtype, pin_memory=self.device.type == "cuda")
        host.copy_(state)  # synchronous: the device tensor is freed right after
        self._host[key] = host
        self.host_bytes_used += size
        self.num_spills += 1
        self._log("spill", key)

    def reload(self, key: Hashable) -> torch.Tensor:
        """Moves `key`'s snapshot from the host back to the device (asynchronously from pinned memory: a copy
        into a slot queued after it on the same stream reads the finished data); returns it."""
        host = self._host.pop(key)
        self.host_bytes_used -= _nbytes(host)
        state = torch.empty(host.shape, dtype=host.dtype, device=self.device)
        state.copy_(host, non_blocking=host.is_pinned())
        self._states[key] = state
        self.bytes_used += _nbytes(state)
        self.num_reloads += 1
        self._log("reload", key)
        return state

    def drop(self, key: Hashable) -> None:
        """Forgets `key`'s snapshot, from whichever tier holds it."""
        if key in self._states:
            self.bytes_used -= _nbytes(self._states.pop(key))
        else:
            self.host_bytes_used -= _nbytes(self._host.pop(key))
        self.num_evictions += 1
        self._log("drop", key)

    def _log(self, op: str, key: Hashable) -> None:
        if self.log is not None:
            self.log(op, key)
