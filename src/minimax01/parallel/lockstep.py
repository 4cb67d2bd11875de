"""Serving a sharded model: rank 0 runs the normal engine (scheduler, sampling, the HTTP server or the generate
loop) and every other rank mirrors its model calls.

Rank 0 calls the model through `LockstepModel`. Before each step it sends one message on the step channel
(parallel/step_channel.py: shared memory on one host, gloo across hosts): the store and prefix-cache operations
since the previous step (`StateStore.op_log`: slots, KV-block holders, snapshots), the step's tokens and its
BatchInfo lists. Then it runs its shard. The other ranks run `follow(model, channel)`: they replay the
operations on their own store and snapshots (parallel/mirror.py: allocation is deterministic, so the ids agree;
each rank snapshots and restores its own lightning heads) and run the same step, so the collectives inside the
sharded model pair up with rank 0's. `LockstepModel.check_mirror` makes every follower compare its bookkeeping
with rank 0's. After the last all-reduce the hidden states are replicated and lm_head is not
sharded (shard.py), so rank 0 has the full logits: sampling happens there only.

The StepModel under the wrapper is the same kind on every rank (engine/protocol.py): on GPUs a
DecodeGraphRunner over the shard, so decode steps replay CUDA graphs with the NCCL all-reduces captured inside
them; every rank creates its store and captures its graphs on the same message, in the same order.

Launching the processes and stopping them is parallel/world.py's job.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from minimax01.cache import BatchInfo, StateLayout, StateStore
from minimax01.config import MiniMaxConfig
from minimax01.engine.protocol import StepModel
from minimax01.engine.snapshots import SnapshotStore
from minimax01.parallel.mirror import OutOfLockstep, StoreMirror, digest, this_rank
from minimax01.parallel.step_channel import Channel

log = logging.getLogger("minimax01.parallel")


@dataclass
class NewStore:
    max_seqs: int
    num_kv_blocks: int | None
    kv_block_size: int


@dataclass
class Step:
    ops: list[tuple]  # StateStore.op_log since the previous step
    tokens: list[int]  # [T]
    slots: list[int]
    start_pos: list[int]
    num_new: list[int]
    free: tuple[int, int]  # rank 0's free slots and KV blocks after `ops`: a cheap check that the stores agree


@dataclass
class Check:
    ops: list[tuple]  # StateStore.op_log since the previous message
    digest: bytes  # mirror.digest of rank 0's store and snapshots after `ops`


Message = NewStore | Step | Check | None  # None: shut down


class LockstepModel(StepModel):
    """Rank 0's StepModel: `inner` (the StepModel of rank 0's shard) with every new store and every step sent to
    the followers first. Thread-safe: a step and the shutdown message never interleave on the channel. No 2-D
    __call__: it would run steps the followers miss."""

    def __init__(self, inner: StepModel, channel: Channel) -> None:
        self.inner = inner
        self.channel = channel
        self._store: StateStore | None = None  # the one store the followers mirror
        self._lock = threading.Lock()
        self._closed = False
        self._failed: str | None = None  # the error of a step that failed: the ranks are out of step

    @property
    def config(self) -> MiniMaxConfig:
        return self.inner.config

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def state_layout(self) -> StateLayout:
        return self.inner.state_layout

    def new_store(self, max_seqs: int, num_kv_blocks: int | None = None, kv_block_size: int = 64) -> StateStore:
        """A store on every rank; it replaces the previous one (one engine at a time)."""
        with self._lock:
            self._check_open()
            self.channel.send(NewStore(max_seqs, num_kv_blocks, kv_block_size))
            store = self.inner.new_store(max_seqs, num_kv_blocks, kv_block_size)
            store.op_log = []  # from here on: what the followers' stores must replay
            self._store = store
            return store

    def step(self, tokens: torch.Tensor, batch: BatchInfo, store: StateStore,
             logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """The inner step on every rank; returns rank 0's logits (float32 [rows, vocab])."""
        with self._lock:
            self._check_open()
            if store is not self._store:
                raise ValueError("step needs the store of the last new_store() call: the followers hold a copy "
                                 "of that one only")
            ops, store.op_log = store.op_log, []
            self.channel.send(Step(ops, tokens.tolist(), list(batch.slots), list(batch.start_pos),
                                   list(batch.num_new), (store.num_free_slots, store.num_free_blocks)))
            try:
                return self.inner.step(tokens, batch, store, logits_index)
            except BaseException as e:
                # The followers may have stopped elsewhere in the step (or still wait in a collective): every
                # later step could pair collectives wrongly, so none is run.
                self._failed = f"{type(e).__name__}: {e}"
                raise

    def check_mirror(self, snapshots: SnapshotStore | None) -> None:
        """Makes every follower replay the operations so far and compare its slots, KV-block holders and snapshot
        keys with rank 0's (`snapshots`: the prefix cache's, None without one); one that differs stops with an
        error (the ranks are out of step). Cheap (a hash); for tests and diagnosis."""
        with self._lock:
            self._check_open()
            store = self._store
            if store is None:
                raise RuntimeError("no store to check: new_store() first")
            ops, store.op_log = store.op_log, []
            self.channel.send(Check(ops, digest(store, snapshots)))

    def shutdown(self, timeout: float = 30.0) -> None:
        """Sends the shutdown message (once), after the step in flight. Gives up when that step has not finished
        after `timeout` seconds (stuck in a collective), and after a failed step, whose followers may never
        receive again: the caller then has to stop the processes (destroying the process group, or the end of
        rank 0's process, ends their wait)."""
        if not self._lock.acquire(timeout=timeout):
            log.warning("a model step is still running after %.0f s; not sending the shutdown message", timeout)
            return
        try:
            if not self._closed and self._failed is None:
                self.channel.send(None)
            self._closed = True
        except RuntimeError as e:  # a follower is gone already
            log.warning("could not send the shutdown message to the followers: %s", e)
        finally:
            self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the follower ranks have been shut down")
        if self._failed is not None:
            raise RuntimeError(f"a model step failed ({self._failed}); the ranks are out of step: restart")


class Follower:
    """A follower rank's side of the step channel: its store mirror and the steps it runs on `model` (a StepModel
    of the same kind as rank 0's inner one, over this rank's shard)."""

    def __init__(self, model: StepModel) -> None:
        self.model = model
        self.mirror: StoreMirror | None = None
        self.steps = 0
        self._no_logits = torch.zeros(0, dtype=torch.long, device=model.device)  # rank 0 alone samples

    def handle(self, message: NewStore | Step | Check) -> None:
        """Acts on one message of rank 0. An error propagates and should end this process: carrying on after
        a step that stopped part-way would pair this rank's next collectives with the wrong ones of rank 0. Rank
        0 then stops (world.py's watcher, torchrun, or its own collectives failing)."""
        if isinstance(message, NewStore):
            self.mirror = StoreMirror(self.model.new_store(message.max_seqs, message.num_kv_blocks,
                                                           message.kv_block_size))
            return
        mirror = self.mirror
        assert mirror is not None, "rank 0 sends a store before anything else"
        mirror.replay(message.ops)
        if isinstance(message, Check):
            if mirror.digest() != message.digest:
                raise OutOfLockstep(f"{this_rank()}: the store's slots, KV blocks or snapshots differ from "
                                    f"rank 0's")
            return
        store = mirror.store
        if (store.num_free_slots, store.num_free_blocks) != message.free:
            raise OutOfLockstep(f"free slots and KV blocks: {(store.num_free_slots, store.num_free_blocks)} on "
                                f"{this_rank()}, {message.free} on rank 0")
        batch = BatchInfo(message.slots, message.start_pos, message.num_new, device=self.model.device)
        tokens = torch.tensor(message.tokens, dtype=torch.long, device=self.model.device)
        self.model.step(tokens, batch, store, logits_index=self._no_logits)
        self.steps += 1


def follow(model: StepModel, channel: Channel) -> int:
    """A follower's loop: mirrors rank 0's stores and steps on `model` until the shutdown message. Returns the
    number of steps run."""
    follower = Follower(model)
    while (message := channel.recv()) is not None:
        follower.handle(message)
    return follower.steps
