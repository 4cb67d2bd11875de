"""The built-in tiny checkpoint: a small random MiniMax-Text-01 in the real Hugging Face layout.

`write_tiny_checkpoint` is what `minimax01 init-tiny DIR` runs; `ensure_default_model` creates the same thing
once in the user cache directory so that every command works without `--model`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from minimax01.config import MiniMaxConfig, default_attn_type_list
from minimax01.errors import CheckpointError, ConfigError
from minimax01.model.model import MiniMaxLM, init_random_weights_
from minimax01.special_tokens import EOS
from minimax01.tokenizer import load_tokenizer, train_tiny_tokenizer
from minimax01.weights import save_pretrained

#: Overrides the cache directory (tests point it at a temp dir so they never touch the real user cache).
CACHE_ENV = "MINIMAX01_CACHE_DIR"
#: Bump when the built-in checkpoint changes, so that an old cached copy is not reused.
DEFAULT_MODEL_NAME = "tiny-v1"
# Shards are forced small enough that even the built-in model exercises the sharded layout + index.
MIN_SHARDS = 2


def default_model_dir() -> Path:
    """Where the built-in tiny checkpoint lives: `$MINIMAX01_CACHE_DIR/tiny-v1`, else the platform's user cache
    directory (e.g. ~/.cache/minimax01/tiny-v1 on Linux)."""
    base = os.environ.get(CACHE_ENV)
    if not base:
        from platformdirs import user_cache_dir

        base = user_cache_dir("minimax01")
    return Path(base) / DEFAULT_MODEL_NAME


def tiny_config(vocab_size: int, layers: int = 16) -> MiniMaxConfig:
    """The 'tiny' preset with the tokenizer's vocabulary and `layers` layers (softmax every 8th, as Text-01)."""
    config = MiniMaxConfig.preset("tiny")
    config.vocab_size = vocab_size
    config.num_hidden_layers = layers
    config.attn_type_list = default_attn_type_list(layers)
    alpha = (2 * layers) ** 0.25  # DeepNorm alpha for this depth, as the preset does for 16 layers
    config.layernorm_full_attention_alpha = alpha
    config.layernorm_linear_attention_alpha = alpha
    config.layernorm_mlp_alpha = alpha
    config.validate()
    return config


def write_tiny_checkpoint(out_dir: str | os.PathLike[str], seed: int = 0, layers: int = 16) -> Path:
    """Writes config.json, sharded bf16 safetensors + index, tokenizer.json, tokenizer_config.json (real chat
    template) and generation_config.json into `out_dir` (created; must be empty if it exists)."""
    if layers < 1:  # checked before anything is written
        raise ConfigError(f"layers must be >= 1, got {layers}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: already exists and is not an empty directory")
    train_tiny_tokenizer(out)
    tok = load_tokenizer(out)
    eos_id = tok.token_to_id(EOS)
    if eos_id is None:  # pragma: no cover - train_tiny_tokenizer always adds the special tokens
        raise CheckpointError(f"{out}: trained tokenizer has no {EOS} token")

    model = MiniMaxLM(tiny_config(tok.vocab_size, layers))
    init_random_weights_(model, seed)
    model = model.to(torch.bfloat16)  # the released checkpoint's dtype
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    save_pretrained(model, out, max_shard_bytes=total // MIN_SHARDS)
    generation_config = {"eos_token_id": eos_id}
    (out / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n", encoding="utf-8")
    return out


def ensure_default_model() -> Path:
    """The built-in checkpoint directory, created on first use.

    Written into a temporary sibling directory and renamed into place, so an interrupted run never leaves a
    half-written checkpoint behind, and two processes racing on first use both end up with a complete one.
    """
    target = default_model_dir()
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"minimax01: creating the built-in tiny model in {target} (first use)", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write_tiny_checkpoint(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():  # not lost to a concurrent creator: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
