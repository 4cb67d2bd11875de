"""SnapshotStore: lightning-state snapshots of cached prefixes, in a byte budget with LRU eviction.

A hybrid model cannot resume a prefix from KV blocks alone: each lightning layer carries a fp32 state
[heads, head_dim, head_dim] that sums up every token before it. A snapshot is a copy of all lightning layers'
states of one sequence, [linear_layers, heads, D, D] fp32, taken when a prefill chunk ends at a snapshot position
(prefix_cache.py decides where). Snapshots live on the model's device, so restoring one is a device-to-device
copy into the new request's slot; together they never exceed `budget_bytes`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch


class SnapshotStore:
    """Snapshots by key (a prefix's block hash), least recently used first out when the budget is full."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._states: OrderedDict[Hashable, torch.Tensor] = OrderedDict()  # key -> [linear_layers, H, D, D] fp32
        self.bytes_used = 0
        self.num_evictions = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._states

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: Hashable) -> torch.Tensor | None:
        """The snapshot of `key` (marked as just used), or None."""
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
        return state

    def put(self, key: Hashable, state: torch.Tensor) -> bool:
        """Keeps a copy of `state` (a slot's states, a view into the store, so it is cloned) under `key`, evicting
        the least recently used snapshots to make room. False, and nothing kept, when one snapshot alone exceeds
        the budget."""
        size = state.numel() * state.element_size()
        if size > self.budget_bytes:
            return False
        if key in self._states:
            self._states.move_to_end(key)
            return True
        while self.bytes_used + size > self.budget_bytes:
            self._evict_oldest()
        self._states[key] = state.clone()
        self.bytes_used += size
        return True

    def discard(self, key: Hashable) -> None:
        """Drops `key`'s snapshot, if any (its prefix's KV blocks were evicted: it can no longer be restored)."""
        state = self._states.pop(key, None)
        if state is not None:
            self.bytes_used -= state.numel() * state.element_size()
            self.num_evictions += 1

    def _evict_oldest(self) -> None:
        key = next(iter(self._states))
        self.discard(key)
