"""Starting and stopping a sharded world: every rank joins the process group, loads its shard, wraps it in the
StepModel it serves with (a CUDA-graph runner on GPUs) and opens the step channel; rank 0 then runs the caller's
`leader` over a `LockstepModel` while the other ranks `follow` it (parallel/lockstep.py).

Launch (`run_sharded`): under torchrun (RANK / WORLD_SIZE set, e.g. several nodes) every process joins that
world. Otherwise the calling process becomes rank 0 and starts the others itself: world = lcm(tp, ep) local
processes, rank r on cuda:r (NCCL), or gloo processes on the CPU.

Stopping: rank 0 sends the shutdown message when its leader function returns or raises. The server returns on
SIGINT and SIGTERM (after its bounded shutdown); a SIGTERM at any other time (while loading, during
`generate`) makes rank 0 raise SystemExit(143) and clean up the same way. Followers ignore SIGINT: Ctrl-C in a terminal reaches the whole process group, and
rank 0 alone handles it. Failures leave no rank waiting: an error ends a follower, and rank 0 then stops (its
collectives fail, the watcher of the processes it started sends it SIGTERM, or torchrun ends the world); a
follower whose rank 0 is gone stops waiting for messages (the step channel notices); after a failed step rank 0
runs no further step, since the ranks may have stopped at different collectives.
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
from multiprocessing.connection import wait
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minimax01.config import MiniMaxConfig
from minimax01.engine.cuda_graph import DecodeGraphRunner, graphs_enabled
from minimax01.engine.protocol import StepModel
from minimax01.errors import ConfigError
from minimax01.parallel.group import Layout, init_distributed
from minimax01.parallel.launch import _entry, free_port, rank_env
from minimax01.parallel.loading import init_parallel_model
from minimax01.parallel.lockstep import LockstepModel, follow
from minimax01.parallel.shard import ownership
from minimax01.parallel.step_channel import Channel, message_group, open_channel

log = logging.getLogger("minimax01.parallel")
T = TypeVar("T")
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
    load_format: str = "auto"  # "dummy": random weights drawn on each rank, no tensor read (benchmarks)
    check_weights: bool = True  # refuse NaN / inf weights while loading

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


def launched_by_torchrun() -> bool:
    """True when this process is one rank of a world described by the environment (torchrun and the like)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join_world(spec: WorldSpec) -> tuple[StepModel, Channel]:
    """Joins the world of the environment, loads this rank's shard and opens the step channel. Returns the
    StepModel this rank serves with (the shard, in a DecodeGraphRunner where CUDA graphs are on: see
    `graphs_enabled`) and the channel. Collective (every rank, same spec)."""
    init_distributed("gloo" if spec.device == "cpu" else "nccl")
    if spec.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # the ranks of a host share its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    model = init_parallel_model(spec.model_dir, spec.tp, spec.ep, spec.dtype,
                                "cpu" if spec.device == "cpu" else None, load_format=spec.load_format,
                                check_weights=spec.check_weights)
    if spec.quantize:
        from minimax01.quant import quantize_

        quantize_(model, spec.quantize)
    # Every rank decides alike (same device type, dtype, kernels and MINIMAX01_CUDA_GRAPHS).
    served: StepModel = DecodeGraphRunner(model, capture_at_start=True) if graphs_enabled(model) else model
    return served, open_channel(message_group())


class _Terminated(SystemExit):
    """SIGTERM on rank 0, as an exception: the finally clauses up the stack (the engine thread's stop, the
    shutdown message, stopping the followers) run before the process exits with 128 + SIGTERM."""


def _raise_terminated(signum: int, _frame: object) -> None:
    raise _Terminated(128 + signum)


def _lead(model: StepModel, channel: Channel, leader: Callable[[LockstepModel], T]) -> T:
    lockstep = LockstepModel(model, channel)
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    # The server handles SIGTERM itself while it serves (and returns); this handler covers the rest of the time.
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        return leader(lockstep)
    finally:
        lockstep.shutdown()
        if main:
            signal.signal(signal.SIGTERM, previous)


def _release(model: StepModel) -> None:
    """Frees what must go before the process group is destroyed: CUDA graphs with captured NCCL collectives."""
    if isinstance(model, DecodeGraphRunner):
        model.release()


def _run_rank(spec: WorldSpec, leader: Callable[[LockstepModel], T]) -> T | None:
    model: StepModel | None = None
    try:
        model, channel = join_world(spec)
        if dist.get_rank() == 0:
            return _lead(model, channel, leader)
        follow(model, channel)
        return None
    finally:
        if model is not None:
            _release(model)
        if dist.is_initialized():  # also ends the followers' wait when rank 0 fails before the shutdown message
            dist.destroy_process_group()


def _follower_signals(sigterm: bool) -> None:
    """Ctrl-C in a terminal reaches the whole process group, and torchrun sends SIGTERM to every rank at once:
    rank 0 alone handles them and ends the followers with the shutdown message (a follower whose rank 0 is gone
    exits anyway: its step channel notices). The processes run_sharded starts keep SIGTERM: it is
    how run_sharded terminates one that does not exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _follower_main(spec: WorldSpec) -> None:
    """A follower process started by run_sharded (torchrun's environment is set by launch._entry)."""
    _follower_signals(sigterm=False)
    model, channel = join_world(spec)
    try:
        follow(model, channel)
    finally:
        _release(model)  # launch._entry destroys the process group next


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
