"""Prefix caching under tensor / expert parallelism (parallel/mirror.py): follower ranks replay rank 0's store and
snapshot operations on their own shards.

- In one process: rank 0's engine runs over a LockstepModel whose channel hands every message straight to a
  `Follower` over the same (unsharded) model. Replaying the op log must then reproduce rank 0's store bit for
  bit: lightning states, KV cache, reference counts, and every snapshot in the same tier with the same numbers. A
  follower that skipped a restore or took a snapshot at another moment would hold other numbers (shown).
- In 2 processes (gloo, fp64; tp=2, ep=2, and both on 2 ranks): the same workload with caching on and off gives
  identical greedy tokens and logprobs within 1e-9, the followers' bookkeeping matches rank 0's at the end
  (`check_mirror`), and a follower that restores zeros instead of its snapshot moves rank 0's logprobs by far
  more than that.

The workload (`workload`): a three-turn chat, a foreign prompt, the second turn again; one snapshot fits on the
device and four on the host, the KV pool has 120 pages: snapshots are spilled, reloaded and dropped, KV blocks
evicted. Then four requests at once: one restores the chat and is aborted after its first step (it holds shared
blocks), two 650-token prompts generating 40 tokens each outgrow the pool and preempt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_prefix_cache import INTERVAL, PAGE, check_refs, conversation, greedy, ids, one_by_one

from minimax01.config import MiniMaxConfig
from minimax01.engine import LLMEngine
from minimax01.engine.protocol import StepModel
from minimax01.parallel.group import init_distributed
from minimax01.parallel.launch import spawn
from minimax01.parallel.lockstep import Follower, LockstepModel, follow
from minimax01.parallel.mirror import OutOfLockstep, StoreMirror
from minimax01.parallel.world import WorldSpec, join_world

LOGPROB_TOL = 1e-9  # fp64: restored and fresh runs differ by GEMM rounding only (see test_prefix_cache.py)


def workload(model: StepModel, caching: bool = True, turns: int = 3, full: bool = True) -> tuple[LLMEngine, dict]:
    """Runs the module docstring's workload (`full=False`: only the chat's first `turns` turns) on an engine over
    `model`; returns the engine and {"chat": per prompt tokens / logprobs / cached, "concurrent": tokens of the
    requests that were not aborted, "preemptions": n}."""
    cfg = model.config
    state_bytes = 8 if model.dtype == torch.float64 else 4  # fp64 models keep fp64 states
    snapshot = len(cfg.linear_layers) * model.state_layout.lightning_heads * cfg.head_dim ** 2 * state_bytes
    eng = LLMEngine(model, kv_block_size=PAGE, prefix_caching=caching, prefix_snapshot_interval=INTERVAL,
                    max_model_len=2048, num_kv_blocks=120, max_num_seqs=3, max_num_batched_tokens=256,
                    prefix_cache_bytes=snapshot, prefix_cache_host_bytes=4 * snapshot, default_stop_token_ids=[])
    chat = conversation(turns, seed=70)
    out: dict[str, Any] = {"chat": one_by_one(eng, chat + [ids(700, 71), chat[1]] if full else chat)}
    if full:
        prompts = [chat[1] + ids(300, 73), chat[1] + ids(60, 74), ids(650, 75), ids(650, 76)]
        rids = [eng.add_request(p, greedy(40)) for p in prompts]
        tokens: dict[str, list[int]] = {r: [] for r in rids}
        for o in eng.step():
            tokens[o.request_id] += o.new_token_ids
        if caching:  # the aborted request holds shared blocks
            assert any(b in eng.store.kept_blocks for table in eng.store.block_tables.values() for b in table)
        assert eng.abort(rids[0])
        while eng.has_unfinished():
            for o in eng.step():
                tokens[o.request_id] += o.new_token_ids
        check_refs(eng)
        out["concurrent"] = [tokens[r] for r in rids[1:]]
    out["preemptions"] = eng.stats().preemptions_total
    return eng, out


def assert_same(on: dict, off: dict) -> None:
    assert on.get("concurrent") == off.get("concurrent")
    for a, b in zip(on["chat"], off["chat"], strict=True):
        assert a["tokens"] == b["tokens"]
        assert max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"], strict=True)) <= LOGPROB_TOL


class DirectChannel:
    """The step channel of one process: each message is handled by the follower as it is sent."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower

    def send(self, obj: Any) -> None:  # noqa: ANN401
        if obj is not None:
            self.follower.handle(obj)

    def recv(self) -> Any:  # noqa: ANN401
        raise NotImplementedError("the follower is called by send")

    def close(self) -> None:
        pass


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


# ---------------------------------------------------------------------------------------------- one process
def test_follower_replays_snapshots_restores_and_spills(model: torch.nn.Module) -> None:
    follower = Follower(model)
    eng, out = workload(LockstepModel(model, DirectChannel(follower)))
    assert [r["cached"] for r in out["chat"]] == [0, 512, 768, 0, 768]
    snaps = eng.prefix_cache.snapshots
    assert snaps.num_spills and snaps.num_reloads and snaps.num_evictions and eng.prefix_cache.num_evicted_blocks
    assert out["preemptions"] > 0
    assert_mirrors(eng, follower.mirror)


def test_a_follower_that_skips_a_restore_or_loses_a_snapshot_is_caught(model: torch.nn.Module,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above fail for a follower that restores zeros instead of its snapshot, and a follower whose
    snapshot keys differ from rank 0's stops at the next check."""
    follower = Follower(model)
    monkeypatch.setattr(StoreMirror, "_device_state", lambda self, key: torch.zeros_like(self.store.lightning[:, 0]))
    eng, out = workload(LockstepModel(model, DirectChannel(follower)), turns=2, full=False)
    assert [r["cached"] for r in out["chat"]] == [0, 512]
    with pytest.raises(AssertionError):
        assert_mirrors(eng, follower.mirror)
    follower.mirror.snapshots.drop(follower.mirror.snapshots.tiers()[0][0])  # a snapshot rank 0 still has
    with pytest.raises(OutOfLockstep, match="differ"):
        eng.model.check_mirror(eng.prefix_cache.snapshots)


def test_an_operation_that_cannot_apply_stops_the_follower(model: torch.nn.Module) -> None:
    mirror = StoreMirror(model.new_store(2, num_kv_blocks=32, kv_block_size=PAGE))
    mirror.replay([("allocate", 0)])
    with pytest.raises(OutOfLockstep, match="allocated slot 1, rank 0's slot 0"):
        mirror.replay([("allocate", 0)])
    with pytest.raises(OutOfLockstep, match="cannot replay rank 0's attach"):  # a snapshot it does not have
        mirror.replay([("free", 1), ("allocate", 1), ("attach", 1, 0, [], b"key")])


# ---------------------------------------------------------------------------------------------- 2 processes
def _rank(ckpt: Path, tp: int, ep: int, out_dir: Path, skip_restore: bool) -> None:
    torch.set_num_threads(1)  # 2 processes on 2 cores
    init_distributed("gloo", timeout_s=120)  # a collective that never pairs up fails the test instead of hanging
    model, channel = join_world(WorldSpec(str(ckpt), tp=tp, ep=ep, dtype=torch.float64))
    if torch.distributed.get_rank() != 0:
        if skip_restore:
            StoreMirror._device_state = lambda self, key: torch.zeros_like(self.store.lightning[:, 0])
        follow(model, channel)  # raises (and fails the test) if the bookkeeping differs at check_mirror
        return
    lockstep = LockstepModel(model, channel)
    try:
        eng, on = workload(lockstep, turns=2, full=False) if skip_restore else workload(lockstep)
        lockstep.check_mirror(eng.prefix_cache.snapshots)
        stats = eng.stats().prefix_cache
        torch.save({"on": on, "evicted": (stats.evicted_blocks, stats.evicted_snapshots)}, out_dir / "leader.pt")
    finally:
        lockstep.shutdown()


@pytest.fixture(scope="module")
def fp64(tmp_path_factory: pytest.TempPathFactory, cfg: MiniMaxConfig) -> tuple[Path, dict]:
    """An fp64 checkpoint, and the workload's results on one process with caching off. (Sharded fp64 models
    give the tokens of one process, test_parallel_serving.py: their sums differ by ~1e-15 relative.)"""
    from conftest import make_model

    model = make_model(cfg)
    ckpt = tmp_path_factory.mktemp("prefix-tp") / "ckpt"
    model.save_pretrained(ckpt)
    return ckpt, workload(model, caching=False)[1]


@pytest.mark.parametrize(("tp", "ep"), [(2, 1), (1, 2), (2, 2)])
def test_sharded_caching_matches_caching_off(fp64: tuple[Path, dict], tmp_path: Path, tp: int, ep: int) -> None:
    ckpt, off = fp64
    spawn(_rank, 2, (ckpt, tp, ep, tmp_path, False), start_method="fork")  # fork: starts in milliseconds
    result = torch.load(tmp_path / "leader.pt")
    on = result["on"]
    assert [r["cached"] for r in on["chat"]] == [0, 512, 768, 0, 768]
    assert on["preemptions"] > 0 and min(result["evicted"]) > 0
    assert_same(on, off)


def test_sharded_follower_that_skips_the_restore_is_caught(fp64: tuple[Path, dict], tmp_path: Path) -> None:
    """tp=2: the follower holds half of every lightning layer's heads; restoring zeros there instead of its
    snapshot moves rank 0's logprobs by far more than the tolerance of the comparison above."""
    ckpt, off = fp64
    spawn(_rank, 2, (ckpt, 2, 1, tmp_path, True), start_method="fork")
    on = torch.load(tmp_path / "leader.pt")["on"]["chat"]
    assert on[1]["cached"] == 512
    assert max(abs(x - y) for x, y in zip(on[1]["logprobs"], off["chat"][1]["logprobs"])) > 1e6 * LOGPROB_TOL
