"""Loading a checkpoint for serving: model, tokenizer and stop token ids, in one process or sharded over
several (tensor / expert parallel). What `minimax01 generate|chat|serve` and `server.serve()` share.

The tokenizer is always read before the weights, so that a bad checkpoint directory fails in a second, not
after minutes of loading (or after the shard processes started).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch

from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.dtypes import parse_dtype
from minimax01.parallel.lockstep import LockstepModel
from minimax01.parallel.world import WorldSpec, launched_by_torchrun, run_sharded
from minimax01.tiny import ensure_default_model
from minimax01.tokenizer import MiniMaxTokenizer, load_tokenizer, stop_token_ids

T = TypeVar("T")


class Loaded(NamedTuple):
    model: MiniMaxForCausalLM | LockstepModel  # the latter on rank 0 when sharded
    tokenizer: MiniMaxTokenizer
    stop_token_ids: list[int]  # from generation_config.json / config.json / the tokenizer


def checkpoint_dir(model: str | Path | None) -> Path:
    """The checkpoint directory of `model`; None is the built-in tiny checkpoint (created on first use)."""
    return Path(model) if model is not None else ensure_default_model()


def load_tokenizer_and_stops(model_dir: Path) -> tuple[MiniMaxTokenizer, list[int]]:
    """The tokenizer of a checkpoint directory and the token ids that end generation."""
    tokenizer = load_tokenizer(model_dir)
    return tokenizer, stop_token_ids(model_dir, tokenizer)


def load_for_serving(model: str | Path | None, dtype: torch.dtype | str | None = None, device: str = "cpu",
                     quantize: str | None = None, load_format: str = "auto", check_weights: bool = True) -> Loaded:
    """The checkpoint `model` (None: the built-in tiny one) loaded in this process; `dtype` as parse_dtype;
    `load_format="dummy"` draws random weights instead of reading them; `check_weights=False` skips the NaN / inf
    check (weights.load_pretrained)."""
    model_dir = checkpoint_dir(model)
    tokenizer, stop_ids = load_tokenizer_and_stops(model_dir)  # before the (slow) weights: fails fast
    net = MiniMaxForCausalLM.from_pretrained(model_dir, dtype=parse_dtype(dtype, device), device=device,
                                             quantize=quantize, load_format=load_format,
                                             check_weights=check_weights)
    return Loaded(net, tokenizer, stop_ids)


def run_with_model(model: str | Path | None, body: Callable[[Loaded], T], *, dtype: torch.dtype | str | None = None,
                   device: str = "cpu", quantize: str | None = None, tp: int = 1, ep: int = 1,
                   load_format: str = "auto", check_weights: bool = True) -> T | None:
    """`body(loaded)` over the checkpoint `model` (None: the built-in tiny one).

    With tp (attention heads split tp ways) or ep (experts split into ep groups) > 1, or under torchrun, the
    model is sharded over several processes (parallel/world.py): `body` runs on rank 0 over its LockstepModel
    while the other ranks mirror its steps, and a follower rank returns None.
    """
    if tp == 1 and ep == 1 and not launched_by_torchrun():
        return body(load_for_serving(model, dtype, device, quantize, load_format, check_weights))
    model_dir = checkpoint_dir(model)
    tokenizer, stop_ids = load_tokenizer_and_stops(model_dir)  # before any process starts: fails fast
    spec = WorldSpec(str(model_dir), tp, ep, parse_dtype(dtype, device), torch.device(device).type, quantize,
                     load_format, check_weights)
    return run_sharded(spec, lambda net: body(Loaded(net, tokenizer, stop_ids)))
