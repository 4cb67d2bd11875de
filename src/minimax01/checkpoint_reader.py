"""Reading a safetensors checkpoint directory into a model: the one loop that single-process loading
(weights.py) and sharded loading (parallel/loading.py) share.

A loader says WHAT to read as one `Read` per checkpoint name it takes (names from model/checkpoint_names.py):
where the tensor goes, which slices of it this process needs and which original names it fills.
`read_checkpoint` does the rest: it finds the shard files (index or single file), opens each memory-mapped (a
shard the index shows holds nothing to read is never opened), checks every tensor's dtype and shape, reads only
the wanted slices (`get_slice`: other slices' bytes stay on disk), copies them in (quantizing on the fly into an
int8 destination) and finally checks that no tensor is missing, unexpected or stored twice. Every problem raises
CheckpointError naming the file and the tensor.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from minimax01.errors import CheckpointError
from minimax01.model.checkpoint_names import DERIVED_BUFFERS, Index
from minimax01.quant import quantize_weight

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_FLOAT_DTYPES = {"BF16", "F16", "F32", "F64"}


@dataclass
class Read:
    """How one checkpoint tensor fills this process's part of the model: the slices `parts` of the (full)
    tensor, concatenated along `cat_dim`, are copied into `dest`."""

    dest: torch.Tensor  # a parameter or a view of one
    full_shape: tuple[int, ...]  # what the checkpoint must hold (the unsharded shape)
    covers: list[str]  # the original names it fills
    parts: list[Index] = field(default_factory=lambda: [()])  # () = the whole tensor
    cat_dim: int = 0
    scale: Read | None = None  # int8 `dest`: where the scales of a float tensor quantized on load go


@dataclass
class LoadStats:
    files_opened: int = 0
    tensors_read: int = 0
    bytes_read: int = 0  # in the checkpoint's dtype
    keys: list[str] = field(default_factory=list)  # checkpoint keys read, in order
    check_seconds: float | None = None  # time spent on the non-finite check (None: skipped)


def shard_files(directory: Path) -> dict[Path, list[str] | None]:
    """Shard file -> the keys the index promises in it (None = no index, read whatever the file holds)."""
    index_path = directory / INDEX_FILE
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({e!r})") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: 'weight_map' must be an object")
        files: dict[Path, list[str]] = {}
        for key, fname in weight_map.items():
            files.setdefault(directory / fname, []).append(key)
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{f}: shard listed in {INDEX_FILE} is missing")
        return dict(files)
    single = directory / SINGLE_FILE
    if single.exists():
        return {single: None}
    raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} found")


def read_checkpoint(directory: Path, targets: Mapping[str, Read], known: Collection[str], required: set[str],
                    progress: bool = True, check_finite: bool = True) -> LoadStats:
    """Copies every checkpoint tensor named in `targets` into its destination. `known`: every name the
    checkpoint may hold (a sharded loader's targets are only its own); `required`: the original names that must
    be filled. `check_finite`: every float tensor is checked for NaN / inf where it was loaded to (one NaN makes
    every completion garbage, silently); with `progress`, its cost goes to stderr. Raises CheckpointError for any
    problem (see the module docstring)."""
    files = shard_files(directory)
    stats = LoadStats(check_seconds=0.0 if check_finite else None)
    filled: dict[str, Path] = {}  # original name -> the file it was read from
    unexpected: list[str] = []

    def unknown(keys: Iterable[str], path: Path) -> list[str]:
        return [f"{k} (in {path.name})" for k in keys if k not in known and not DERIVED_BUFFERS.search(k)]

    for path, promised in tqdm(files.items(), desc="Loading shards", unit="shard", file=sys.stderr,
                               disable=not progress or len(files) == 0):
        if promised is not None and not any(k in targets for k in promised):
            unexpected += unknown(promised, path)
            continue  # nothing to read here: not even opened
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None
        stats.files_opened += 1
        with handle as f:
            keys = list(f.keys())
            if promised is not None:
                absent = sorted(set(promised) - set(keys))
                if absent:
                    raise CheckpointError(f"{path}: {INDEX_FILE} lists {absent[0]!r} (and {len(absent) - 1} "
                                          f"more) in this shard but the file does not contain it")
            unexpected += unknown(keys, path)
            for key in keys:
                if key in targets:
                    _read_into(f, path, key, targets[key], filled, stats)
    _check_complete(directory, unexpected, required, filled)
    if progress and stats.check_seconds is not None:
        print(f"[weights checked for NaN/inf in {stats.check_seconds:.2f} s ({stats.tensors_read} tensors); "
              f"--skip-weight-check skips this]", file=sys.stderr)
    return stats


def _check_finite(tensor: torch.Tensor, path: Path, key: str, stats: LoadStats) -> None:
    """CheckpointError if `tensor` (on the device it is loaded to) holds a NaN or inf; times the check."""
    start = time.perf_counter()
    bad = int((~torch.isfinite(tensor)).sum())  # the int() waits for the device: the time is the real cost
    stats.check_seconds = (stats.check_seconds or 0.0) + time.perf_counter() - start
    if bad:
        raise CheckpointError(f"{path}: tensor {key!r} holds {bad} non-finite value(s) (NaN or inf); the "
                              f"checkpoint is corrupt (--skip-weight-check loads it anyway)")


def _read_into(f: Any, path: Path, key: str, target: Read, filled: dict[str, Path], stats: LoadStats) -> None:
    """Checks and copies checkpoint tensor `key` of the open file `f` (a safetensors handle) into `target`."""
    try:
        sl = f.get_slice(key)
        dtype, shape = sl.get_dtype(), tuple(sl.get_shape())
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor {key!r}: {e}") from None
    int8_dest = target.dest.dtype == torch.int8
    if not (dtype in _FLOAT_DTYPES or (int8_dest and dtype == "I8")):
        raise CheckpointError(f"{path}: tensor {key!r} has dtype {dtype}; expected a floating type "
                              f"({', '.join(sorted(_FLOAT_DTYPES))})" + (" or I8" if int8_dest else ""))
    quantize = int8_dest and dtype != "I8"  # a float checkpoint loaded with quantize="int8"
    covers = target.covers + (target.scale.covers if quantize else [])
    for k in covers:
        if k in filled:
            raise CheckpointError(f"{path}: tensor {key!r} is also stored in {filled[k].name}")
    if shape != target.full_shape:
        raise CheckpointError(f"{path}: tensor {key!r} has shape {list(shape)}, the config expects "
                              f"{list(target.full_shape)}")
    try:
        parts = [sl[index] if index else sl[:] for index in target.parts]
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor {key!r} (truncated file?): {e}") from None
    tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=target.cat_dim)
    with torch.no_grad():
        if quantize:  # on the target device: one tensor's fp32 work chunk at a time
            tensor = tensor.to(target.dest.device)
            if stats.check_seconds is not None:
                _check_finite(tensor, path, key, stats)
            q, scale = quantize_weight(tensor)
            target.dest.copy_(q)
            target.scale.dest.copy_(scale)
        else:
            target.dest.copy_(tensor)
            if stats.check_seconds is not None and target.dest.is_floating_point():
                _check_finite(target.dest, path, key, stats)
    stats.tensors_read += 1
    stats.bytes_read += sum(p.numel() * p.element_size() for p in parts)
    stats.keys.append(key)
    for k in covers:
        filled[k] = path


def _check_complete(directory: Path, unexpected: list[str], required: set[str], filled: Iterable[str]) -> None:
    """Raises CheckpointError for tensors the model does not know, or required tensors never read."""
    if unexpected:
        raise CheckpointError(f"{directory}: {len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}; "
                              f"is this a MiniMax-Text-01 checkpoint?")
    missing = sorted(required - set(filled))
    if missing:
        raise CheckpointError(f"{directory}: {len(missing)} tensor(s) missing from the checkpoint, "
                              f"e.g. {missing[0]!r}")
