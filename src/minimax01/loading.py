"""Loading a checkpoint for serving: model, tokenizer and stop token ids, in one process or sharded over
several (tensor / expert parallel). What `minimax01 generate|chat|serve` and `server.serve()` share.

The tokenizer is always read before the weights, so that a bad checkpoint directory fails in a second, not
after minutes of loading (or after the shard processes started).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch

from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.chat.template import CHAT_TEMPLATE, content_format
from minimax01.chat.tool_parsers import DEFAULT_MODEL_FAMILY, ChatFormat, chat_format, detect_model_family
from minimax01.errors import CheckpointError, RequestError
from minimax01.dtypes import parse_dtype
from minimax01.parallel.lockstep import LockstepModel
from minimax01.parallel.world import WorldSpec, launched_by_torchrun, run_sharded
from minimax01.tiny import ensure_default_model
from minimax01.tokenizer import MiniMaxTokenizer, checkpoint_chat_template, load_tokenizer, stop_token_ids

T = TypeVar("T")


class Loaded(NamedTuple):
    model: MiniMaxForCausalLM | LockstepModel  # the latter on rank 0 when sharded
    tokenizer: MiniMaxTokenizer
    stop_token_ids: list[int]  # from generation_config.json / config.json / the tokenizer


def checkpoint_dir(model: str | Path | None) -> Path:
    """The checkpoint directory of `model`; None is the built-in tiny checkpoint (created on first use)."""
    return Path(model) if model is not None else ensure_default_model()


#: generation_config.json keys that become request defaults (M1 ships temperature 1.0, top_p 0.95).
GENERATION_DEFAULT_KEYS = ("temperature", "top_p", "top_k")


@dataclass(frozen=True)
class ChatSetup:
    """How chat requests to a checkpoint are prompted and their output parsed."""

    format: ChatFormat
    chat_template: str
    template_source: str  # where chat_template comes from, for `info` and the server log
    generation_defaults: dict[str, float] = field(default_factory=dict)  # sampling values requests fall back to


def _json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def generation_defaults(model_dir: Path) -> dict[str, float]:
    """The sampling defaults of generation_config.json (temperature, top_p, top_k), those it sets."""
    path = model_dir / "generation_config.json"
    config = _json_object(path)
    out: dict[str, float] = {}
    for key in GENERATION_DEFAULT_KEYS:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CheckpointError(f"{path}: {key} must be a number, got {value!r}")
        out[key] = value
    return out


def load_chat_setup(model_dir: Path, chat_template_file: str | None = None, tool_call_parser: str | None = None,
                    reasoning_parser: str | None = None) -> ChatSetup:
    """The chat template (`chat_template_file`, else the checkpoint's, else Text-01's built-in one), the model
    family (config.json `architectures` / `model_type`, then the template) and its parsers (overridable)."""
    if chat_template_file is not None:
        try:
            template, source = Path(chat_template_file).read_text(encoding="utf-8"), chat_template_file
        except (OSError, UnicodeDecodeError) as e:
            raise RequestError(f"--chat-template {chat_template_file}: cannot read ({e})") from None
    else:
        shipped = checkpoint_chat_template(model_dir)
        template, source = (shipped, "checkpoint") if shipped is not None else (CHAT_TEMPLATE, "built-in Text-01")
    try:  # a template that does not compile fails the start, not every request
        content_format(template)
    except RequestError as e:
        where = f"--chat-template {chat_template_file}" if chat_template_file is not None else str(model_dir)
        raise CheckpointError(f"{where}: {e}") from None
    config = _json_object(model_dir / "config.json")
    architectures = config.get("architectures")
    names = [n for n in [*(architectures if isinstance(architectures, list) else []), config.get("model_type")]
             if isinstance(n, str)]
    family = detect_model_family(names, template)
    return ChatSetup(chat_format(family, tool_call_parser, reasoning_parser), template, source,
                     generation_defaults(model_dir))


def default_chat_setup(tokenizer: MiniMaxTokenizer) -> ChatSetup:
    """Text-01's parsers over the tokenizer's own template: for a model built in code, without a directory."""
    return ChatSetup(chat_format(DEFAULT_MODEL_FAMILY), tokenizer.chat_template, "tokenizer")


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
