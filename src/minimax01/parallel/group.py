"""Who owns what, and the process groups that connect the owners.

Layout of `world` ranks (torchrun's RANK / WORLD_SIZE), attention degree `tp`, expert groups `ep`:
- Attention is tensor-parallel over blocks of `tp` consecutive ranks (`tp_rank = rank % tp`); with
  `tp < world` each block holds a full copy of the attention (replicated over `world // tp` blocks).
- The MoE of every layer is spread over ALL ranks: experts in `ep` groups of `world // ep` consecutive ranks
  (`ep_rank = rank // moe_tp`), and inside a group every expert's intermediate dim is split `moe_tp = world // ep`
  ways (`moe_tp_rank = rank % moe_tp`). Hidden states are replicated on every rank after attention, so each rank
  computes the contribution of (its experts, its slice of them) for every token and one all-reduce over the world
  sums them.
So `tp=world, ep=1` is pure tensor parallelism, `tp=world, ep=world` is vLLM's expert parallelism (attention TP,
whole experts per rank), `tp=1, ep=world` is expert parallelism with replicated attention, and `world = tp * ep`
(e.g. tp=8 inside a node, ep=2 across nodes) is the 2-D mesh in which the expert split follows the tp blocks.
Every rank holds 1/world of the expert weights (95 % of Text-01's parameters) whatever the choice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from minimax01.errors import ConfigError

Reduce = Callable[[torch.Tensor], torch.Tensor]


def split_range(n: int, parts: int, index: int, what: str) -> tuple[int, int]:
    """[lo, hi) of part `index` when `n` items are cut into `parts` equal contiguous parts."""
    if n % parts:
        raise ConfigError(f"{what} ({n}) must be divisible by {parts}")
    size = n // parts
    return index * size, (index + 1) * size


@dataclass(frozen=True)
class Layout:
    """Pure ownership arithmetic over (world, rank, tp, ep); no process groups (usable on the meta device,
    in `plan.py` and in tests)."""

    world: int = 1
    rank: int = 0
    tp: int = 1  # attention tensor-parallel degree (heads split tp ways)
    ep: int = 1  # expert groups (experts split ep ways)

    def __post_init__(self) -> None:
        for name in ("world", "tp", "ep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.rank < self.world:
            raise ConfigError(f"rank {self.rank} outside a world of {self.world}")
        for name in ("tp", "ep"):
            if self.world % getattr(self, name):
                raise ConfigError(f"{name}={getattr(self, name)} must divide the number of processes ({self.world})")

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def moe_tp(self) -> int:
        """Ways each expert's intermediate dim is split."""
        return self.world // self.ep

    @property
    def ep_rank(self) -> int:
        return self.rank // self.moe_tp

    @property
    def moe_tp_rank(self) -> int:
        return self.rank % self.moe_tp

    def tp_blocks(self) -> list[list[int]]:
        """The ranks of every attention tensor-parallel block."""
        return [list(range(b, b + self.tp)) for b in range(0, self.world, self.tp)]


def _all_reduce(group: dist.ProcessGroup | None) -> Reduce:
    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, group=group)
        return t

    return reduce


def _all_reduce_max(group: dist.ProcessGroup | None) -> Reduce:
    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        return t

    return reduce


@dataclass
class ParallelGroups:
    """A Layout plus the collectives shard_ installs. `tp_reduce` sums over this rank's attention block,
    `moe_reduce` over all ranks; both are None where the group has one member (no communication).
    `tp_max` / `moe_tp_max` take the element-wise maximum over the ranks that split the input dim of the
    row-parallel weights (attention out projections over the attention block; the experts' w2 over the ranks of
    an expert group): int8 quantization after sharding uses them so that a row's scale is that of the whole row,
    whatever the layout (quant.quantize_weight)."""

    layout: Layout
    tp_reduce: Reduce | None = None
    moe_reduce: Reduce | None = None
    tp_max: Reduce | None = None
    moe_tp_max: Reduce | None = None

    @classmethod
    def single(cls) -> "ParallelGroups":
        return cls(Layout())


def init_distributed(backend: str | None = None, timeout_s: float = 600.0) -> None:
    """Joins the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
    NCCL when CUDA is available, else gloo. No-op when already initialised."""
    if dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"environment variables {missing} are not set: start the workers with torchrun "
                          f"(or minimax01.parallel.launch.spawn)")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        # Bind before init so NCCL communicators are created on this rank's GPU.
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def local_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def new_groups(tp: int, ep: int) -> ParallelGroups:
    """Creates the attention blocks for (tp, ep) over the initialised world. Collective: every rank must call it
    with the same arguments (torch requires every rank to take part in creating every subgroup)."""
    if not dist.is_initialized():
        raise ConfigError("torch.distributed is not initialised: call init_distributed() first")
    layout = Layout(dist.get_world_size(), dist.get_rank(), tp, ep)
    tp_group = None  # None = the default (world) group
    if 1 < tp < layout.world:
        for ranks in layout.tp_blocks():
            group = dist.new_group(ranks)
            if layout.rank in ranks:
                tp_group = group
    moe_tp_group = None  # the ranks that split the same experts' intermediate dim (an expert group)
    if 1 < layout.moe_tp < layout.world:
        for first in range(0, layout.world, layout.moe_tp):
            ranks = list(range(first, first + layout.moe_tp))
            group = dist.new_group(ranks)
            if layout.rank in ranks:
                moe_tp_group = group
    return ParallelGroups(layout,
                          tp_reduce=_all_reduce(tp_group) if tp > 1 else None,
                          moe_reduce=_all_reduce(None) if layout.world > 1 else None,
                          tp_max=_all_reduce_max(tp_group) if tp > 1 else None,
                          moe_tp_max=_all_reduce_max(moe_tp_group) if layout.moe_tp > 1 else None)
