"""Sharded loading: each rank builds its part of the model on the meta device, allocates only that part, and
reads from the safetensors shards only the tensors and slices it owns (`get_slice`: the bytes of other ranks'
heads and experts are never read; with an index file, shards holding nothing of ours are never opened).

Accepts the same checkpoint names as weights.py (original and transformers v5, model/checkpoint_names.py) through
the same reading loop and checks (checkpoint_reader.py: unexpected / missing / duplicated tensors, floating
dtypes), with shapes checked against the FULL config.
"""

from __future__ import annotations

from pathlib import Path

import torch

from minimax01.checkpoint_reader import LoadStats, Read, read_checkpoint, shard_files
from minimax01.config import MiniMaxConfig
from minimax01.errors import CheckpointError
from minimax01.model.checkpoint_names import split_expert_name, v5_names
from minimax01.model.model import MiniMaxLM
from minimax01.parallel.group import ParallelGroups, init_distributed, local_device, new_groups
from minimax01.parallel.shard import Ownership, ownership, param_index, param_parts, shard_
from minimax01.weights import check_load_format, dummy_weights_


def sharded_targets(model: MiniMaxLM, own: Ownership) -> tuple[dict[str, Read], set[str], set[str]]:
    """(checkpoint name -> Read for the names this rank owns, original names it must fill, every name a full
    checkpoint may hold). `model` is the already sharded model."""
    config = model.config
    with torch.device("meta"):
        full = MiniMaxLM(config)  # full shapes and global expert names, no memory
    full_state, full_params = full.state_dict(), dict(full.named_parameters())
    local_state, local_params = model.state_dict(), dict(model.named_parameters())
    targets: dict[str, Read] = {}
    for name, t in full_state.items():
        index = param_index(name, config, own)
        if index is None or (config.tie_word_embeddings and name == "lm_head.weight"):
            continue
        expert = split_expert_name(name)  # the sharded model numbers its experts from 0
        local = f"{expert[0]}.{expert[1] - own.experts[0]}.{expert[2]}" if expert else name
        targets[name] = Read(local_state[local], tuple(t.shape), [name], [index])
    required = set(targets)
    v5 = v5_names(config)
    for name, stacked in v5.items():
        targets[name] = Read(local_params[stacked.param].data, tuple(full_params[stacked.param].shape),
                             [k for k in stacked.covers if k in required],
                             param_parts(stacked.param, config, own), cat_dim=1)
    return targets, required, set(full_state) | set(v5)


def load_sharded(model_dir: str | Path, groups: ParallelGroups, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu", progress: bool = True,
                 model_cls: type[MiniMaxLM] = MiniMaxLM, load_format: str = "auto",
                 check_weights: bool = True) -> MiniMaxLM:
    """This rank's part of the checkpoint in `model_dir`, sharded for `groups`, on `device`, as a `model_cls`
    (the network, or the public facade for its 2-D call). `load_format="dummy"`: random weights on each rank
    (weights.dummy_weights_, seeded by rank), nothing read but config.json. `check_weights`: refuse NaN / inf
    (checkpoint_reader.read_checkpoint)."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a Hugging Face checkpoint folder)")
    if not dtype.is_floating_point:
        raise CheckpointError(f"dtype must be a floating type, got {dtype}")
    config = MiniMaxConfig.from_pretrained(directory)
    own = ownership(config, groups.layout)  # ConfigError before anything is allocated
    dummy = check_load_format(load_format) == "dummy"
    if not dummy:
        shard_files(directory)  # fail on a missing shard before allocating anything
    with torch.device("meta"):
        model = model_cls(config)
    shard_(model, groups)
    model = model.to(dtype).to_empty(device=device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if dummy:
        model.load_stats = LoadStats()
        return dummy_weights_(model, seed=groups.layout.rank).eval()
    targets, required, known = sharded_targets(model, own)
    model.load_stats = read_checkpoint(directory, targets, known, required, progress, check_weights)
    return model.eval()


def init_parallel_model(model_dir: str | Path, tp: int = 1, ep: int = 1, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device | None = None,
                        model_cls: type[MiniMaxLM] = MiniMaxLM, load_format: str = "auto",
                        check_weights: bool = True) -> MiniMaxLM:
    """What each rank calls: joins the torchrun process group (NCCL on CUDA, gloo on CPU), creates the groups
    for (tp, ep) and loads this rank's shard. Every rank must call it with the same arguments; afterwards every
    rank must run the same steps (same tokens, same BatchInfo) — the collectives pair them up."""
    init_distributed()
    groups = new_groups(tp, ep)
    return load_sharded(model_dir, groups, dtype, local_device() if device is None else device,
                        progress=groups.layout.rank == 0, model_cls=model_cls, load_format=load_format,
                        check_weights=check_weights)
