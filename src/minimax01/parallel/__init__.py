"""Tensor and expert parallelism over torch.distributed (NCCL on GPUs, gloo on CPU).

- group.py: Layout (who owns which heads / experts), process groups from torchrun's environment.
- shard.py: `shard_(model, groups)`, the in-place sharding transform of a built model.
- loading.py: sharded loading (each rank reads only its slices) and `init_parallel_model`, what rank code calls.
- launch.py / worker.py: starting workers (torchrun or `spawn`), the torchrun entry point.
- lockstep.py: serving a sharded model (rank 0 runs the engine, the other ranks mirror its steps).
- step_channel.py: how rank 0's step messages reach the other ranks (shared memory on one host, else gloo).
- world.py: starting and stopping the ranks of a sharded server (`run_sharded`, torchrun or local processes).
- plan.py: memory / communication model of the real model (`minimax01 plan`).
"""

from minimax01.parallel.group import Layout, ParallelGroups, init_distributed, new_groups
from minimax01.parallel.loading import init_parallel_model, load_sharded
from minimax01.parallel.shard import ownership, shard_

__all__ = ["Layout", "ParallelGroups", "init_distributed", "new_groups", "init_parallel_model", "load_sharded",
           "ownership", "shard_"]
