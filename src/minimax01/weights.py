"""Single-process checkpoint loading and saving: a Hugging Face checkpoint directory <-> a whole model.

Loading builds the model on the meta device (no random init, no allocation), allocates the parameters once on
the target device, then copies the checkpoint in tensor by tensor from memory-mapped shards
(checkpoint_reader.py), so the checkpoint never sits in RAM twice. Both tensor-name schemes load (original and
transformers v5, model/checkpoint_names.py); saving writes the original names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from minimax01.checkpoint_reader import INDEX_FILE, SINGLE_FILE, Read, read_checkpoint, shard_files
from minimax01.config import MiniMaxConfig
from minimax01.errors import CheckpointError
from minimax01.model.checkpoint_names import v5_names
from minimax01.model.model import MiniMaxLM
from minimax01.quant import checkpoint_quantization, quantize_


def checkpoint_targets(model: MiniMaxLM) -> tuple[dict[str, Read], set[str]]:
    """Maps every accepted checkpoint name (original and v5) to where it goes in `model`, and returns the set
    of original names that must be filled."""
    state = model.state_dict()  # original names -> parameters, or views of the experts' stacks
    params = dict(model.named_parameters())
    targets = {name: Read(t, tuple(t.shape), [name]) for name, t in state.items()}
    for name, t in state.items():
        if t.dtype == torch.int8:  # its scales are NAME_scale, filled too when a float tensor is quantized
            targets[name].scale = targets[name + "_scale"]
    required = set(state)
    if model.config.tie_word_embeddings:
        required.discard("lm_head.weight")
    for name, v5 in v5_names(model.config).items():
        param = params[v5.param].data
        targets[name] = Read(param, tuple(param.shape), list(v5.covers))
        if param.dtype == torch.int8:
            scale = params[v5.param + "_scale"].data
            targets[name].scale = Read(scale, tuple(scale.shape), [k + "_scale" for k in v5.covers])
    return targets, required


def build_empty(config: MiniMaxConfig, dtype: torch.dtype, device: str | torch.device,
                quantize: str | None = None, model_cls: type[MiniMaxLM] = MiniMaxLM) -> MiniMaxLM:
    """The model with allocated but uninitialised parameters (built on meta first: no random init; with
    `quantize`, the quantized structure is made on meta too, so float weights are never allocated)."""
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to(dtype)
    if quantize:  # after .to(dtype), which would round the fp32 scales
        quantize_(model, quantize)
    model = model.to_empty(device=device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                    progress: bool = True, quantize: str | None = None,
                    model_cls: type[MiniMaxLM] = MiniMaxLM, load_format: str = "auto",
                    check_weights: bool = True) -> MiniMaxLM:
    """Loads a Hugging Face checkpoint directory into a new `model_cls` (the network, or a subclass such as the
    public `MiniMaxForCausalLM`), checking names, shapes, dtypes and (unless not `check_weights`) that every
    value is finite; `model.load_stats` says what was read. `load_format="dummy"` reads only config.json and
    draws random weights (`dummy_weights_`): for benchmarks at real dimensions without a checkpoint of hundreds
    of GB on disk."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a Hugging Face checkpoint folder)")
    config = MiniMaxConfig.from_pretrained(directory)
    if not dtype.is_floating_point:
        raise CheckpointError(f"dtype must be a floating type, got {dtype}")
    if check_load_format(load_format) == "dummy":
        model = dummy_weights_(build_empty(config, dtype, device, model_cls=model_cls))
        return quantize_(model, quantize) if quantize else model
    shard_files(directory)  # fail on a missing shard before allocating anything
    # An int8 checkpoint is built int8; a float one with quantize="int8" is quantized tensor by tensor on load.
    model = build_empty(config, dtype, device, quantize or checkpoint_quantization(config), model_cls)
    targets, required = checkpoint_targets(model)
    model.load_stats = read_checkpoint(directory, targets, targets.keys(), required, progress, check_weights)
    return model


LOAD_FORMATS = ("auto", "dummy")


def check_load_format(load_format: str) -> str:
    if load_format not in LOAD_FORMATS:
        raise CheckpointError(f"load_format must be one of {LOAD_FORMATS}, got {load_format!r}")
    return load_format


@torch.no_grad()
def dummy_weights_(model: MiniMaxLM, seed: int = 0) -> MiniMaxLM:
    """Random weights drawn on the model's device (seconds even at real dimensions): N(0, 1/fan_in) for every
    matrix, so activations stay O(1) through any number of layers, and norm weights 1. Deterministic for a seed
    and device type, but meant for timing, not for comparing numbers across layouts."""
    gen = torch.Generator(device=model.device).manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
        else:
            p.normal_(0.0, p.shape[-1] ** -0.5, generator=gen)
    return model


def save_pretrained(model: MiniMaxLM, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
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
