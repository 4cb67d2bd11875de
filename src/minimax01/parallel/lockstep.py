"""Serving a sharded model: rank 0 runs the normal engine (scheduler, sampling, the HTTP server or the generate
loop) and every other rank mirrors its model calls.

Rank 0 calls the model through `LockstepModel`. Before each `forward_step` it broadcasts one message: the
StateStore's allocate() / free() calls since the previous step (`StateStore.op_log`), the step's tokens and its
BatchInfo lists. Then it runs its shard of the model. The other ranks run `follow(model, group)`. They replay the
calls on their own store (slot and KV-block allocation is deterministic, so the ids agree) and run the same
forward_step, so the collectives inside the sharded model pair up with rank 0's. After the last all-reduce the
hidden states are replicated and lm_head is not sharded (shard.py), so rank 0 has the full logits: sampling
happens there only, and the followers skip the lm_head.

Messages travel on a gloo group of their own, on the CPU even when the model runs on NCCL. Its timeout is a year:
a follower waits in it for as long as the server is idle (the default group's timeout would end an idle
server). A dead rank 0 still ends the wait, because gloo reports the closed connection at once.

Launch (`run_sharded`): under torchrun (RANK / WORLD_SIZE set, e.g. several nodes) every process joins that
world. Otherwise the calling process becomes rank 0 and starts the others itself: world = lcm(tp, ep) local
processes, rank r on cuda:r (NCCL), or gloo processes on the CPU.

Stopping: rank 0 sends the shutdown message when its leader function returns or raises. The server returns on
SIGINT; on SIGTERM (which uvicorn re-raises once it has stopped serving) rank 0 raises SystemExit(143) and
cleans up the same way. Followers ignore SIGINT: Ctrl-C in a terminal reaches the whole process group, and
rank 0 alone handles it. Failures leave no rank waiting: an error ends a follower, and rank 0 then stops (its
collectives fail, the watcher of the processes it started sends it SIGTERM, or torchrun ends the world);
after a failed step rank 0 runs no further step, since the ranks may have stopped at different collectives.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import wait
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minimax01.cache import BatchInfo, StateStore
from minimax01.config import MiniMaxConfig
from minimax01.errors import ConfigError
from minimax01.model.model import MiniMaxForCausalLM, MiniMaxModel
from minimax01.parallel.group import Layout, init_distributed
from minimax01.parallel.launch import _entry, free_port, rank_env
from minimax01.parallel.loading import init_parallel_model
from minimax01.parallel.shard import ownership

log = logging.getLogger("minimax01.parallel")
T = TypeVar("T")
_MESSAGE_TIMEOUT = timedelta(days=365)
# Followers exit within a second of the shutdown message, or of rank 0 closing the group (an error on rank 0);
# one still loading its shard when rank 0 fails is terminated after this.
_STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class WorldSpec:
    """What every rank needs to load its shard (picklable: spawned followers receive it)."""

    model_dir: str
    tp: int = 1  # attention tensor-parallel degree
    ep: int = 1  # expert groups
    dtype: torch.dtype = torch.bfloat16
    device: str = "cpu"  # "cpu" (gloo) or "cuda" (NCCL; rank r uses cuda:LOCAL_RANK)
    quantize: str | None = None  # applied to each rank's shard after loading (quant.quantize_)

    @property
    def world(self) -> int:
        """Processes started when not under torchrun: the smallest world both degrees divide."""
        return math.lcm(self.tp, self.ep)

    def check(self, world: int) -> None:
        """ConfigError, before any process starts, when (tp, ep) cannot shard the checkpoint over `world`."""
        for name in ("tp", "ep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        ownership(MiniMaxConfig.from_pretrained(self.model_dir), Layout(world, 0, self.tp, self.ep))


@dataclass
class _NewStore:
    max_seqs: int
    kwargs: dict[str, Any]


@dataclass
class _Step:
    ops: list[tuple[str, int]]  # StateStore.op_log since the previous step
    tokens: list[int]  # [T]
    slots: list[int]
    start_pos: list[int]
    num_new: list[int]


_Message = _NewStore | _Step | None  # None: shut down


def launched_by_torchrun() -> bool:
    """True when this process is one rank of a world described by the environment (torchrun and the like)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def message_group() -> dist.ProcessGroup:
    """The gloo group the messages travel on. Collective: every rank creates it, after the same groups."""
    return dist.new_group(backend="gloo", timeout=_MESSAGE_TIMEOUT)


def _broadcast(message: _Message, group: dist.ProcessGroup) -> _Message:
    box = [message]
    dist.broadcast_object_list(box, src=0, group=group)  # ignored on the receivers, filled in
    return box[0]


class LockstepModel:
    """Rank 0's model: what LLMEngine and generate() use of a model (config, model, device, dtype, new_store,
    forward_step), with every new store and every step sent to the followers first. Thread-safe: a step and the
    shutdown message never interleave on the group. No 2-D __call__: it would run steps the followers miss."""

    def __init__(self, model: MiniMaxForCausalLM, group: dist.ProcessGroup) -> None:
        self.inner = model
        self.group = group
        self._store: StateStore | None = None  # the one store the followers mirror
        self._lock = threading.Lock()
        self._closed = False
        self._failed: str | None = None  # the error of a step that failed: the ranks are out of step

    @property
    def config(self) -> MiniMaxConfig:
        return self.inner.config

    @property
    def model(self) -> MiniMaxModel:
        return self.inner.model

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def new_store(self, max_seqs: int, **kw: Any) -> StateStore:
        """A store on every rank; it replaces the previous one (one engine at a time)."""
        with self._lock:
            self._check_open()
            _broadcast(_NewStore(max_seqs, dict(kw)), self.group)
            store = self.inner.new_store(max_seqs, **kw)
            store.op_log = []
            self._store = store
            return store

    def forward_step(self, tokens: torch.Tensor, batch: BatchInfo, store: StateStore,
                     logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """MiniMaxForCausalLM.forward_step on every rank; returns rank 0's logits (float32 [rows, vocab])."""
        with self._lock:
            self._check_open()
            if store is not self._store:
                raise ValueError("forward_step needs the store of the last new_store() call: the followers "
                                 "hold a copy of that one only")
            ops, store.op_log = store.op_log, []
            _broadcast(_Step(ops, tokens.tolist(), list(batch.slots), list(batch.start_pos), list(batch.num_new)),
                       self.group)
            try:
                return self.inner.forward_step(tokens, batch, store, logits_index)
            except BaseException as e:
                # The followers may have stopped elsewhere in the step (or still wait in a collective): every
                # later step could pair collectives wrongly, so none is run.
                self._failed = f"{type(e).__name__}: {e}"
                raise

    def shutdown(self, timeout: float = 30.0) -> None:
        """Sends the shutdown message (once), after the step in flight. Gives up when that step has not finished
        after `timeout` seconds (stuck in a collective), and after a failed step, whose followers may never
        receive again (a broadcast waits for every receiver): the caller then has to stop the processes
        (destroying the process group ends their wait)."""
        if not self._lock.acquire(timeout=timeout):
            log.warning("a model step is still running after %.0f s; not sending the shutdown message", timeout)
            return
        try:
            if not self._closed and self._failed is None:
                _broadcast(None, self.group)
            self._closed = True
        except RuntimeError as e:  # a follower is gone already (gloo: connection closed by peer)
            log.warning("could not send the shutdown message to the followers: %s", e)
        finally:
            self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the follower ranks have been shut down")
        if self._failed is not None:
            raise RuntimeError(f"a model step failed ({self._failed}); the ranks are out of step: restart")


def _replay(store: StateStore, ops: list[tuple[str, int]]) -> None:
    for op, slot in ops:
        if op == "free":
            store.free(slot)
        elif (got := store.allocate()) != slot:
            raise RuntimeError(f"rank {dist.get_rank()} is out of lockstep: its store allocated slot {got}, "
                               f"rank 0's slot {slot}")


def follow(model: MiniMaxForCausalLM, group: dist.ProcessGroup) -> int:
    """A follower's loop: mirrors rank 0's stores and steps until the shutdown message. Returns the number of
    steps run."""
    store: StateStore | None = None
    no_logits = torch.zeros(0, dtype=torch.long, device=model.device)  # rank 0 alone samples
    steps = 0
    while (message := _broadcast(None, group)) is not None:
        if isinstance(message, _NewStore):
            store = model.new_store(message.max_seqs, **message.kwargs)
            continue
        assert store is not None, "rank 0 sends a store before its first step"
        _replay(store, message.ops)
        batch = BatchInfo(message.slots, message.start_pos, message.num_new, device=model.device)
        tokens = torch.tensor(message.tokens, dtype=torch.long, device=model.device)
        # An error propagates and ends this process: carrying on after a step that stopped part-way would pair
        # this rank's next collectives with the wrong ones of rank 0. Rank 0 then stops (run_sharded's watcher,
        # torchrun, or its own collectives failing).
        model.forward_step(tokens, batch, store, logits_index=no_logits)
        steps += 1
    return steps


def join_world(spec: WorldSpec) -> tuple[MiniMaxForCausalLM, dist.ProcessGroup]:
    """Joins the world of the environment and loads this rank's shard. Collective (every rank, same spec)."""
    init_distributed("gloo" if spec.device == "cpu" else "nccl")
    if spec.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # the ranks of a host share its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    model = init_parallel_model(spec.model_dir, spec.tp, spec.ep, spec.dtype,
                                "cpu" if spec.device == "cpu" else None)
    if spec.quantize:
        from minimax01.quant import quantize_

        quantize_(model, spec.quantize)
    return model, message_group()


class _Terminated(SystemExit):
    """SIGTERM on rank 0, as an exception: the finally clauses up the stack (the engine thread's stop, the
    shutdown message, stopping the followers) run before the process exits with 128 + SIGTERM."""


def _raise_terminated(signum: int, _frame: object) -> None:
    raise _Terminated(128 + signum)


def _lead(model: MiniMaxForCausalLM, group: dist.ProcessGroup, leader: Callable[[LockstepModel], T]) -> T:
    lockstep = LockstepModel(model, group)
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    # uvicorn handles SIGTERM itself while it serves, then re-raises it: this handler gets it then.
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        return leader(lockstep)
    finally:
        lockstep.shutdown()
        if main:
            signal.signal(signal.SIGTERM, previous)


def _run_rank(spec: WorldSpec, leader: Callable[[LockstepModel], T]) -> T | None:
    try:
        model, group = join_world(spec)
        if dist.get_rank() == 0:
            return _lead(model, group, leader)
        follow(model, group)
        return None
    finally:
        if dist.is_initialized():  # also ends the followers' wait when rank 0 fails before the shutdown message
            dist.destroy_process_group()


def _follower_signals(sigterm: bool) -> None:
    """Ctrl-C in a terminal reaches the whole process group, and torchrun sends SIGTERM to every rank at once:
    rank 0 alone handles them and ends the followers with the shutdown message (a follower whose rank 0 is gone
    exits anyway: gloo reports the closed connection). The processes run_sharded starts keep SIGTERM: it is
    how run_sharded terminates one that does not exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _follower_main(spec: WorldSpec) -> None:
    """A follower process started by run_sharded (torchrun's environment is set by launch._entry)."""
    _follower_signals(sigterm=False)
    model, group = join_world(spec)
    follow(model, group)


def _watch(followers: list[mp.Process], stopping: threading.Event) -> None:
    """Stops rank 0 (SIGTERM: the server shuts down) when a follower dies: its steps could never finish."""
    pending = {p.sentinel: p for p in followers}
    while pending:
        for sentinel in wait(list(pending)):
            p = pending.pop(sentinel)
            if stopping.is_set():
                return
            if p.exitcode != 0:
                log.error("%s exited with code %s; stopping", p.name, p.exitcode)
                os.kill(os.getpid(), signal.SIGTERM)
                return


def _stop(followers: list[mp.Process], stopping: threading.Event) -> None:
    stopping.set()
    deadline = time.monotonic() + _STOP_GRACE_S
    for p in followers:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in followers:
        if p.is_alive():
            log.warning("%s has not exited %.0f s after rank 0; terminating it", p.name, _STOP_GRACE_S)
            p.terminate()
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


def run_sharded(spec: WorldSpec, leader: Callable[[LockstepModel], T]) -> T | None:
    """Runs `leader(model)` on rank 0 of a sharded world while the other ranks follow its steps. Returns the
    leader's result on rank 0, None on a follower.

    Under torchrun every process calls this with the same spec. Otherwise the caller becomes rank 0 and starts
    `spec.world - 1` local follower processes (spawned: they re-import, never inherit CUDA state), which exit
    after the leader (a SIGTERM on rank 0 ends the leader with SystemExit(143) after the same clean-up)."""
    if launched_by_torchrun():
        spec.check(int(os.environ["WORLD_SIZE"]))
        if os.environ["RANK"] != "0" and threading.current_thread() is threading.main_thread():
            _follower_signals(sigterm=True)
        return _run_rank(spec, leader)
    spec.check(spec.world)
    port = free_port()
    context = mp.get_context("spawn")
    followers = [context.Process(target=_entry, args=(rank, _follower_main, spec.world, port, (spec,)),
                                 name=f"minimax01 rank {rank}", daemon=True) for rank in range(1, spec.world)]
    for p in followers:
        p.start()
    stopping = threading.Event()
    threading.Thread(target=_watch, args=(followers, stopping), name="minimax01-followers", daemon=True).start()
    env = rank_env(0, spec.world, port)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return _run_rank(spec, leader)
    finally:
        for k, v in saved.items():  # this process is rank 0 only for this call
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
        _stop(followers, stopping)
