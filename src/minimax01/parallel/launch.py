"""Starting the workers. Rank code is the same under torchrun and under `spawn`: both set torchrun's environment
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and the rank calls
`init_parallel_model(...)`, which joins the group from that environment."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free at the time of the call (for MASTER_PORT of a single-host group)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """torchrun's environment for `rank` of a `world` of processes on this host, rendezvous on `port`."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, args: Sequence[Any]) -> None:
    os.environ.update(rank_env(rank, world, port))
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable[..., Any], nprocs: int, args: Sequence[Any] = (), start_method: str = "spawn") -> None:
    """Runs `fn(*args)` in `nprocs` local processes with the torchrun environment set; raises if any of them
    fails. `start_method="fork"` starts in milliseconds (CPU tests) but must not be used once CUDA is
    initialised in the parent."""
    mp.start_processes(_entry, args=(fn, nprocs, free_port(), tuple(args)), nprocs=nprocs,
                       start_method=start_method)


def torchrun_argv(nprocs: int, module: str, module_args: Sequence[str] = (), nnodes: int = 1,
                  rdzv_endpoint: str | None = None) -> list[str]:
    """The command that starts `python -m module module_args...` on `nprocs` GPUs of this node through torchrun
    (`torch.distributed.run`); for several nodes give `nnodes` and a shared `rdzv_endpoint` host:port and run
    the same command on every node."""
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}"]
    if nnodes == 1 and rdzv_endpoint is None:
        argv.append("--standalone")
    else:
        argv += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    return argv + ["-m", module, *module_args]
