"""Checkpoint I/O: safetensors streaming and the tensor-name mapping (original <-> transformers v5).

Loading builds the model on the meta device (no random init, no allocation), allocates the parameters once
on the target device, then copies the checkpoint in tensor by tensor from memory-mapped shards, so the
checkpoint never sits in RAM twice. Every problem raises CheckpointError naming the file and tensor.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from minimax01.config import MiniMaxConfig
from minimax01.errors import CheckpointError
from minimax01.model.model import MiniMaxForCausalLM
from minimax01.quant import checkpoint_quantization, quantize_, quantize_weight

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# transformers v5 MoE names (SPEC §2.2). gate_up_proj [E, 2I, H] = w1 rows then w3 rows = our stacked w13.
_V5_GATE = re.compile(r"^(model\.layers\.\d+)\.mlp\.gate\.weight$")
_V5_GATE_UP = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.gate_up_proj$")
_V5_DOWN = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.down_proj$")
# Derived lightning buffers that transformers v4 saves into its state_dict; not weights, recomputed in fp32.
_DERIVED_BUFFERS = re.compile(r"\.self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay)$")
_FLOAT_DTYPES = {"BF16", "F16", "F32", "F64"}


@dataclass
class Target:
    tensor: torch.Tensor  # where the checkpoint tensor is copied (a parameter or a view of one)
    covers: list[str]  # original-name keys this tensor fills
    scale: Target | None = None  # int8 weights: their per-channel scales (filled when quantizing on load)


def checkpoint_targets(model: MiniMaxForCausalLM) -> tuple[dict[str, Target], set[str]]:
    """Maps every accepted checkpoint name (original and v5) to its destination, and returns the set of
    original names that must be filled."""
    state = model.state_dict()
    targets = {name: Target(t, [name]) for name, t in state.items()}
    for name, t in state.items():
        if t.dtype == torch.int8:
            targets[name].scale = targets[name + "_scale"]
    required = set(state)
    if model.config.tie_word_embeddings:
        required.discard("lm_head.weight")
    for i, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{i}"
        experts = layer.block_sparse_moe.experts
        targets[f"{prefix}.mlp.gate.weight"] = Target(layer.block_sparse_moe.gate.weight.data,
                                                      [f"{prefix}.block_sparse_moe.gate.weight"])
        w13_keys = [f"{prefix}.block_sparse_moe.experts.{e}.{w}.weight" for e in range(experts.num_experts)
                    for w in ("w1", "w3")]
        w2_keys = [f"{prefix}.block_sparse_moe.experts.{e}.w2.weight" for e in range(experts.num_experts)]
        targets[f"{prefix}.mlp.experts.gate_up_proj"] = Target(experts.w13.data, w13_keys)
        targets[f"{prefix}.mlp.experts.down_proj"] = Target(experts.w2.data, w2_keys)
        if experts.w13.dtype == torch.int8:  # quant.Int8MoEExperts
            targets[f"{prefix}.mlp.experts.gate_up_proj"].scale = Target(
                experts.w13_scale.data, [k + "_scale" for k in w13_keys])
            targets[f"{prefix}.mlp.experts.down_proj"].scale = Target(
                experts.w2_scale.data, [k + "_scale" for k in w2_keys])
    return targets, required


def _shard_files(directory: Path) -> dict[Path, list[str] | None]:
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


def iter_checkpoint(directory: str | Path, progress: bool = True) -> Iterator[tuple[Path, str, Any]]:
    """Yields (file, key, safetensors slice) for every tensor, shard by shard, memory-mapped."""
    directory = Path(directory)
    files = _shard_files(directory)
    bar = tqdm(files.items(), desc="Loading shards", unit="shard", file=sys.stderr,
               disable=not progress or len(files) == 0)
    for path, promised in bar:
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None
        with handle as f:
            keys = list(f.keys())
            if promised is not None:
                absent = sorted(set(promised) - set(keys))
                if absent:
                    raise CheckpointError(f"{path}: {INDEX_FILE} lists {absent[0]!r} (and {len(absent) - 1} "
                                          f"more) in this shard but the file does not contain it")
            for key in keys:
                try:
                    yield path, key, f.get_slice(key)
                except Exception as e:
                    raise CheckpointError(f"{path}: cannot read tensor {key!r}: {e}") from None


def load_state_into(model: MiniMaxForCausalLM, directory: str | Path, progress: bool = True) -> None:
    """Copies a checkpoint directory into an allocated model, checking names, shapes and dtypes."""
    targets, required = checkpoint_targets(model)
    filled: dict[str, Path] = {}
    unexpected: list[str] = []
    for path, key, sl in iter_checkpoint(directory, progress):
        if _DERIVED_BUFFERS.search(key):
            continue
        target = targets.get(key)
        if target is None:
            unexpected.append(f"{key} (in {path.name})")
            continue
        dtype = sl.get_dtype()
        int8_target = target.tensor.dtype == torch.int8
        if not (dtype in _FLOAT_DTYPES or (int8_target and dtype == "I8")):
            raise CheckpointError(f"{path}: tensor {key!r} has dtype {dtype}; expected a floating type "
                                  f"({', '.join(sorted(_FLOAT_DTYPES))})" + (" or I8" if int8_target else ""))
        quantize_on_load = int8_target and dtype != "I8"  # a float checkpoint loaded with quantize="int8"
        covers = target.covers + (target.scale.covers if quantize_on_load else [])
        for k in covers:
            if k in filled:
                raise CheckpointError(f"{path}: tensor {key!r} is also stored in {filled[k].name}")
        shape = tuple(sl.get_shape())
        if shape != tuple(target.tensor.shape):
            raise CheckpointError(f"{path}: tensor {key!r} has shape {list(shape)}, the config "
                                  f"expects {list(target.tensor.shape)}")
        try:
            tensor = sl[:]
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor {key!r} (truncated file?): {e}") from None
        with torch.no_grad():
            if quantize_on_load:  # on the target device: one tensor's fp32 work chunk at a time
                q, scale = quantize_weight(tensor.to(target.tensor.device))
                target.tensor.copy_(q)
                target.scale.tensor.copy_(scale)
            else:
                target.tensor.copy_(tensor)
        for k in covers:
            filled[k] = path
    check_complete(directory, unexpected, required, filled)


def check_complete(directory: str | Path, unexpected: list[str], required: set[str], filled: Iterable[str]) -> None:
    """Raises CheckpointError for tensors the model does not know, or required tensors never read."""
    if unexpected:
        raise CheckpointError(f"{directory}: {len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}; "
                              f"is this a MiniMax-Text-01 checkpoint?")
    missing = sorted(required - set(filled))
    if missing:
        raise CheckpointError(f"{directory}: {len(missing)} tensor(s) missing from the checkpoint, "
                              f"e.g. {missing[0]!r}")


def build_empty(config: MiniMaxConfig, dtype: torch.dtype, device: str | torch.device,
                quantize: str | None = None) -> MiniMaxForCausalLM:
    """The model with allocated but uninitialised parameters (built on meta first: no random init; with
    `quantize`, the quantized structure is made on meta too, so float weights are never allocated)."""
    with torch.device("meta"):
        model = MiniMaxForCausalLM(config)
    model = model.to(dtype)
    if quantize:  # after .to(dtype), which would round the fp32 scales
        quantize_(model, quantize)
    model = model.to_empty(device=device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                    progress: bool = True, quantize: str | None = None) -> MiniMaxForCausalLM:
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a Hugging Face checkpoint folder)")
    config = MiniMaxConfig.from_pretrained(directory)
    if not dtype.is_floating_point:
        raise CheckpointError(f"dtype must be a floating type, got {dtype}")
    _shard_files(directory)  # fail on a missing shard before allocating anything
    # An int8 checkpoint is built int8; a float one with quantize="int8" is quantized tensor by tensor on load.
    model = build_empty(config, dtype, device, quantize or checkpoint_quantization(config))
    load_state_into(model, directory, progress)
    return model


def save_pretrained(model: MiniMaxForCausalLM, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
    """config.json + `model-0000X-of-0000Y.safetensors` + index (or one `model.safetensors` if it fits),
    original tensor names."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards: list[list[str]] = [[]]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for stale in list(directory.glob("model*.safetensors")) + [directory / INDEX_FILE]:
        if stale.exists():
            stale.unlink()
    weight_map = {}
    for name, keys in zip(names, shards):
        # clone: expert views share storage, which safetensors refuses to write
        save_file({k: state[k].detach().to("cpu").contiguous().clone() for k in keys}, str(directory / name),
                  metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
