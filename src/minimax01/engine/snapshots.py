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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class SnapshotStore:
    """Snapshots by key (a prefix's block hash), least recently used first out when a budget is full."""

    def __init__(self, device: torch.device, budget_bytes: int, host_budget_bytes: int = 0) -> None:
        self.device = device
        self.budget_bytes = budget_bytes
        self.host_budget_bytes = host_budget_bytes
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

    def get(self, key: Hashable) -> torch.Tensor | None:
        """The snapshot of `key` on the device (marked as just used; brought back from the host if it was
        spilled), or None."""
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            return state
        host = self._host.pop(key, None)
        if host is None:
            return None
        self.host_bytes_used -= _nbytes(host)
        self.num_reloads += 1
        state = torch.empty(host.shape, dtype=host.dtype, device=self.device)
        state.copy_(host, non_blocking=host.is_pinned())
        self._insert(key, state)
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
        self._insert(key, state.clone())
        return True

    def discard(self, key: Hashable) -> None:
        """Drops `key`'s snapshot from either tier, if any (its prefix's KV blocks were evicted: it can no longer
        be restored)."""
        for tier in (self._states, self._host):
            state = tier.pop(key, None)
            if state is not None:
                if tier is self._states:
                    self.bytes_used -= _nbytes(state)
                else:
                    self.host_bytes_used -= _nbytes(state)
                self.num_evictions += 1

    def _insert(self, key: Hashable, state: torch.Tensor) -> None:
        size = _nbytes(state)
        while self.bytes_used + size > self.budget_bytes:
            self._spill_oldest()
        self._states[key] = state
        self.bytes_used += size

    def _spill_oldest(self) -> None:
        key, state = self._states.popitem(last=False)
        size = _nbytes(state)
        self.bytes_used -= size
        if size > self.host_budget_bytes:
            self.num_evictions += 1
            return
        while self.host_bytes_used + size > self.host_budget_bytes:
            self.host_bytes_used -= _nbytes(self._host.popitem(last=False)[1])
            self.num_evictions += 1
        host = torch.empty(state.shape, dtype=state.dtype, pin_memory=self.device.type == "cuda")
        host.copy_(state)  # synchronous: the device tensor is freed right after
        self._host[key] = host
        self.host_bytes_used += size
        self.num_spills += 1
