"""Sharded loading: each rank builds its part of the model on the meta device, allocates only that part, and
reads from the safetensors shards only the tensors and slices it owns (`get_slice`: the bytes of other ranks'
heads and experts are never read; with an index file, shards holding nothing of ours are never opened).

Accepts the same checkpoint names as weights.py (original and transformers-v5, SPEC §2.2) with the same
checks (unexpected / missing / duplicated tensors, shapes against the FULL config, floating dtypes).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from minimax01.config import MiniMaxConfig
from minimax01.errors import CheckpointError
from minimax01.model.model import MiniMaxForCausalLM
from minimax01.parallel.group import ParallelGroups, init_distributed, local_device, new_groups
from minimax01.parallel.shard import Index, Ownership, ownership, param_index, shard_
from minimax01.weights import _DERIVED_BUFFERS, _FLOAT_DTYPES, _shard_files, check_complete

_EXPERT_NAME = re.compile(r"^(model\.layers\.\d+\.block_sparse_moe\.experts\.)(\d+)(\..+)$")
_ALL = slice(None)


@dataclass
class Read:
    """How one checkpoint tensor fills this rank's part: the slices `parts` of the full tensor, concatenated
    along `cat_dim`, are copied into `dest`."""

    dest: torch.Tensor  # a local parameter or a view of one
    full_shape: tuple[int, ...]  # what the checkpoint must hold (the unsharded shape)
    parts: list[Index]
    covers: list[str]  # original names it fills
    cat_dim: int = 0


@dataclass
class LoadStats:
    files_opened: int = 0
    tensors_read: int = 0
    bytes_read: int = 0  # in the checkpoint's dtype
    keys: list[str] = field(default_factory=list)  # checkpoint keys read, in order


def sharded_targets(model: MiniMaxForCausalLM, own: Ownership) -> tuple[dict[str, Read], set[str], set[str]]:
    """(checkpoint name -> Read for the names this rank owns, original names it must fill, every name a full
    checkpoint may hold). `model` is the already sharded model."""
    config = model.config
    with torch.device("meta"):
        full_state = MiniMaxForCausalLM(config).state_dict()  # full shapes and global expert names, no memory
    local_state = model.state_dict()
    (e0, e1), (i0, i1), inter = own.experts, own.inter, config.intermediate_size
    targets: dict[str, Read] = {}
    for name, t in full_state.items():
        index = param_index(name, config, own)
        if index is None or (config.tie_word_embeddings and name == "lm_head.weight"):
            continue
        m = _EXPERT_NAME.match(name)
        local = f"{m.group(1)}{int(m.group(2)) - e0}{m.group(3)}" if m else name  # local expert numbering
        targets[name] = Read(local_state[local], tuple(t.shape), [index], [name])
    required = set(targets)
    known = set(full_state)
    for i, layer in enumerate(model.model.layers):
        prefix, old = f"model.layers.{i}", f"model.layers.{i}.block_sparse_moe"
        experts = layer.block_sparse_moe.experts
        E, H = config.num_local_experts, config.hidden_size
        names = {f"{prefix}.mlp.gate.weight", f"{prefix}.mlp.experts.gate_up_proj",
                 f"{prefix}.mlp.experts.down_proj"}
        known |= names
        targets[f"{prefix}.mlp.gate.weight"] = Read(layer.block_sparse_moe.gate.weight.data, (E, H), [()],
                                                    [f"{old}.gate.weight"])
        mine = range(e0, e1)
        # gate_up_proj [E, 2I, H] = w1 rows then w3 rows: two row slices per expert block, joined along dim 1
        targets[f"{prefix}.mlp.experts.gate_up_proj"] = Read(
            experts.w13.data, (E, 2 * inter, H),
            [(slice(e0, e1), slice(i0, i1)), (slice(e0, e1), slice(inter + i0, inter + i1))],
            [f"{old}.experts.{e}.{w}.weight" for e in mine for w in ("w1", "w3")], cat_dim=1)
        targets[f"{prefix}.mlp.experts.down_proj"] = Read(
            experts.w2.data, (E, H, inter), [(slice(e0, e1), _ALL, slice(i0, i1))],
            [f"{old}.experts.{e}.w2.weight" for e in mine])
    return targets, required, known


def load_sharded_into(model: MiniMaxForCausalLM, directory: str | Path, own: Ownership,
                      progress: bool = True) -> LoadStats:
    """Fills the allocated sharded `model` from a checkpoint directory, reading only owned slices."""
    directory = Path(directory)
    targets, required, known = sharded_targets(model, own)
    stats = LoadStats()
    filled: dict[str, Path] = {}
    unexpected: list[str] = []
    files = _shard_files(directory)
    for path, promised in tqdm(files.items(), desc="Loading shards", unit="shard", file=sys.stderr,
                               disable=not progress):
        if promised is not None:
            unexpected += [f"{k} (in {path.name})" for k in promised
                           if k not in known and not _DERIVED_BUFFERS.search(k)]
            if not any(k in targets for k in promised):
                continue  # nothing of ours in this shard: not even opened
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None
        stats.files_opened += 1
        with handle as f:
            keys = set(f.keys())
            for key in promised if promised is not None else sorted(keys):
                if promised is None and key not in known and not _DERIVED_BUFFERS.search(key):
                    unexpected.append(f"{key} (in {path.name})")
                target = targets.get(key)
                if target is None:
                    continue  # another rank's tensor, a derived buffer, or unexpected (reported below)
                if key not in keys:
                    raise CheckpointError(f"{path}: the index lists {key!r} in this shard but the file does not "
                                          f"contain it")
                _read_into(f, path, key, target, filled, stats)
    check_complete(directory, unexpected, required, filled)
    return stats


def _read_into(f, path: Path, key: str, target: Read, filled: dict[str, Path],  # noqa: ANN001 - safe_open handle
               stats: LoadStats) -> None:
    for k in target.covers:
        if k in filled:
            raise CheckpointError(f"{path}: tensor {key!r} is also stored in {filled[k].name}")
    try:
        sl = f.get_slice(key)
        dtype, shape = sl.get_dtype(), tuple(sl.get_shape())
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor {key!r}: {e}") from None
    if dtype not in _FLOAT_DTYPES:
        raise CheckpointError(f"{path}: tensor {key!r} has dtype {dtype}; expected a floating type "
                              f"({', '.join(sorted(_FLOAT_DTYPES))})")
    if shape != target.full_shape:
        raise CheckpointError(f"{path}: tensor {key!r} has shape {list(shape)}, the config expects "
                              f"{list(target.full_shape)}")
    try:
        parts = [sl[index] if index else sl[:] for index in target.parts]
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor {key!r} (truncated file?): {e}") from None
    tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=target.cat_dim)
    with torch.no_grad():
        target.dest.copy_(tensor)
    stats.tensors_read += 1
    stats.bytes_read += sum(p.numel() * p.element_size() for p in parts)
    stats.keys.append(key)
    for k in target.covers:
        filled[k] = path


def load_sharded(model_dir: str | Path, groups: ParallelGroups, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu", progress: bool = True) -> MiniMaxForCausalLM:
    """This rank's part of the checkpoint in `model_dir`, sharded for `groups`, on `device`."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a Hugging Face checkpoint folder)")
    if not dtype.is_floating_point:
        raise CheckpointError(f"dtype must be a floating type, got {dtype}")
    config = MiniMaxConfig.from_pretrained(directory)
    own = ownership(config, groups.layout)  # ConfigError before anything is allocated
    _shard_files(directory)
    with torch.device("meta"):
        model = MiniMaxForCausalLM(config)
    shard_(model, groups)
    model = model.to(dtype).to_empty(device=device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.load_stats = load_sharded_into(model, directory, own, progress)
    return model.eval()


def init_parallel_model(model_dir: str | Path, tp: int = 1, ep: int = 1, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device | None = None) -> MiniMaxForCausalLM:
    """What each rank calls: joins the torchrun process group (NCCL on CUDA, gloo on CPU), creates the groups
    for (tp, ep) and loads this rank's shard. Every rank must call it with the same arguments; afterwards every
    rank must run the same steps (same tokens, same BatchInfo) — the collectives pair them up."""
    init_distributed()
    groups = new_groups(tp, ep)
    return load_sharded(model_dir, groups, dtype, local_device() if device is None else device,
                        progress=groups.layout.rank == 0)
