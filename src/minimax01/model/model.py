"""MiniMaxLM: embeddings -> 80 decoder layers -> final RMSNorm -> lm_head (docs/model.md).

The math only. Its one way in is `step(tokens, batch, store)`, the flattened variable-length step the engine
runs (docs/architecture.md); with `config`, `device`, `dtype`, `state_layout` and `new_store` it is what the
engine's `StepModel` protocol asks of a model. The familiar 2-D call, loading, saving and `generate` belong to
the public facade `minimax01.causal_lm.MiniMaxForCausalLM`, a subclass that adds them on top.
"""

from __future__ import annotations

import torch
from torch import nn

import minimax01.kernels as kernels
from minimax01.cache import BatchInfo, StateLayout, StateStore
from minimax01.config import MiniMaxConfig
from minimax01.model.layer import DecoderLayer
from minimax01.model.norm import RMSNorm


class MiniMaxModel(nn.Module):
    """The decoder stack under the original checkpoint prefix `model.`: embeddings, layers, final norm."""

    def __init__(self, config: MiniMaxConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MiniMaxLM(nn.Module):
    """The network: embeddings, decoder layers, final norm, lm_head. Its one forward is the flattened
    variable-length `step`; the 2-D call and loading live in the `MiniMaxForCausalLM` facade."""

    def __init__(self, config: MiniMaxConfig) -> None:
        super().__init__()
        self.config = config
        self.model = MiniMaxModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    @property
    def state_layout(self) -> StateLayout:
        """Heads as the layers hold them: after parallel.shard_ only this rank's, fewer than the config's."""
        full = StateLayout.full(self.config)
        linear = [layer.self_attn for layer in self.model.layers if layer.is_linear]
        softmax = [layer.self_attn for layer in self.model.layers if not layer.is_linear]
        return StateLayout(lightning_heads=linear[0].num_heads if linear else full.lightning_heads,
                           kv_heads=softmax[0].num_kv_heads if softmax else full.kv_heads)

    # ------------------------------------------------------------------ flattened step
    @torch.no_grad()
    def step(
        self,
        tokens: torch.Tensor,  # [T] new tokens of all sequences, concatenated
        batch: BatchInfo,
        store: StateStore,
        logits_index: torch.Tensor | None = None,  # rows of [T] to compute logits for (None = all)
    ) -> torch.Tensor:
        """Runs one step and advances the store. Returns float32 logits [len(logits_index) or T, vocab]."""
        with store.advance(batch) as kv_pos:  # kv_pos [T]: where softmax layers write this step's keys/values
            return self.run_layers(tokens, batch, store, kv_pos, logits_index)

    def run_layers(self, tokens: torch.Tensor, batch: BatchInfo, store: StateStore, kv_pos: torch.Tensor,
                   logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """The device work of a step whose KV blocks are reserved (kv_pos [T]); no store bookkeeping, so a CUDA
        graph can capture it (engine/cuda_graph.py). Returns float32 logits [len(logits_index) or T, vocab]."""
        h = self.model.embed_tokens(tokens)  # [T, hidden]
        with kernels.step_kind(prefill=not batch.is_decode):  # a token's arithmetic must not follow the chunking
            for layer in self.model.layers:
                h = layer(h, batch, store, kv_pos)
        if logits_index is not None:
            h = h[logits_index]
        return self.lm_head(self.model.norm(h)).float()

    def new_store(self, max_seqs: int, num_kv_blocks: int | None = None, kv_block_size: int = 64) -> StateStore:
        """A state store for `max_seqs` sequences on the model's device (`num_kv_blocks=None`: the KV pool grows
        on demand)."""
        # fp32 lightning state whatever the model dtype (docs/model.md); fp64 models (math tests) keep fp64.
        state_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        return StateStore(self.config, max_seqs, device=self.device, dtype=self.dtype, num_kv_blocks=num_kv_blocks,
                          kv_block_size=kv_block_size, state_dtype=state_dtype, layout=self.state_layout)


@torch.no_grad()
def init_random_weights_(model: MiniMaxLM, seed: int = 0) -> MiniMaxLM:
    """Random weights that make mistakes visible in tests: Linear N(0, 1/fan_in), lightning qkv
    ×0.1 (so the 1e-6 norm eps matters), embeddings N(0, 1), RMSNorm weights 1 + 0.2·N(0, 1)."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32) * std + mean)

    for name, p in model.named_parameters():
        if name.endswith("experts.w13") or name.endswith("experts.w2"):
            normal(p, p.shape[-1] ** -0.5)
        elif "norm" in name:
            normal(p, 0.2, 1.0)
        elif "embed_tokens" in name:
            normal(p, 1.0)
        else:  # nn.Linear weight [out, in]
            normal(p, p.shape[1] ** -0.5)
            if name.endswith("qkv_proj.weight"):
                p.mul_(0.1)
    return model
