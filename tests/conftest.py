"""Shared fixtures of the model-core tests: a tiny random model (docs/model.md §11 init, so that mistakes move the
logits visibly), checkpoint writers and the original -> transformers-v5 weight renaming."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# The tensors of the tests are tiny: on the 2-core CI machine one intra-op thread is 5-25x faster than two
# (OpenMP's spinning workers dominate tiny ops, worse when server/worker subprocesses share the cores).
# Set before any subprocess starts, so servers and torchrun ranks inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from minimax01.config import MiniMaxConfig
from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.model.model import init_random_weights_
from minimax01.tokenizer import MiniMaxTokenizer, load_tokenizer, train_tiny_tokenizer

# Longer than one lightning block (256) so that every test crosses a block boundary (docs/model.md §11).
PROMPT_LEN = 300


def make_model(config: MiniMaxConfig, seed: int = 0, dtype: torch.dtype = torch.float64) -> MiniMaxForCausalLM:
    """A random model with the docs/model.md §11 init, in `dtype`, eval mode."""
    model = MiniMaxForCausalLM(config).to(dtype)
    return init_random_weights_(model, seed).eval()


def random_ids(batch: int, n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """[batch, n] int64 token ids, reproducible."""
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def capture_lm_head(model: MiniMaxForCausalLM) -> tuple[list[torch.Tensor], Callable[[], None]]:
    """The public logits are float32; tests that need the model's full fp64 precision read the lm_head output
    ([tokens, vocab], model dtype) through a forward hook. Returns (captured outputs, remove)."""
    captured: list[torch.Tensor] = []
    handle = model.lm_head.register_forward_hook(lambda _m, _inp, out: captured.append(out.detach().clone()))
    return captured, handle.remove


_EXPERT_KEY = re.compile(r"^(model\.layers\.\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")


def to_v5_names(state: dict[str, torch.Tensor], num_experts: int) -> dict[str, torch.Tensor]:
    """Original checkpoint names -> transformers v5 names (docs/model.md §2.2): `mlp.gate.weight`,
    `mlp.experts.gate_up_proj` [E, 2I, H] = per expert w1 rows then w3 rows, `mlp.experts.down_proj` [E, H, I].
    Written from the spec table, independently of weights.py."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[str, list[torch.Tensor | None]]] = {}
    for key, t in state.items():
        m = _EXPERT_KEY.match(key)
        if m:
            prefix, e, w = m.group(1), int(m.group(2)), m.group(3)
            experts.setdefault(prefix, {w: [None] * num_experts for w in ("w1", "w2", "w3")})[w][e] = t
        elif key.endswith(".block_sparse_moe.gate.weight"):
            out[key.replace(".block_sparse_moe.gate.", ".mlp.gate.")] = t
        else:
            out[key] = t
    for prefix, ws in experts.items():
        out[f"{prefix}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([w1, w3], dim=0) for w1, w3 in zip(ws["w1"], ws["w3"])])
        out[f"{prefix}.mlp.experts.down_proj"] = torch.stack(ws["w2"])
    return out


@pytest.fixture(scope="session")
def tiny_config() -> MiniMaxConfig:
    """16 layers (7 lightning + 1 softmax, twice), 4 heads of 16 dims, partial RoPE on 8 dims, 4 experts."""
    return MiniMaxConfig.preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config: MiniMaxConfig) -> MiniMaxForCausalLM:
    """fp64 random model shared by the session. Tests must not modify it (each call makes its own cache)."""
    return make_model(tiny_config)


@pytest.fixture(scope="session")
def prompt(tiny_config: MiniMaxConfig) -> torch.Tensor:
    """[1, PROMPT_LEN] token ids."""
    return random_ids(1, PROMPT_LEN, tiny_config.vocab_size, seed=1)


@pytest.fixture
def write_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write_checkpoint(model, name="ckpt", max_shard_bytes=...) -> checkpoint directory under tmp_path
    (config.json + safetensors in the original layout, written by save_pretrained)."""

    def write(model: MiniMaxForCausalLM, name: str = "ckpt", max_shard_bytes: int = 5 * 2**30) -> Path:
        directory = tmp_path / name
        model.save_pretrained(directory, max_shard_bytes=max_shard_bytes)
        return directory

    return write


@pytest.fixture(scope="module")
def model(tiny_config: MiniMaxConfig) -> MiniMaxForCausalLM:
    """The tiny random model in fp32 (engine / generation tests: exact token equality, see test_engine.py)."""
    return make_model(tiny_config, dtype=torch.float32)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> MiniMaxTokenizer:
    """A byte-level BPE trained in-test with MiniMax's special tokens."""
    directory: Path = tmp_path_factory.mktemp("tok")
    train_tiny_tokenizer(directory)
    return load_tokenizer(directory)
