"""Prefix caching under tensor / expert parallelism (parallel/mirror.py): follower ranks replay rank 0's store and
snapshot operations on their own shards.

In one process: rank 0's engine runs over a LockstepModel whose channel hands every message straight to a
`Follower` over the same (unsharded) model. Replaying the op log must then reproduce rank 0's store bit for bit:
lightning states, KV cache, reference counts, and every snapshot in the same tier with the same numbers. A
follower that skipped a restore or took a snapshot at another moment would hold other numbers. The multi-process
tests (gloo, tp=2 / ep=2) check tokens and logprobs against caching off end to end.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_prefix_cache import INTERVAL, PAGE, check_refs, conversation, greedy, ids, one_by_one, run_all

from minimax01.config import MiniMaxConfig
from minimax01.engine import LLMEngine
from minimax01.parallel.lockstep import Follower, LockstepModel
from minimax01.parallel.mirror import OutOfLockstep, StoreMirror


class DirectChannel:
    """The step channel of one process: each message is handled by the follower as it is sent."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower
        self.messages = 0

    def send(self, obj: Any) -> None:  # noqa: ANN401
        if obj is not None:
            self.follower.handle(obj)
            self.messages += 1

    def recv(self) -> Any:  # noqa: ANN401
        raise NotImplementedError

    def close(self) -> None:
        pass


def mirrored(model: torch.nn.Module, **kw: Any) -> tuple[LLMEngine, Follower]:  # noqa: ANN401
    follower = Follower(model)
    kw.setdefault("max_model_len", 2048)
    eng = LLMEngine(LockstepModel(model, DirectChannel(follower)), kv_block_size=PAGE,
                    prefix_snapshot_interval=INTERVAL, **kw)
    return eng, follower


def assert_mirrors(eng: LLMEngine, mirror: StoreMirror) -> None:
    """The follower's store and snapshots equal rank 0's, bit for bit (the same model on both sides)."""
    eng.model.check_mirror(eng.prefix_cache.snapshots)  # flushes the ops of the last step and compares digests
    a, b = eng.store, mirror.store
    assert a.block_refs == b.block_refs and a.free_blocks == b.free_blocks and a.kept_blocks == b.kept_blocks
    assert a.block_tables == b.block_tables and a.seq_lens == b.seq_lens
    assert torch.equal(a.lightning, b.lightning)
    assert torch.equal(a.k_cache, b.k_cache) and torch.equal(a.v_cache, b.v_cache)
    ours, theirs = eng.prefix_cache.snapshots, mirror.snapshots
    assert [sorted(t) for t in ours.tiers()] == [sorted(t) for t in theirs.tiers()]
    for tier in ("_states", "_host"):
        for key, state in getattr(ours, tier).items():
            assert torch.equal(state, getattr(theirs, tier)[key])
    assert (ours.bytes_used, ours.host_bytes_used) == (theirs.bytes_used, theirs.host_bytes_used)


@pytest.fixture(scope="module")
def cfg() -> MiniMaxConfig:
    return MiniMaxConfig.preset("tiny")


@pytest.fixture(scope="module")
def model(cfg: MiniMaxConfig) -> torch.nn.Module:
    from conftest import make_model

    return make_model(cfg, dtype=torch.float32)


def test_follower_replays_snapshots_restores_and_spills(model: torch.nn.Module, cfg: MiniMaxConfig) -> None:
    """A chat, a prompt that evicts, one that comes back from host memory, preemption and an abort mid-prefill:
    every store and snapshot operation of rank 0 is mirrored exactly."""
    snapshot = len(cfg.linear_layers) * cfg.num_attention_heads * cfg.head_dim ** 2 * 4
    # One snapshot on the device, four on the host, a KV pool of 120 pages: the last prompt restores a snapshot
    # that was spilled (reload); snapshots are dropped from the host and KV blocks evicted on the way.
    eng, follower = mirrored(model, num_kv_blocks=120, max_num_seqs=3, prefix_cache_bytes=snapshot,
                             prefix_cache_host_bytes=4 * snapshot, max_num_batched_tokens=256)
    chat = conversation(seed=70)
    on = one_by_one(eng, chat + [ids(700, 71), chat[1]])
    assert [r["cached"] for r in on] == [0, 512, 768, 0, 768]
    snaps = eng.prefix_cache.snapshots
    assert snaps.num_spills and snaps.num_reloads and snaps.num_evictions and eng.prefix_cache.num_evicted_blocks
    assert_mirrors(eng, follower.mirror)

    # Concurrent: one request restores the chat's prefix and is aborted after its first step (it holds shared
    # blocks); two 650-token prompts generating 40 tokens each outgrow the pool and preempt each other.
    prompts = [chat[1] + ids(300, 73), chat[1] + ids(60, 74), ids(650, 75), ids(650, 76)]
    rids = [eng.add_request(p, greedy(40)) for p in prompts]
    eng.step()
    assert any(b in eng.store.kept_blocks for table in eng.store.block_tables.values() for b in table)
    assert eng.abort(rids[0])
    while eng.has_unfinished():
        eng.step()
    check_refs(eng)
    assert eng.stats().preemptions_total > 0
    assert_mirrors(eng, follower.mirror)
    assert follower.steps > 0


def test_a_follower_that_skips_a_restore_or_loses_a_snapshot_is_caught(model: torch.nn.Module,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above fail for a follower that restores zeros instead of its snapshot, and a follower whose
    snapshot keys differ from rank 0's stops at the next check."""
    eng, follower = mirrored(model)
    monkeypatch.setattr(StoreMirror, "_device_state", lambda self, key: torch.zeros_like(self.store.lightning[:, 0]))
    assert [r["cached"] for r in one_by_one(eng, conversation(turns=2, seed=81))] == [0, 512]
    with pytest.raises(AssertionError):
        assert_mirrors(eng, follower.mirror)
    follower.mirror.snapshots.drop(follower.mirror.snapshots.tiers()[0][0])  # a snapshot rank 0 still has
    with pytest.raises(OutOfLockstep, match="differ"):
        eng.model.check_mirror(eng.prefix_cache.snapshots)
